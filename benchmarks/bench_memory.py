#!/usr/bin/env python
"""How much memory does each rank hold under ZeRO-0 (DDP-equivalent), ZeRO-1, ZeRO-2 and ZeRO-3?

    python benchmarks/bench_memory.py [--quick] [--preset base] [--stage 2] [--zeros 0,1,2,3] [--ranks 2] \
        [--dtype auto|fp32|bf16] [--json PATH]

Runs under torchrun (relaunches itself with ``--ranks`` local ranks). For each ZeRO stage every rank builds the
stage's engine as the trainer does (packaged recipe, ds_configs/zero<N>.json, ZeRO-0 = zero2.json with stage 0),
runs two CMGA steps, and counts the bytes of the tensors it actually holds after each stream's backward of the
second step (gradients live, Adam state allocated); the fullest of these points is reported:

  params     the module's parameters on this rank (ZeRO-3: the ds_tensor partitions), flat buffers included
  grads      module .grad tensors plus every gradient buffer/partition DeepSpeed's optimizer wrapper holds
             (attribute names containing "grad", e.g. averaged_gradients, ipg_buffer, grad partitions)
  master     fp32 copies the inner optimizer steps (its param_groups, or wrapper attributes named fp32/master)
             when they are not the module's own tensors
  optim      the inner optimizer's state tensors (Adam exp_avg, exp_avg_sq, step)
  other      any other tensor held by the wrapper (listed by attribute in the JSON)

Storages are deduplicated, so views into one flat buffer count once, with the buffer's full size. Everything is
measured from live tensors; nothing is analytic except ``ideal_ratio`` in the JSON (the textbook 1/N split of
grads and optimizer state). On GPUs the peak allocated memory per rank is reported too. The target: ZeRO-2's grads +
master + optim per rank <= 1.1/N of ZeRO-0's; see ``summarise`` for the two accountings reported.
"""
from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from common import (build_cmga, count_params, ds_config_for, init_distributed, local_device,  # noqa: E402
                    make_console, make_report, print_table, quiet_deepspeed, relaunch_script, sync,
                    synthetic_batch, under_torchrun, write_json)
from momo_ds.config import load_recipe, packaged_recipe  # noqa: E402

TARGET_FACTOR = 1.1  # ZeRO-2 (grads + optimizer) <= 1.1 / N of ZeRO-0's
MIB = 2 ** 20
CATEGORIES = ("params", "grads", "master", "optim", "other")


def _storage(t: Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def _tensors(obj: Any, path: str, depth: int) -> Iterator[tuple[str, Tensor]]:
    """Tensors reachable from ``obj`` through lists, tuples and dicts (not through modules or optimizers)."""
    if isinstance(obj, Tensor):
        yield path, obj
        if obj.is_leaf and obj.grad is not None:
            yield path + ".grad", obj.grad
        return
    if depth == 0 or isinstance(obj, (nn.Module, torch.optim.Optimizer)):
        return
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return
    for k, v in items:
        yield from _tensors(v, f"{path}[{k if not isinstance(k, Tensor) else 'param'}]", depth - 1)


def inner_optimizer(opt) -> torch.optim.Optimizer:
    """The torch optimizer under DeepSpeed's wrappers (ZeRO / bf16 optimizers keep it in ``.optimizer``)."""
    while hasattr(opt, "optimizer") and isinstance(getattr(opt, "optimizer"), torch.optim.Optimizer) \
            and opt.optimizer is not opt:
        opt = opt.optimizer
    return opt


def account(engine) -> dict[str, Any]:
    """Bytes this rank holds, by category (see the module docstring), and the wrapper attributes counted."""
    seen: dict[int, str] = {}
    out = {"params": 0, "grads": 0, "master": 0, "optim": 0, "other": 0}
    where: dict[str, int] = {}

    def add(t: Tensor, category: str, name: str) -> None:
        if t is None or t.numel() == 0 or t.device.type == "meta":
            return
        ptr, nbytes = _storage(t)
        if ptr in seen or ptr == 0:
            return
        seen[ptr] = category
        out[category] += nbytes
        key = f"{category}:{name}"
        where[key] = where.get(key, 0) + nbytes

    module = engine.module
    for p in module.parameters():
        add(getattr(p, "ds_tensor", None), "params", "module.ds_tensor")
        add(p.data, "params", "module.param")
    for p in module.parameters():
        add(p.grad, "grads", "module.param.grad")
    inner = inner_optimizer(engine.optimizer)
    for g in inner.param_groups:
        for p in g["params"]:
            add(p, "master", "inner.param_groups")
            add(p.grad, "grads", "inner.param.grad")
    for state in inner.state.values():
        for k, v in state.items():
            if isinstance(v, Tensor):
                add(v, "optim", f"inner.state.{k}")
    wrapper = engine.optimizer
    if wrapper is not inner:
        for attr, value in sorted(vars(wrapper).items()):
            for path, t in _tensors(value, attr, depth=4):
                low = path.lower()
                add(t, "grads" if "grad" in low else "master" if "fp32" in low or "master" in low else "other", attr)
    return {**out, "by_attribute": dict(sorted(where.items()))}


class SnapshotEngine:
    """Forwards everything to a DeepSpeed engine and, while ``recording``, accounts its tensors after every
    ``backward`` (CMGAStep drives any object with the engine's interface)."""

    def __init__(self, engine):
        self._engine = engine
        self.recording = False
        self.snapshots: list[dict[str, Any]] = []

    def __call__(self, *args, **kwargs):
        return self._engine(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def backward(self, loss):
        out = self._engine.backward(loss)
        if self.recording:
            self.snapshots.append(account(self._engine))
        return out


def _held(a: dict[str, Any]) -> int:
    return sum(a[k] for k in CATEGORIES)


def run_zero(zero: int, args, device, rank: int, world: int) -> dict[str, Any]:
    from momo_ds.engine.cmga import CMGAStep

    recipe = load_recipe(packaged_recipe(args.preset, args.stage))
    for s in recipe.data.streams:
        s.batch_size = args.batch or (2 if args.quick or device.type == "cpu" else s.batch_size)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    # DeepSpeed refuses bf16 ZeRO-0 with fp32 gradient accumulation: the DDP baseline is then fp32 (params = master
    # weights, fp32 grads and Adam), which is what torch DDP with bf16 autocast holds.
    dtype_name = "fp32" if zero == 0 and args.dtype != "fp32" and _bf16(args, device) else args.dtype
    ds_cfg = ds_config_for(recipe, world, zero, dtype_name)
    engine, cmga, mcfg, dtype = build_cmga(recipe, ds_cfg, device)
    probe = SnapshotEngine(engine)
    step = CMGAStep(probe, cmga.streams, cmga.dtype, cmga.device, cmga.rank)
    gen = torch.Generator().manual_seed(rank)
    batches = {s.name: synthetic_batch(mcfg, s, gen) for s in recipe.data.streams}
    after_init = account(engine)
    step(batches)  # step 1 allocates the optimizer state
    probe.recording = True
    step.backward(batches)  # step 2: a snapshot after each stream's backward
    probe.recording = False
    sync(device)
    high = max(probe.snapshots, key=_held)
    engine.step()
    sync(device)
    row = {"zero": zero, "rank": rank, "dtype": str(dtype), "params_count": count_params(engine.module),
           "streams": [s.name for s in recipe.data.streams], "after_init": after_init, "in_step": high,
           "after_backwards": probe.snapshots, "after_step": account(engine)}
    if device.type == "cuda":
        row["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        row["allocated_after_step_bytes"] = torch.cuda.memory_allocated(device)
    engine.destroy()
    del engine, cmga, step, probe
    gc.collect()
    return row


def _bf16(args, device) -> bool:
    return args.dtype == "bf16" or (args.dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())


def summarise(rows: list[dict], world: int) -> list[dict]:
    """One line per ZeRO stage (the rank holding the most), with two ratios to ZeRO-0:

    ratio_to_zero0:         (grads + master + optim) / the same of ZeRO-0, where ZeRO-0 (DDP) has no master
                            copy: its fp32 params are the master weights (the target's literal quantity);
    ratio_zero_accounting:  the ZeRO paper's accounting: fp32 master weights are optimizer state for both, so
                            ZeRO-0's fp32 params count as its master.
    """
    by_zero: dict[int, list[dict]] = {}
    for r in rows:
        by_zero.setdefault(r["zero"], []).append(r)
    out = []
    for zero, ranks in sorted(by_zero.items()):
        worst = max((r["in_step"] for r in ranks), key=_held)
        line = {"zero": zero, "params_count": ranks[0]["params_count"], "dtype": ranks[0]["dtype"],
                **{k: worst[k] for k in CATEGORIES},
                "grads_plus_optimizer": worst["grads"] + worst["master"] + worst["optim"], "total": _held(worst)}
        if "peak_allocated_bytes" in ranks[0]:
            line["peak_allocated_bytes"] = max(r["peak_allocated_bytes"] for r in ranks)
        out.append(line)
    base = next((line for line in out if line["zero"] == 0), None)
    if base:
        fp32_master = base["params"] if base["master"] == 0 and "float32" in base["dtype"] else base["master"]
        base_zero_acc = base["grads"] + base["optim"] + fp32_master
        for line in out:
            line["ratio_to_zero0"] = line["grads_plus_optimizer"] / base["grads_plus_optimizer"]
            mine = line["grads_plus_optimizer"] + (fp32_master if line["zero"] == 0 and line["master"] == 0 else 0)
            line["ratio_zero_accounting"] = mine / base_zero_acc
            line["ratio_total"] = line["total"] / base["total"]
            line["ideal_ratio"] = 1.0 / world if line["zero"] >= 2 else None
            if line["zero"] == 2:
                line["target_ratio"] = TARGET_FACTOR / world
                line["meets_target"] = line["ratio_to_zero0"] <= TARGET_FACTOR / world
                line["meets_target_zero_accounting"] = line["ratio_zero_accounting"] <= TARGET_FACTOR / world
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny preset, batch 2")
    p.add_argument("--preset", default=None, help="tiny | base | large (default: tiny quick, base otherwise)")
    p.add_argument("--stage", type=int, default=2, help="whose model and streams (2: image MIM + text MLM, two "
                                                         "backwards per step)")
    p.add_argument("--zeros", default="0,1,2,3")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--batch", type=int, default=None, help="per-stream batch (default 2 on CPU, recipe on GPU)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--json", default=None, help="write the results here (rank 0)")
    args = p.parse_args(argv)
    if not under_torchrun():
        return relaunch_script(__file__, argv, args.json, args.ranks)
    device = local_device()
    rank, world = init_distributed(device)
    quiet_deepspeed()
    args.preset = args.preset or ("tiny" if args.quick else "base")
    import torch.distributed as dist

    rows = []
    for zero in [int(z) for z in args.zeros.split(",")]:
        row = run_zero(zero, args, device, rank, world)
        gathered: list = [None] * world
        dist.all_gather_object(gathered, row)
        rows += gathered
    if rank == 0:
        console = make_console()
        summary = summarise(rows, world)
        cols = ["ZeRO", "dtype", "params MiB", "grads MiB", "master MiB", "optim MiB", "other MiB",
                "grads+opt MiB", "vs ZeRO-0", "ZeRO-paper acc.", "total vs 0", "target", "peak MiB"]
        table = [[s["zero"], s["dtype"][6:], s["params"] / MIB, s["grads"] / MIB, s["master"] / MIB,
                  s["optim"] / MIB, s["other"] / MIB, s["grads_plus_optimizer"] / MIB, s.get("ratio_to_zero0"),
                  s.get("ratio_zero_accounting"), s.get("ratio_total"),
                  s.get("target_ratio") and f"<= {s['target_ratio']:.3f}",
                  s.get("peak_allocated_bytes") and s["peak_allocated_bytes"] / MIB] for s in summary]
        print_table(console, f"per-rank bytes, {args.preset} stage {args.stage}, {world} ranks on {device.type}, "
                             f"{summary[-1]['dtype'][6:]} ({summary[0]['params_count'] / 1e6:.1f}M params)",
                    cols, table, caption="largest rank, at the fullest point of a step (after one of its streams' "
                                         "backward); grads+opt = grads + master + optim. ZeRO-paper acc.: ZeRO-0's "
                                         "fp32 params counted as its master weights. ZeRO-0 runs fp32 when the "
                                         "others run bf16 (DeepSpeed has no bf16 ZeRO-0 with fp32 grad "
                                         "accumulation).")
        config = {"preset": args.preset, "stage": args.stage, "zeros": args.zeros, "ranks": world,
                  "device": str(device), "dtype": args.dtype, "batch": args.batch, "target_factor": TARGET_FACTOR,
                  "ds_configs": "ds_configs/zero<N>.json; ZeRO-0 = zero2.json with stage 0"}
        write_json(args.json, make_report("bench_memory", args, config, {"summary": summary, "per_rank": rows}),
                   console)
    dist.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
