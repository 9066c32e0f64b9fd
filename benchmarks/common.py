"""What the benchmarks share: machine and version info, timing (warm-up, repeats, median), device peaks,
synthetic batches, rich tables, JSON reports and the torchrun relaunch of the multi-rank benchmarks. The analytic
FLOP counter is the library's (:mod:`momo_ds.model.flops`).
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from torch import Tensor  # noqa: E402

from momo_ds import distributed as mdist  # noqa: E402
from momo_ds.config import ModelConfig, StreamConfig  # noqa: E402
from momo_ds.data.collate import mask_images, mask_pairs, mask_text  # noqa: E402

# Dense bf16 tensor-core peaks, TFLOP/s (SXM parts; the PCIe H100 is listed separately and matched first).
GPU_PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H200": 989.0, "H100": 989.0, "A100": 312.0}
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


# ------------------------------------------------------------------------------------------- machine, versions
def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                            "python": platform.python_version(), "gpu": None, "gpu_count": 0}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(), cuda=torch.version.cuda,
                    gpu_memory_gib=round(props.total_memory / 2 ** 30, 1))
    return info


def versions() -> dict[str, Optional[str]]:
    """Installed versions, read from package metadata (no imports)."""
    out: dict[str, Optional[str]] = {"torch": torch.__version__}
    for name in ("deepspeed", "timm", "transformers", "numpy", "flash-attn", "torchvision", "webdataset", "pillow",
                 "tokenizers"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def set_threads(n: Optional[int], device: torch.device) -> None:
    """Intra-op CPU threads: ``n``, or 1 on the CPU. One thread per process times steadily on a shared machine: a
    thread pool whose workers other jobs deschedule waits at every barrier (a tiny MoMo step measured 50x slower
    with 2 threads than with 1 on a 2-core machine while another job ran). Pass ``--threads`` on a quiet one."""
    if n or device.type == "cpu":
        torch.set_num_threads(n or 1)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def train_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """bf16 on GPUs that have it, fp32 on the CPU (where bf16 matmuls are emulated), unless ``name`` forces one."""
    if name != "auto":
        return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Seconds of each timed repeat."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def as_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": min(self.times), "max_s": max(self.times), "times_s": self.times}


def time_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int = 1,
                     repeats: int = 3) -> dict[str, Timing]:
    """Time variants side by side: every repeat runs each variant once (order rotated), so machine noise hits all
    of them alike; read medians. Each call is synchronised on the device before the clock stops."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
        sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            sync(device)
            t0 = time.perf_counter()
            fns[n]()
            sync(device)
            times[n].append(time.perf_counter() - t0)
    return {n: Timing(t) for n, t in times.items()}


# ----------------------------------------------------------------------------------------------------- peaks
def cpu_matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """Measured FLOP/s of an n x n matmul on this CPU with the current thread count (best of ``repeats``: a peak,
    and the least disturbed by other jobs)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / min(times)


def gpu_peak_tflops(name: str) -> Optional[float]:
    for key, tflops in GPU_PEAK_BF16_TFLOPS.items():
        if all(part in name for part in key.split()):
            return tflops
    return None


def device_peak(device: torch.device, dtype: torch.dtype, quick: bool = False) -> tuple[Optional[float], str]:
    """(peak FLOP/s, where it comes from): the table for known GPUs in bf16, a measured fp32 matmul on the CPU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        tflops = gpu_peak_tflops(name)
        if tflops is None:
            return None, f"{name}: no peak in the table"
        note = "" if dtype == torch.bfloat16 else f" (the bf16 peak; this run is {dtype})"
        return tflops * 1e12, f"{name} dense bf16 {tflops:.0f} TFLOP/s{note}"
    flops = cpu_matmul_peak(dtype, n=1024 if quick else 2048)
    return flops, f"measured {str(dtype).replace('torch.', '')} matmul, {torch.get_num_threads()} threads"


# ------------------------------------------------------------------------------------------ synthetic batches
def synthetic_texts(b: int, max_len: int, vocab: int, gen: torch.Generator, min_frac: float = 0.5,
                    pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Right-padded random texts: ids [B, L] (no pad id inside), mask [B, L], lengths uniform in
    [max(2, min_frac * L), L]."""
    low = max(2, int(min_frac * max_len))
    lengths = torch.randint(low, max_len + 1, (b,), generator=gen)
    ids = torch.randint(1, vocab, (b, max_len), generator=gen)
    ids = torch.where(ids == pad_id, torch.ones_like(ids), ids)
    mask = torch.arange(max_len)[None] < lengths[:, None]
    return ids.masked_fill(~mask, pad_id), mask


def synthetic_batch(cfg: ModelConfig, stream: StreamConfig, gen: torch.Generator, min_text_frac: float = 0.5):
    """A host batch of the stream's kind, size and mask ratios: N(0, 1) images, random token ids."""
    b = stream.batch_size
    max_len = min(stream.max_text_len, cfg.max_text_len)
    if stream.kind in ("image", "pair"):
        images = torch.randn(b, cfg.in_chans, cfg.img_size, cfg.img_size, generator=gen)
    if stream.kind in ("text", "pair"):
        ids, mask = synthetic_texts(b, max_len, cfg.vocab_size, gen, min_text_frac, cfg.pad_token_id)
    if stream.kind == "image":  # masked as the loader masks (momo_ds.data.collate)
        return mask_images(images, cfg.patch_size, stream.image_mask_ratio, gen)
    if stream.kind == "text":
        return mask_text(ids, mask, stream.text_mask_ratio, cfg.pad_token_id, gen)
    return mask_pairs(images, ids, mask, cfg.patch_size, stream.image_mask_ratio, stream.text_mask_ratio,
                      cfg.pad_token_id, gen, stream.align_mask_ratio)


def count_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


# ---------------------------------------------------------------------------------------------- output
def make_console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 150)


def print_table(console: Console, title: str, columns: list[str], rows: list[list[Any]],
                caption: Optional[str] = None) -> None:
    """Left-aligned first column, right-aligned numbers."""
    table = Table(title=title, caption=caption, caption_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[fmt(v) for v in row])
    console.print(table)


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-2:
            return f"{v:.3g}"
        return f"{v:.2f}"
    return str(v)


def make_report(name: str, args, config: dict[str, Any], results: Any, **extra) -> dict[str, Any]:
    """The JSON every benchmark writes: what ran, where, with which versions and settings, and the numbers."""
    return {"benchmark": name, "date": time.strftime(DATE_FORMAT), "quick": bool(getattr(args, "quick", False)),
            "argv": sys.argv[1:], "machine": machine_info(), "versions": versions(), "config": config,
            "results": results, **extra}


def write_json(path: Optional[str], report: dict[str, Any], console: Optional[Console] = None) -> None:
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(p)
    if console is not None:
        console.print(f"wrote {p}")


# ------------------------------------------------------------------------------------------ multi-rank launch
def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def check_ranks(nproc: int) -> None:
    """One rank per GPU (NCCL refuses two ranks on one GPU); CPU ranks are unlimited."""
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise SystemExit(f"--ranks {nproc} needs {nproc} GPUs, this machine has {torch.cuda.device_count()}; use "
                         f"--ranks {torch.cuda.device_count()} or CUDA_VISIBLE_DEVICES= to run the ranks on the CPU")


def relaunch_under_torchrun(script: str, argv: list[str], nproc: int, json_path: str) -> int:
    """Run ``script argv`` on ``nproc`` local ranks with torchrun and wait; rank 0 writes ``json_path``.

    Judged by the JSON rank 0 wrote, not by the exit code alone (DeepSpeed on CPU sometimes crashes at interpreter
    exit after finishing). CPU ranks split the cores between them unless OMP_NUM_THREADS is set.
    """
    check_ranks(nproc)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={mdist.free_port()}", script, *argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(":")}
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    start = time.time()
    rc = subprocess.run(cmd, env=env).returncode
    written = Path(json_path).is_file() and Path(json_path).stat().st_mtime >= start
    if written:
        return 0
    print(f"rank 0 did not write {json_path} (torchrun exit code {rc})", file=sys.stderr)
    return rc or 1


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size): the trainer's torch.distributed start-up, also for a plain single process."""
    from momo_ds import distributed as mdist

    mdist.init_distributed("nccl" if device.type == "cuda" else "gloo")
    return mdist.get_rank(), mdist.get_world_size()


def quiet_deepspeed() -> None:
    """DeepSpeed's INFO logging drowns the tables."""
    import logging

    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)


# -------------------------------------------------------------------------------------------- DeepSpeed step
def ds_config_for(recipe, world: int, zero: int, dtype: str = "auto", path: Optional[str] = None) -> dict[str, Any]:
    """ds_configs/zero<N>.json (zero2.json for ZeRO-0, stage set to 0) resolved against the recipe like the
    trainer does; ``dtype`` "bf16"/"fp32" overrides bf16 "auto"."""
    from momo_ds.engine.ds_config import load_ds_config, resolve_ds_config

    cfg = resolve_ds_config(load_ds_config(path or ROOT / "ds_configs" / f"zero{max(zero, 1)}.json"), recipe, world)
    cfg.setdefault("zero_optimization", {})["stage"] = zero
    if dtype != "auto":
        cfg.setdefault("bf16", {})["enabled"] = dtype == "bf16"
    return cfg


def build_cmga(recipe, ds_cfg: dict[str, Any], device: torch.device, seed: int = 0):
    """(engine, CMGAStep, ModelConfig, dtype) built by the trainer's own momo_ds.engine.stage.build_engine (no
    loader, no checkpoints)."""
    from momo_ds.engine.ds_config import ds_dtype
    from momo_ds.engine.stage import build_engine
    from momo_ds.model import build_model

    torch.manual_seed(seed)
    model = build_model(recipe.model_config())
    engine, (cmga, *_) = build_engine(recipe, ds_cfg, model, device)
    return engine, cmga, model.cfg, ds_dtype(ds_cfg)


def local_device() -> torch.device:
    """This rank's device: cuda:LOCAL_RANK when there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")
