"""Cross-Modality Gradient Accumulation (CMGA): one optimizer update from one micro-batch of every stream.

For stream i of N (the same order on every rank):
    engine.set_gradient_accumulation_boundary(i == N - 1)   # sticky flag: set before every backward
    engine.backward(loss_i)                                  # loss_i = sum of the stream's weighted objectives
then a single ``engine.step()``. With gradient_accumulation_steps = 1 this applies the gradient of the SUM of the
streams' losses (the README's design note "CMGA on DeepSpeed"; checked in tests/test_cmga_multirank.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from momo_ds.batch import ImageBatch, PairBatch, TextBatch
from momo_ds.config import ModelConfig, StreamConfig
from momo_ds.model.flops import training_flops


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN/Inf; raised before the optimizer step so the weights stay finite."""


def cast_floats(batch, dtype: torch.dtype, device: torch.device):
    """Move a batch to ``device``; floating tensors (images) are cast to the engine's parameter dtype."""
    def fix(obj):
        changes = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if isinstance(v, Tensor):
                changes[f.name] = v.to(device, dtype if v.is_floating_point() else None, non_blocking=True)
            elif dataclasses.is_dataclass(v):
                changes[f.name] = fix(v)
        return dataclasses.replace(obj, **changes)
    return fix(batch)


def visible_tokens(batch) -> int:
    """Tokens the encoder processes for ``batch`` (CLS included), computed on the host-side batch."""
    if isinstance(batch, ImageBatch):
        return batch.batch_size * (1 + batch.patch_keep.shape[1])
    if isinstance(batch, TextBatch):
        return int(batch.attention_mask.sum()) + batch.batch_size
    if isinstance(batch, PairBatch):
        return visible_tokens(batch.image) + int(batch.text.attention_mask.sum())
    raise TypeError(type(batch).__name__)


@dataclass
class StepResult:
    """Per-step outputs kept on device (no host sync): stacked loss terms per stream."""

    terms: dict[str, Tensor]  # "<stream>/<term>" -> 0-dim tensor (detached)
    samples: int
    tokens: int
    stream_samples: dict[str, int] = field(default_factory=dict)
    stream_tokens: dict[str, int] = field(default_factory=dict)
    flops: float = 0.0  # analytic training FLOPs of this rank's step (0 without a flops_cfg)


class CMGAStep:
    """Runs CMGA steps on a DeepSpeed engine (or any object with the same backward/step interface)."""

    def __init__(self, engine, streams: list[StreamConfig], dtype: torch.dtype, device: torch.device,
                 rank: int = 0, check_finite: bool = True, seed: int = 0, align_full_from: Optional[int] = None,
                 flops_cfg: Optional[ModelConfig] = None):
        """engine: wraps a :class:`momo_ds.objectives.task.PretrainTask` (calls take a batch and its objectives);
        rank: this process's rank (it seeds the ITM sampling); align_full_from: from this (0-based) step on,
        contrastive and ITM see unmasked pairs (FLIP's unmasked tail, ``train.align_full_tail``); None: never;
        flops_cfg: the model's config, to count each step's analytic FLOPs on the host-side shapes (for MFU)."""
        self.engine = engine
        self.align_full_from = align_full_from
        self.streams = streams
        self.dtype = dtype
        self.device = device
        self.rank = rank
        self.check_finite = check_finite
        self.seed = seed
        self.flops_cfg = flops_cfg

    def __call__(self, batches: dict[str, Any], step: int = 0) -> StepResult:
        """One full CMGA optimizer step: backward on every stream, NaN guard, one ``engine.step()``."""
        result = self.backward(batches, step)
        self.engine.step()
        return result

    def generator(self, step: int, stream_index: int) -> torch.Generator:
        """The RNG of the model's own sampling (ITM hard negatives) for one stream at one step, derived from
        (seed, step, stream, rank): independent of the global RNG, which loader start-up consumes, so a resumed
        run draws exactly the negatives the uninterrupted run drew."""
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * 1_000_003 + step * 8191 + stream_index * 131 + self.rank) % (2 ** 63))
        return g

    def backward(self, batches: dict[str, Any], step: int = 0) -> StepResult:
        """Forward + ``engine.backward`` on each stream's micro-batch; gradients are accumulated, not applied.
        Raises NonFiniteLossError (before any optimizer step) when a loss term is NaN/Inf."""
        n = len(self.streams)
        terms: dict[str, Tensor] = {}
        result = StepResult(terms=terms, samples=0, tokens=0)
        for i, stream in enumerate(self.streams):
            host_batch = batches[stream.name]
            result.stream_samples[stream.name] = host_batch.batch_size
            result.stream_tokens[stream.name] = visible_tokens(host_batch)
            batch = cast_floats(host_batch, self.dtype, self.device)
            self.engine.set_gradient_accumulation_boundary(i == n - 1)
            extra = {"generator": self.generator(step, i)} if "itm" in stream.objectives else {}
            if self.align_full_from is not None and step >= self.align_full_from and {"itc", "itm"} & set(
                    stream.objectives):
                extra["align_inputs"] = "full"
            if self.flops_cfg is not None:
                result.flops += training_flops(self.flops_cfg, host_batch, stream.objectives,
                                               align_inputs=extra.get("align_inputs"))["total"]
            out = self.engine(batch, stream.objectives, **extra)
            for k, v in out.items():
                terms[f"{stream.name}/{k}"] = v.detach().float()
            self.engine.backward(out["loss"])
        result.samples = sum(result.stream_samples.values())
        result.tokens = sum(result.stream_tokens.values())
        if self.check_finite:
            self._raise_if_non_finite(terms)
        return result

    @staticmethod
    def _raise_if_non_finite(terms: dict[str, Tensor]) -> None:
        """One host sync per step (not per micro-batch): stop before the optimizer applies a NaN/Inf."""
        names = [k for k in terms if k.endswith("_loss") or k.endswith("/loss")]
        stacked = torch.stack([terms[k] for k in names])
        finite = torch.isfinite(stacked)
        if bool(finite.all()):
            return
        bad = [f"{k.split('/')[0]} stream, {k.split('/')[1]}" for k, ok in zip(names, finite.tolist()) if not ok]
        raise NonFiniteLossError("non-finite loss before the optimizer step: " + "; ".join(bad))


def accumulate(running: Optional[dict[str, Tensor]], counts: dict[str, int], step: StepResult) -> dict[str, Tensor]:
    """Running sums of the loss terms over a logging window (device tensors, no sync); ``counts`` (host ints)
    records how many steps contributed to each term (all of them under CMGA, 1/N of them when alternating)."""
    running = {} if running is None else running
    for k, v in step.terms.items():
        running[k] = running[k] + v if k in running else v.clone()
        counts[k] = counts.get(k, 0) + 1
    return running
