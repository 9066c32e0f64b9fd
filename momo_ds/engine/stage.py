"""One training stage: build model/optimizer/engine/loader, run CMGA steps, checkpoint, export.

Called once per stage by :mod:`momo_ds.engine.run`; every rank runs the same code.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from momo_ds import distributed as mdist
from momo_ds.distributed import FlagVote
from momo_ds.config import RecipeConfig, TrainConfig
from momo_ds.typed import to_dict
from momo_ds.engine import checkpoint as ckpt
from momo_ds.engine import resume
from momo_ds.engine.cmga import CMGAStep
from momo_ds.engine.heldout import HeldOut
from momo_ds.engine.ds_config import ds_dtype, resolve_ds_config, uses_offload, zero_stage
from momo_ds.engine.metrics import MetricsWriter, StageConsole
from momo_ds.engine.optim import build_optimizer, build_scheduler
from momo_ds.engine.peak import device_peak
from momo_ds.engine.preempt import Preempted, StopSignals
from momo_ds.engine.telemetry import StepClock, Window, peak_memory
from momo_ds.engine.weights import build_stage_model, init_from_mae, init_from_previous
from momo_ds.model import parts
from momo_ds.objectives.task import PretrainTask

FAULT_ENV = "MOMO_FAULT_AT_STEP"  # tests: raise after this optimizer step, as if the job were killed


@dataclass
class StageResult:
    stage: int
    steps: int
    wall_s: float
    steps_per_s: float
    samples_per_s: float
    final: dict[str, float] = field(default_factory=dict)
    encoder: str = ""


def align_full_from(train: TrainConfig) -> Optional[int]:
    """The first 0-based step of the unmasked tail (the last ``train.align_full_tail`` share of the steps, rounded
    to whole steps), or None when there is none."""
    tail = round(train.align_full_tail * train.max_steps)
    return train.max_steps - tail if tail > 0 else None


def build_engine(recipe: RecipeConfig, ds_cfg: dict[str, Any], model: torch.nn.Module,
                 device: torch.device) -> tuple[Any, list[CMGAStep]]:
    """The DeepSpeed engine (optimizer and schedule inside) and the CMGA update(s) of a stage, for a model built
    and initialised on the host in fp32. The trainer and the benchmarks build their steps with this.

    returns (engine, updates): the engine wraps the model's :class:`PretrainTask` (its checkpoints name the
    model's parameters ``model.<name>``); one CMGAStep over every stream, or with ``train.update=alternating``
    (ablation) one per stream, applied round robin.
    """
    import deepspeed

    dtype = ds_dtype(ds_cfg)
    for buf in model.buffers():  # DeepSpeed casts parameters only; fixed sin-cos tables must follow
        if buf.is_floating_point():
            buf.data = buf.data.to(dtype)
    optimizer = build_optimizer(model, recipe.train, device.type)
    scheduler = build_scheduler(optimizer, recipe.train)
    touch = zero_stage(ds_cfg) == 3 or uses_offload(ds_cfg)
    task = PretrainTask(model, mdist.TorchDist.current(), touch_unused=touch)
    engine, _, _, _ = deepspeed.initialize(model=task, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg)
    steps = dict(rank=mdist.get_rank(), seed=recipe.train.seed, align_full_from=align_full_from(recipe.train),
                 flops_cfg=model.cfg)
    if recipe.train.update == "alternating":
        return engine, [CMGAStep(engine, [s], dtype, device, **steps) for s in recipe.data.streams]
    return engine, [CMGAStep(engine, recipe.data.streams, dtype, device, **steps)]


class StageRunner:
    def __init__(self, recipe: RecipeConfig, ds_cfg: dict[str, Any], stage_dir: Path, tokenizer,
                 init_state: Optional[dict[str, torch.Tensor]] = None, init_source: str = "",
                 resume_run: bool = False, log_every: Optional[int] = None):
        self.recipe, self.stage_dir, self.tokenizer = recipe, Path(stage_dir), tokenizer
        self.rank, self.world = mdist.get_rank(), mdist.get_world_size()
        self.main = self.rank == 0
        self.device = mdist.local_device()
        self.ds_cfg = resolve_ds_config(ds_cfg, recipe, self.world)
        self.dtype = ds_dtype(self.ds_cfg)
        self.ckpt_dir = self.stage_dir / "checkpoints"
        if self.main:
            self.stage_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(self.stage_dir / "config.yaml", yaml.safe_dump(to_dict(recipe), sort_keys=False))
            ckpt.atomic_write_text(self.stage_dir / "ds_config.json", json.dumps(self.ds_cfg, indent=2))
        mdist.barrier()

        torch.manual_seed(recipe.train.seed)
        model, self.model_cfg = build_stage_model(recipe, tokenizer)
        if init_state is not None:
            init_from_previous(model, init_state, init_source)
        if recipe.train.mae_checkpoint:
            init_from_mae(model, recipe.train.mae_checkpoint)
        say = lambda line: print(f"[momo_ds] {line}", flush=True)  # noqa: E731  (rank 0 calls it)
        self.resume_plan = resume.plan(self.ckpt_dir, say) if resume_run else resume.ResumePlan(world=self.world)
        self.engine, self.updates = build_engine(recipe, resume.engine_config(self.resume_plan, self.ds_cfg), model,
                                                 self.device)
        self.steps_per_draw = len(self.updates)
        self._drawn = None

        from momo_ds.data import build_stage_loader

        self.loader = build_stage_loader(recipe.data, tokenizer=tokenizer, patch_size=self.model_cfg.patch_size,
                                         rank=self.rank, world_size=self.world)
        self.heldout = HeldOut(recipe, tokenizer, self.model_cfg.patch_size, self.rank, self.world)
        self.step = 0
        self.counters = {"samples": 0, "tokens": 0, "elapsed_s": 0.0}
        if self.resume_plan.tag is not None:
            self._resume()
        self.log_every = log_every or recipe.train.log_every
        self.peak, peak_source = device_peak(self.device, self.dtype, quick=True)
        if self.main:
            print(f"[momo_ds] stage {recipe.stage}: MFU against {peak_source}"
                  f"{f' = {self.peak / 1e12:.3g} TFLOP/s' if self.peak else ''}", flush=True)

    # ---------------------------------------------------------------------------------------------- checkpoints
    def _resume(self) -> None:
        p = self.resume_plan
        client = resume.restore(p, self.engine, self.loader, self.ckpt_dir, self.recipe.train.seed)
        self.step = int(client["step"])
        self.counters = dict(client.get("counters", self.counters))
        if self.main:
            how = f" (written by {p.saved_world} ranks, now {p.world}: elastic)" if p.elastic else ""
            print(f"[momo_ds] resumed stage {self.recipe.stage} from {self.ckpt_dir / p.tag} at step {self.step}{how}",
                  flush=True)

    def save(self) -> Path:
        client = {"step": self.step, "stage": self.recipe.stage, "counters": self.counters}
        rank_state = {"loader": self.loader.state_dict(), "rng": ckpt.rng_state()}
        return ckpt.save(self.engine, self.ckpt_dir, self.step, client, rank_state, self.recipe.train.keep_last)

    # --------------------------------------------------------------------------------------------------- train
    def train(self, stop: Optional[StopSignals] = None) -> StageResult:
        """Run the stage to ``train.max_steps``. ``stop``: the run's signal recorder; when any rank has seen
        SIGTERM / SIGUSR1, every rank writes a checkpoint after the same step and :class:`Preempted` is raised."""
        cfg = self.recipe.train
        total = cfg.max_steps
        console = StageConsole(self.recipe.stage, total, self.step, enabled=self.main)
        writer = MetricsWriter(self.stage_dir, enabled=self.main)
        fault_at = int(os.environ.get(FAULT_ENV, "0") or 0)
        window, clock, vote = Window(), StepClock(self.device), FlagVote()
        last: dict[str, float] = {}
        try:
            while self.step < total:
                window.add(self._update(clock))
                self.step += 1
                stopping = vote(stop is not None and stop.requested) and self.step < total
                evaluating = self.heldout.due(self.step)
                if self.step % self.log_every == 0 or self.step == total or stopping or evaluating:
                    last = self._log_window(window, clock.read())
                    if evaluating:
                        last.update(self._evaluate(clock))
                    writer.write(self.step, last)
                    console.update(self.step, last)
                    window = Window()
                else:
                    console.advance_to(self.step)
                if stopping:
                    raise Preempted(stop.received or "a signal to another rank", self.recipe.stage, self.step,
                                    self.save())
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < total:
                    self.save()
                clock.lap("other")  # logging and checkpoints: in the wall time, not in the data wait
                if fault_at and self.step == fault_at:
                    raise SystemExit(f"[momo_ds] fault injected after step {self.step} ({FAULT_ENV})")
            vote.close()
            final_dir = self.ckpt_dir / ckpt.tag_for(self.step)
            if not final_dir.is_dir():
                self.save()
        finally:
            console.close()
            writer.close()
        elapsed = max(self.counters["elapsed_s"], 1e-9)
        result = StageResult(stage=self.recipe.stage, steps=self.step, wall_s=elapsed,
                             steps_per_s=self.step / elapsed, samples_per_s=self.counters["samples"] / elapsed,
                             final=last)
        console.print_summary(f"stage {self.recipe.stage} done", {
            "steps": self.step, "wall time (s)": round(elapsed, 1), "steps/s": result.steps_per_s,
            "samples/s (stage mean)": result.samples_per_s, "tokens/s (stage mean)": self.counters["tokens"] / elapsed,
            **_summary_rows(last)})
        return result

    def _update(self, clock: StepClock):
        """One optimizer step. CMGA: one micro-batch of every stream. Alternating (ablation): the streams of one
        loader draw are applied in turn, one optimizer step each (resume is exact only at multiples of N)."""
        slot = self.step % self.steps_per_draw
        if slot == 0:
            self._drawn = self.loader.next()
        clock.lap("data")
        result = self.updates[slot].backward(self._drawn, self.step)
        clock.lap("fwd_bwd")
        self.engine.step()
        clock.lap("optim")
        return result

    def _evaluate(self, clock: StepClock) -> dict[str, float]:
        """Held-out evaluation (train.eval_every), its time left out of the throughput of the next window."""
        start = time.perf_counter()
        row = self.heldout.evaluate(self.engine.module, self.dtype, self.device)
        clock.exclude(time.perf_counter() - start)
        return row

    def _log_window(self, window: Window, times: dict[str, float]) -> dict[str, float]:
        """Host sync point: the window's loss terms averaged over the steps that produced them and over ranks,
        LR, grad norm, telemetry (memory and data wait: the largest rank) and skipped samples."""
        running = window.running
        keys = sorted(running)
        device = running[keys[0]].device
        steps = torch.tensor([float(window.counts[k]) for k in keys], device=device)
        means = mdist.all_reduce_mean(torch.stack([running[k] for k in keys]) / steps).tolist()
        row = {k: float(v) for k, v in zip(keys, means)}
        row["lr"] = float(self.engine.get_lr()[0])
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            row["grad_norm"] = float(grad_norm)
        memory, _ = peak_memory(self.device)
        mem_max, data_max = mdist.all_reduce_max(
            torch.tensor([memory, times["data_s"]], dtype=torch.float64, device=device)).tolist()
        row.update(window.rates(times, self.world, self.peak, mem_max, data_max))
        row.update(self._skip_columns(device))
        self.counters["samples"] += window.total_samples * self.world
        self.counters["tokens"] += window.total_tokens * self.world
        self.counters["elapsed_s"] += times["wall_s"]
        return row

    def _skip_columns(self, device: torch.device) -> dict[str, float]:
        """``<stream>/skipped`` and ``<stream>/skipped/<reason>`` summed over ranks, every stream and reason from
        the first row on (0 included): metrics.csv fixes its columns there. The loader lists every stream of the
        recipe in recipe order on every rank, and the reasons are a fixed tuple, so the table has one layout."""
        from momo_ds.data import SkipStats

        counts = self.loader.skip_counts()
        row = {}
        for stream, reasons in mdist.sum_count_table(counts, list(counts), SkipStats.REASONS, device).items():
            row[f"{stream}/skipped"] = float(sum(reasons.values()))
            row.update({f"{stream}/skipped/{reason}": float(n) for reason, n in reasons.items()})
        return row

    # -------------------------------------------------------------------------------------------------- export
    def fp32_weights(self) -> Optional[dict[str, torch.Tensor]]:
        """fp32 master weights of the final checkpoint (rank 0 reads the ZeRO shards; other ranks get None)."""
        mdist.barrier()
        state = ckpt.fp32_state_dict(self.ckpt_dir, ckpt.tag_for(self.step)) if self.main else None
        mdist.barrier()
        return state

    def export(self, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
        from momo_ds.model import build_model

        model = build_model(self.model_cfg)
        try:
            parts.load_parts(model, state, required=("encoder", "contrastive", "itm_head", "decoders"),
                             optional=("lm_head",))
        except ValueError as e:
            raise RuntimeError(f"export: checkpoint and model disagree: {e}") from None
        return ckpt.export_encoder(model, self.stage_dir / "encoder.safetensors", meta, tokenizer=self.tokenizer)

    def close(self) -> None:
        self.loader.close()
        self.engine.destroy() if hasattr(self.engine, "destroy") else None


def _summary_rows(last: dict[str, float]) -> dict[str, float]:
    """The last log window for the end-of-stage table: throughput named apart from the stage means above it, and
    only the skip reasons that occurred (the CSV keeps every reason)."""
    names = {"samples_per_s": "samples/s (last window)", "tokens_per_s": "tokens/s (last window)"}
    return {names.get(k, k): v for k, v in last.items() if "/skipped/" not in k or v}
