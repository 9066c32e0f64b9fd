"""Typed configuration dataclasses from plain mappings: the rules every config key obeys.

Unknown keys and values of the wrong type raise :class:`ConfigError` naming the key and what is valid;
``Literal[...]`` fields are checked in one place, :func:`check_choices`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it."""


def check_choices(cfg, where: str) -> None:
    """Every ``Literal[...]`` field of a config dataclass holds one of its values (the one place enumerated
    values are checked: dataclasses built in code bypass the YAML loader's type checks)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else ()
        value = getattr(cfg, f.name)
        if choices and (value not in choices or isinstance(value, bool)):  # True == 1 in Python
            raise ConfigError(f"{where}.{f.name}={value!r}; valid: {', '.join(map(str, choices))}")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, key: str):
    """Check/convert ``value`` to the annotated type ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:  # membership is checked by check_choices, with the valid values in the message
        choices = typing.get_args(tp)
        if value not in choices and isinstance(value, str) and str(value) in map(str, choices):
            return next(c for c in choices if str(c) == value)
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {tp}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        k_tp, v_tp = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(k, k_tp, key): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def from_dict(cls, values: dict, where: str = ""):
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown config key {key!r}; valid keys{' of ' + where if where else ''}: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    """Plain-dict form of a config dataclass (for saving beside checkpoints)."""
    return dataclasses.asdict(cfg)
