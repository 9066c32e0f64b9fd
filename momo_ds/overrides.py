"""Dotted command-line overrides of a recipe tree: ``--set train.lr=1e-4 --set data.streams.pair.shards=[...]``."""
from __future__ import annotations

import copy
from typing import Any

import yaml

from momo_ds.typed import ConfigError

SHARD_KEYS = ("shards", "eval_shards")  # shard lists: brace patterns, not YAML


def _set_dotted(tree: dict, dotted: str, value) -> None:
    """Set ``value`` at ``a.b.0.c`` inside nested dicts/lists. A list is indexed by an integer, or by the
    ``name`` of one of its mappings (``data.streams.pair.shards``)."""
    parts = dotted.split(".")
    node = tree
    for i, p in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            node = node[_list_index(node, p, dotted, ".".join(parts[:i + 1]))]
        else:
            if p not in node or node[p] is None:
                node[p] = [] if nxt.isdigit() else {}
            node = node[p]
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, dotted, dotted)] = value
    else:
        node[last] = value


def _list_index(items: list, part: str, dotted: str, where: str) -> int:
    if part.isdigit() and int(part) < len(items):
        return int(part)
    names = [x.get("name") for x in items if isinstance(x, dict)]
    if not part.isdigit() and part in names:
        return names.index(part)
    valid = f"0..{len(items) - 1}" if items else "none"
    if any(names):
        valid += " or a name: " + ", ".join(str(n) for n in names)
    raise ConfigError(f"override {dotted!r}: {where} is not a valid list index (valid: {valid})")


def split_shard_list(raw: str) -> list[str]:
    """``[a-{000..009}.tar, b.tar]`` (brackets optional) -> ``["a-{000..009}.tar", "b.tar"]``.

    Shard patterns are not parsed as YAML: a brace pattern inside a flow list (``[x-{0..9}.tar]``) is a YAML
    syntax error, and webdataset's own ``{a,b}`` alternatives contain commas. Items are split at commas outside
    braces; surrounding quotes are dropped.
    """
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    items, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    out = [item.strip().strip("'\"").strip() for item in items]
    return [item for item in out if item]


def parse_override(item: str) -> tuple[str, Any]:
    """``key.path=value`` -> (key, value). Values are YAML, except shard lists (see :func:`split_shard_list`)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    if key.split(".")[-1] in SHARD_KEYS:
        return key, split_shard_list(raw)
    if raw == "":
        return key, ""
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as e:
        reason = str(e).splitlines()[0]
        raise ConfigError(f"override {key}={raw}: the value is not valid YAML ({reason}); quote the whole "
                          f"override for the shell, e.g. --set '{key}=...'") from None


def check_repeated_shards(overrides: list[str]) -> None:
    """Several ``shards=`` overrides of one key are an error, not "last wins": it is what the shell makes of an
    unquoted brace pattern (``--set x.shards=[a-{0..9}.tar]`` becomes ten words, one shard each)."""
    seen: dict[str, list[str]] = {}
    for item in overrides:
        key, _, raw = item.partition("=")
        if key.strip().split(".")[-1] in SHARD_KEYS:
            seen.setdefault(key.strip(), []).append(raw)
    for key, values in seen.items():
        if len(values) > 1:
            raise ConfigError(
                f"{key} is given {len(values)} times ({values[0]}, {values[1]}, ...); an unquoted brace pattern "
                f"is expanded by the shell into one override per shard: quote it, e.g. "
                f"--set '{key}=[/data/train-{{000000..000099}}.tar]'")


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` strings to a nested dict; returns a new dict."""
    tree = copy.deepcopy(tree)
    check_repeated_shards(list(overrides or []))
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    return tree
