"""The recipes of one run: every stage's YAML with the command line's overrides, checked together.

One ``--set`` list serves every stage of a run, but the stages' streams differ (stream 0 is the images in
stages 1-2 and the text in stage 3). So:

- ``data.streams.<name>.<field>`` (name: ``image``, ``text``, ``pair``...) applies to every stage that has a
  stream of that name and to no other; a name no stage has is an error.
- ``data.streams.<i>.<field>`` applies to every stage, and is an error when stream i is not the same stream in
  all of them (address it by name instead).
- Shards given for any stream switch the built-in synthetic dataset off in every stage: nothing is generated,
  no synthetic tokenizer or evaluation is used, and a stream left without shards is a start-up error.

    recipes, notes = load_run_recipes([stage1.yaml, stage2.yaml, stage3.yaml], ["data.streams.image.shards=[...]"])
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

from momo_ds.config import ConfigError, RecipeConfig, StreamConfig, load_yaml, recipe_from_dict
from momo_ds.overrides import apply_overrides

SYNTHETIC_OFF = ("shards given: the built-in synthetic dataset is off in every stage (nothing generated, no "
                 "synthetic tokenizer, no synthetic evaluation)")


def _streams(tree: dict) -> list[dict]:
    data = tree.get("data") or {}
    streams = data.get("streams")
    if streams is None:
        return [{"name": StreamConfig.name}]
    return [s if isinstance(s, dict) else {} for s in streams]


def _names(tree: dict) -> list[str]:
    return [str(s.get("name", StreamConfig.name)) for s in _streams(tree)]


def _targets(item: str, trees: list[dict], stages: list[int]) -> list[int]:
    """Indices of the stages an override applies to (see the module docstring)."""
    key = item.partition("=")[0].strip()
    parts = key.split(".")
    every = list(range(len(trees)))
    if len(parts) < 4 or parts[:2] != ["data", "streams"]:
        return every
    ref, rest = parts[2], ".".join(parts[3:])
    names = [_names(t) for t in trees]
    known = ", ".join(dict.fromkeys(n for ns in names for n in ns))
    if not ref.isdigit():
        hits = [i for i, ns in enumerate(names) if ref in ns]
        if not hits:
            raise ConfigError(f"override {key!r}: no stage of this run has a stream named {ref!r} (streams: {known})")
        return hits
    if len(trees) > 1:
        meaning = [ns[int(ref)] if int(ref) < len(ns) else None for ns in names]
        if len(set(meaning)) > 1:
            where = ", ".join(f"{m or 'absent'} in stage {s}" for m, s in zip(meaning, stages))
            raise ConfigError(f"override {key!r}: stream {ref} is not the same stream in every stage ({where}); "
                              f"address it by name: data.streams.<name>.{rest} (names: {known})")
    return every


def _has_shards(tree: dict) -> bool:
    return any(s.get("shards") for s in _streams(tree))


def load_run_recipes(paths: Sequence[Union[str, Path]],
                     overrides: Sequence[str]) -> tuple[list[RecipeConfig], list[str]]:
    """Validated recipes of the run's stages, in order, and the notes to print once (rank 0)."""
    trees = [load_yaml(p) for p in paths]
    stages = [int(t.get("stage", i + 1)) if str(t.get("stage", "")).isdigit() else i + 1 for i, t in enumerate(trees)]
    per_stage: list[list[str]] = [[] for _ in trees]
    for item in overrides:
        for i in _targets(item, trees, stages):
            per_stage[i].append(item)
    trees = [apply_overrides(t, items) for t, items in zip(trees, per_stage)]
    notes = []
    if any(_has_shards(t) for t in trees) and any((t.get("data") or {}).get("synthetic") for t in trees):
        for t in trees:
            t.setdefault("data", {})["synthetic"] = False
        notes.append(SYNTHETIC_OFF)
    recipes = [recipe_from_dict(t) for t in trees]
    for r in recipes:
        if 0 < r.train.max_steps < r.train.warmup_steps:
            notes.append(f"warning: stage {r.stage}: train.max_steps={r.train.max_steps} is below "
                         f"train.warmup_steps={r.train.warmup_steps}: the learning rate never leaves warm-up "
                         f"(it reaches {r.train.max_steps / r.train.warmup_steps:.0%} of train.lr); "
                         f"set train.warmup_steps as well")
    return recipes, notes
