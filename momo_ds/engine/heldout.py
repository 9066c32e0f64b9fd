"""Held-out evaluation during training (``train.eval_every``), on each stream's ``eval_shards``.

Every stream: the losses of its own objectives on ``train.eval_batches`` held-out micro-batches per rank, drawn
as training draws them (masks, augmentation) but from fixed seeds, so every evaluation of a stage sees the same
batches and the numbers form a curve. Pair streams also get zero-shot retrieval (R@1/R@10 both ways) and
ITM accuracy on the first ``eval_batches`` batches of their held-out pairs.

Columns: ``eval/<stream>/<term>`` (e.g. ``eval/image/mim_loss``) and ``eval/<stream>/<metric>`` (``tr@1_pct``,
``itm_random_bacc_pct`` ...), in the metrics row of the step. Collective: every rank calls it at the same step.
It runs under its own global RNG state and leaves the trainer's untouched, so a run with held-out evaluation
trains bitwise as the same run without it.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import torch

from momo_ds import distributed as mdist
from momo_ds.config import RecipeConfig
from momo_ds.engine.cmga import cast_floats

SEED = 2 ** 20 + 7  # held-out draws: apart from every training seed


class HeldOut:
    def __init__(self, recipe: RecipeConfig, tokenizer, patch_size: int, rank: int, world: int):
        self.recipe, self.tokenizer, self.patch_size = recipe, tokenizer, patch_size
        self.rank, self.world = rank, world
        self.streams = [s for s in recipe.data.streams if s.eval_shards]
        self.batches = recipe.train.eval_batches

    def due(self, step: int) -> bool:
        every = self.recipe.train.eval_every
        return bool(self.streams) and every > 0 and (step % every == 0 or step == self.recipe.train.max_steps)

    @torch.no_grad()
    def evaluate(self, task, dtype: torch.dtype, device: torch.device) -> dict[str, float]:
        """task: the engine's PretrainTask (its model is evaluated in eval mode and put back in train mode)."""
        from momo_ds.data.rng import isolated_global_rng

        was_training = task.training
        task.eval()
        try:
            with isolated_global_rng(SEED), _autocast(device, dtype):
                row = self._losses(task, dtype, device)
                for s in self.streams:
                    if s.kind == "pair":
                        row.update({f"eval/{s.name}/{k}": v for k, v in self._pairs(task.model, s, device).items()})
        finally:
            task.train(was_training)
        return row

    def _losses(self, task, dtype: torch.dtype, device: torch.device) -> dict[str, float]:
        from momo_ds.data import build_stage_loader

        data = dataclasses.replace(self.recipe.data, num_workers=0, seed=self.recipe.data.seed + SEED,
                                   streams=[dataclasses.replace(s, shards=list(s.eval_shards), resampled=False)
                                            for s in self.streams])
        sums: dict[str, torch.Tensor] = {}
        with build_stage_loader(data, tokenizer=self.tokenizer, patch_size=self.patch_size, rank=self.rank,
                                world_size=self.world) as loader:
            for i in range(self.batches):
                batches = loader.next()
                for j, s in enumerate(self.streams):
                    g = torch.Generator(device=device)
                    g.manual_seed(SEED + 131 * i + j)
                    extra = {"generator": g} if "itm" in s.objectives else {}
                    out = task(cast_floats(batches[s.name], dtype, device), s.objectives, **extra)
                    for k, v in out.items():
                        key = f"eval/{s.name}/{k}"
                        sums[key] = sums.get(key, 0.0) + v.detach().float()
        keys = sorted(sums)
        means = mdist.all_reduce_mean(torch.stack([sums[k] for k in keys]) / self.batches).tolist()
        return dict(zip(keys, means))

    def _pairs(self, model, stream, device: torch.device) -> dict[str, Any]:
        """Retrieval over every rank's first ``eval_batches`` held-out pair batches (gathered), and ITM on this
        rank's share (averaged over ranks)."""
        from momo_ds.data import build_eval_loader
        from momo_ds.eval.itm import evaluate_itm
        from momo_ds.eval.retrieval import pair_features, retrieval_metrics

        loader = build_eval_loader(stream.eval_shards, "pair", tokenizer=self.tokenizer,
                                   image_size=self.recipe.data.image_size, patch_size=self.patch_size,
                                   batch_size=stream.batch_size, max_text_len=stream.max_text_len, rank=self.rank,
                                   world_size=self.world)
        batches = list(itertools.islice(iter(loader), self.batches))
        r = retrieval_metrics(*pair_features(model, batches, device))
        out = {k: r[k] for k in ("tr@1_pct", "tr@10_pct", "ir@1_pct", "ir@10_pct", "chance_r1_pct")}
        itm = evaluate_itm(model, batches, device, seed=SEED)
        keys = ["itm_random_bacc_pct", "itm_hard_bacc_pct"]
        means = mdist.all_reduce_mean(torch.tensor([itm[k] for k in keys], dtype=torch.float64,
                                                   device=device)).tolist()
        out.update(zip(keys, means))
        return out


def _autocast(device: torch.device, dtype: torch.dtype):
    """The evaluation functions feed fp32 inputs; a bf16/fp16 engine's parameters need autocast to meet them."""
    if dtype == torch.float32:
        import contextlib

        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
