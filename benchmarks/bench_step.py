#!/usr/bin/env python
"""How fast is the real training step? CMGA (momo_ds.engine.cmga.CMGAStep) through the DeepSpeed engine, for each
stage's streams: stage 1 images (MIM), stage 2 images + text (MIM, MLM), stage 3 text + pairs (MLM; CMM, ITC, ITM).

    python benchmarks/bench_step.py [--quick] [--presets tiny] [--stages 1,2,3] [--zero 2] [--ranks 1|2] \
        [--batch N] [--align-inputs full|masked_image|masked] [--profile] [--json PATH]

Each stage is built as the trainer builds it (packaged recipe, its optimizer groups and LR schedule, the
ds_configs/zero<N>.json config resolved against the recipe: bf16 on GPUs, fp32 on the CPU) and fed synthetic
host batches of the recipe's shapes (random images, text lengths uniform in [L/2, L]), moved to the device by
CMGAStep as in training. Reported per stage: samples/s (all ranks and per device), visible tokens/s (the trainer's
count: the tokens of each stream's main encoding), analytic model FLOPs per step and MFU against the device's
peak (dense bf16 table for H100/H200/A100; on the CPU a measured fp32 matmul), and the time split between the
streams' forward+backward and engine.step(). ``--ranks 2`` relaunches this script under torchrun; rank 0
writes the JSON. On a GPU, ``--sync-debug`` (default on) counts the host syncs of one step.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import (build_cmga, device_peak, ds_config_for, init_distributed, local_device,  # noqa: E402
                    make_console, make_report, print_table, quiet_deepspeed, relaunch_script, set_threads, sync,
                    synthetic_batch, under_torchrun, write_json)
from momo_ds.model.flops import training_flops  # noqa: E402
from momo_ds import distributed as mdist  # noqa: E402
from momo_ds.config import ALIGN_INPUTS, load_recipe, packaged_recipe  # noqa: E402

CPU_BATCH = {"tiny": 32, "base": 2, "large": 1}  # per stream and rank; GPUs use the recipes' (64)
TARGETS = {("large", 1): {"images_per_s_per_device": 3000.0, "mfu": 0.40}}  # on an H100


def count_host_syncs(fn) -> dict:
    """Run ``fn`` once with CUDA's sync debug mode on; count the synchronising calls by source line."""
    counts: dict[str, int] = {}
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
            sync(torch.device("cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message):
            where = f"{Path(w.filename).name}:{w.lineno}"
            counts[where] = counts.get(where, 0) + 1
    return {"total": sum(counts.values()), "by_line": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}


def profile_step(fn, device: torch.device, rows: int = 12) -> list[dict]:
    """Top ops of one step by self time (device time on GPU, CPU time otherwise)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: -getattr(e, key))
    total = sum(getattr(e, key) for e in events) or 1.0
    return [{"op": e.key, "self_ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total, "calls": e.count}
            for e in events[:rows]]


def stage_recipe(preset: str, stage: int, args, device):
    """The packaged recipe of the stage (``--align-inputs`` applied), every stream's batch per rank set: --batch, 4
    with --quick, the recipe's on a GPU, CPU_BATCH on the CPU."""
    overrides = [f"model.align_inputs={args.align_inputs}"] if args.align_inputs else []
    recipe = load_recipe(packaged_recipe(preset, stage), overrides)
    for s in recipe.data.streams:
        s.batch_size = args.batch or (4 if args.quick else s.batch_size if device.type == "cuda"
                                      else CPU_BATCH.get(preset, 2))
    return recipe


def batch_sets(recipe, mcfg, args, device, gen: torch.Generator) -> list[dict]:
    """``--batch-sets`` distinct {stream name: synthetic host batch} steps (pinned on a GPU, as the loader's)."""
    sets = [{s.name: synthetic_batch(mcfg, s, gen, args.min_text_frac) for s in recipe.data.streams}
            for _ in range(args.batch_sets)]
    if device.type == "cuda":
        sets = [{k: b.pin_memory() for k, b in bs.items()} for bs in sets]
    return sets


def stream_flops(recipe, mcfg, sets: list[dict], padded: bool) -> dict[str, float]:
    """{stream name: analytic training FLOPs per step}, averaged over the batch sets; ``padded`` counts the padded
    tokens the step executes, else the real ones."""
    return {s.name: sum(training_flops(mcfg, bs[s.name], s.objectives, padded=padded)["total"] for bs in sets)
            / len(sets) for s in recipe.data.streams}


@dataclass
class StepTimes:
    """Seconds of the timed steps' cmga.backward (every stream's forward + backward) and engine.step(), and the
    visible tokens each step encoded."""

    backward: list[float] = field(default_factory=list)
    optimizer: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    @property
    def totals(self) -> list[float]:
        return [b + s for b, s in zip(self.backward, self.optimizer)]


def time_steps(engine, cmga, sets: list[dict], args, device) -> StepTimes:
    """``--warmup`` untimed then ``--repeats`` timed training steps, cycling through the batch sets; each part is
    synchronised on the device before its clock stops."""
    times = StepTimes()
    for i in range(args.warmup + args.repeats):
        batches = sets[i % len(sets)]
        sync(device)
        t0 = time.perf_counter()
        result = cmga.backward(batches)
        sync(device)
        t1 = time.perf_counter()
        engine.step()
        sync(device)
        t2 = time.perf_counter()
        if i >= args.warmup:
            times.backward.append(t1 - t0)
            times.optimizer.append(t2 - t1)
            times.tokens.append(result.tokens)
    return times


def step_diagnostics(cmga, sets: list[dict], args, device) -> dict:
    """The host syncs of one step (GPU, unless --no-sync-debug) and its top ops (--profile)."""
    extra = {}
    step = lambda: cmga(sets[0])  # noqa: E731
    if device.type == "cuda" and args.sync_debug:
        extra["host_syncs_per_step"] = count_host_syncs(step)
    if args.profile:
        extra["profile_top_ops"] = profile_step(step, device)
    return extra


def stage_row(preset: str, stage: int, args, world: int, recipe, mcfg, dtype, useful: dict, executed: dict,
              times: StepTimes, extra: dict) -> dict:
    """One result row: throughput over all ranks and per device, FLOPs per rank, MFU against ``args.peak``."""
    flops = sum(useful.values())
    totals = times.totals
    t = statistics.median(totals)
    samples_rank = sum(s.batch_size for s in recipe.data.streams)
    row = {"preset": preset, "stage": stage, "zero": args.zero, "ranks": world, "dtype": str(dtype),
           "streams": {s.name: {"kind": s.kind, "objectives": s.objectives, "batch_per_rank": s.batch_size,
                                "max_text_len": s.max_text_len if s.kind != "image" else None,
                                "flops_per_rank": useful[s.name], "flops_executed_per_rank": executed[s.name]}
                       for s in recipe.data.streams},
           "align_inputs": mcfg.align_inputs, "step_s": t, "times_s": totals,
           "backward_s": statistics.median(times.backward), "optimizer_step_s": statistics.median(times.optimizer),
           "samples_per_step": samples_rank * world, "samples_per_s": samples_rank * world / t,
           "samples_per_s_per_device": samples_rank / t,
           "visible_tokens_per_s": sum(times.tokens) / len(times.tokens) * world / t,
           "flops_per_step_per_rank": flops, "flops_executed_per_step_per_rank": sum(executed.values()),
           "padding_overhead": sum(executed.values()) / flops - 1.0,
           "achieved_tflops_per_device": flops / t / 1e12,
           "mfu": flops / t / args.peak if args.peak else None, **extra}
    target = TARGETS.get((preset, stage))
    if target:
        row["targets"] = target
    return row


def run_stage(preset: str, stage: int, args, device, rank: int, world: int, console) -> dict:
    """Build the stage's DeepSpeed engine as the trainer does, time its CMGA step on synthetic batches -> a result
    row (rank 0 prints it); the engine is torn down before the next stage."""
    recipe = stage_recipe(preset, stage, args, device)
    ds_cfg = ds_config_for(recipe, world, args.zero, args.dtype, args.ds_config)
    engine, cmga, mcfg, dtype = build_cmga(recipe, ds_cfg, device)
    sets = batch_sets(recipe, mcfg, args, device, torch.Generator().manual_seed(1000 * stage + rank))
    useful = stream_flops(recipe, mcfg, sets, padded=False)
    executed = stream_flops(recipe, mcfg, sets, padded=True)
    times = time_steps(engine, cmga, sets, args, device)
    extra = step_diagnostics(cmga, sets, args, device)
    row = stage_row(preset, stage, args, world, recipe, mcfg, dtype, useful, executed, times, extra)
    if rank == 0:
        console.print(f"  {preset} stage {stage}: {row['samples_per_s']:.1f} samples/s, "
                      f"{row['visible_tokens_per_s']:.0f} tokens/s, step {row['step_s'] * 1e3:.1f} ms, "
                      f"MFU {row['mfu'] and row['mfu'] * 100:.1f} %")
    engine.destroy()
    del engine, cmga
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny preset, batch 4 per stream, 1+2 steps")
    p.add_argument("--presets", default=None, help="comma list (default: tiny on CPU, base,large on GPU)")
    p.add_argument("--stages", default="1,2,3")
    p.add_argument("--zero", type=int, default=2, choices=[0, 1, 2, 3], help="ZeRO stage (0: DDP-equivalent)")
    p.add_argument("--ds-config", default=None, help="DeepSpeed JSON (default ds_configs/zero<N>.json)")
    p.add_argument("--ranks", type=int, default=1, help="local ranks; >1 relaunches under torchrun")
    p.add_argument("--batch", type=int, default=None, help="per-stream batch per rank (default: per preset)")
    p.add_argument("--align-inputs", default=None, choices=list(ALIGN_INPUTS), help="override model.align_inputs")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 1 quick, 2 CPU, 5 GPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps (default 2 quick, 5 CPU, 20 GPU)")
    p.add_argument("--batch-sets", type=int, default=2, help="distinct synthetic batches cycled through")
    p.add_argument("--min-text-frac", type=float, default=0.5, help="text lengths uniform in [frac*L, L]")
    p.add_argument("--profile", action="store_true", help="record the top ops of one step per stage")
    p.add_argument("--no-sync-debug", dest="sync_debug", action="store_false", help="GPU: skip the host-sync count")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (default 1 on the CPU, see common.set_threads)")
    p.add_argument("--json", default=None, help="write the results here (rank 0)")
    return p.parse_args(argv)


def shared_peak(args, device, rank: int) -> tuple[Optional[float], str]:
    """(peak FLOP/s per device, where it comes from), found on rank 0 (a CPU peak is measured) and broadcast."""
    dtype_probe = torch.bfloat16 if device.type == "cuda" and args.dtype != "fp32" else torch.float32
    peak, peak_src = device_peak(device, dtype_probe, quick=args.quick) if rank == 0 else (None, "")
    return mdist.broadcast_object(peak), peak_src


def print_results(console, args, results: list[dict], world: int, device) -> None:
    """The stage table, then each stage's host syncs and top ops where they were recorded."""
    cols = ["preset", "stage", "streams x batch", "step ms", "fwd+bwd ms", "opt ms", "samples/s",
            "per device", "vis tokens/s", "GFLOP/step", "TFLOP/s", "MFU %", "pad +%"]
    rows = [[r["preset"], r["stage"], "+".join(f"{n}:{s['batch_per_rank']}" for n, s in r["streams"].items()),
             r["step_s"] * 1e3, r["backward_s"] * 1e3, r["optimizer_step_s"] * 1e3,
             r["samples_per_s"], r["samples_per_s_per_device"], r["visible_tokens_per_s"],
             r["flops_per_step_per_rank"] / 1e9, r["achieved_tflops_per_device"],
             r["mfu"] and r["mfu"] * 100, r["padding_overhead"] * 100] for r in results]
    print_table(console, f"CMGA step through DeepSpeed (ZeRO-{args.zero}, {results[0]['dtype'][6:]}, "
                         f"{world} x {device.type})", cols, rows,
                caption="per device: GFLOP/step (analytic, real tokens, 3x forward), TFLOP/s, MFU; pad +% = extra "
                        "FLOPs executed on padding. Target (H100, large stage 1): >= 3000 images/s per GPU, "
                        ">= 40 % MFU")
    for r in results:
        if "host_syncs_per_step" in r:
            console.print(f"  stage {r['stage']}: {r['host_syncs_per_step']['total']} host syncs per step: "
                          f"{r['host_syncs_per_step']['by_line']}")
        for op in r.get("profile_top_ops", [])[:8]:
            console.print(f"  stage {r['stage']} top op {op['op']}: {op['self_ms']:.1f} ms "
                          f"({op['share'] * 100:.0f} %, {op['calls']} calls)")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.ranks > 1 and not under_torchrun():
        return relaunch_script(__file__, argv, args.json, args.ranks)
    device = local_device()
    set_threads(args.threads, device)
    rank, world = init_distributed(device)
    quiet_deepspeed()
    gpu = device.type == "cuda"
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5 if gpu else 2)
    args.repeats = args.repeats or (2 if args.quick else 20 if gpu else 5)
    presets = (args.presets or ("tiny" if args.quick or not gpu else "base,large")).split(",")
    console = make_console()
    args.peak, peak_src = shared_peak(args, device, rank)
    if rank == 0:
        console.print(f"{world} rank(s) on {device}; ZeRO-{args.zero}; peak {args.peak and args.peak / 1e12:.3g} "
                      f"TFLOP/s per device ({peak_src})")
    results = [run_stage(preset, int(stage), args, device, rank, world, console)
               for preset in presets for stage in args.stages.split(",")]
    if rank == 0:
        print_results(console, args, results, world, device)
        config = {"presets": presets, "stages": args.stages, "zero": args.zero, "ranks": world,
                  "device": str(device), "warmup": args.warmup, "repeats": args.repeats, "batch": args.batch,
                  "align_inputs": args.align_inputs, "min_text_frac": args.min_text_frac,
                  "peak_flops_per_device": args.peak, "peak_source": peak_src,
                  "ds_config": args.ds_config or f"ds_configs/zero{max(args.zero, 1)}.json (stage {args.zero})"}
        write_json(args.json, make_report("bench_step", args, config, results), console)
    mdist.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
