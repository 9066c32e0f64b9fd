"""Elastic resume: convert a ZeRO checkpoint to DeepSpeed's universal format and load it on any world size.

A ZeRO checkpoint is sharded by data-parallel rank, so ``engine.load_checkpoint`` refuses it on another world
size. DeepSpeed's converter (``deepspeed.checkpoint.ds_to_universal``) rewrites it per parameter (fp32 master
weights, Adam ``exp_avg``/``exp_avg_sq``, step) and an engine whose config has ``checkpoint.load_universal``
re-partitions that for its own world size. Layout next to the trainer's tags::

    step_00000040/              the ZeRO checkpoint (written by N ranks)
    step_00000040_universal/    its universal copy: zero/<param name>/{fp32,exp_avg,exp_avg_sq,step}.pt,
                                zero/optimizer_state.pt, the model-states file(s), universal.json (what it
                                was converted from: the marker of a complete copy)

Use (every rank; the engine built from ``universal_ds_config(ds_cfg)``)::

    if saved_world_size(ckpt_dir, tag) != world_size:
        client_state = load_universal(engine, ckpt_dir, tag)   # rank 0 converts once, the others wait

The conversion runs on rank 0 only, into a temporary folder renamed into place when complete, and is reused
while the source checkpoint is unchanged. The ranks must share the checkpoint file system. Only checkpoints
this trainer wrote are read: the converter and DeepSpeed's loader unpickle them fully, as DeepSpeed's ordinary
load does; :func:`saved_world_size` reads file names and torch's weights-only view of the model states.

Two DeepSpeed 0.19 ZeRO-3 defects of the universal load are repaired after it (ZeRO-1/2 need neither): every
param group got group 0's hyper-parameters (the no-decay group would be decayed), and all groups shared one
Adam ``step`` tensor (incremented once per group per step).
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from momo_ds import distributed as mdist

SUFFIX = "_universal"
MARKER = "universal.json"
MARKER_FORMAT = "momo_ds.universal/1"
LOG = "convert.log"
# dp rank and mp rank of DeepSpeed's per-rank ZeRO files: (bf16_)zero_pp_rank_<dp>_mp_rank_<mp>_optim_states.pt
_ZERO_FILE = re.compile(r"^(?:bf16_|fp16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")


def universal_tag(tag: str) -> str:
    """The tag (a folder name next to ``tag``) of ``tag``'s universal copy."""
    return f"{tag}{SUFFIX}"


def universal_ds_config(ds_cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy of a DeepSpeed config whose engine loads universal checkpoints (``checkpoint.load_universal``).

    DeepSpeed reads the flag in ``load_checkpoint`` only; pass the copy to ``deepspeed.initialize``: an engine
    built from it loads nothing but universal checkpoints, and saves ordinary ZeRO checkpoints."""
    cfg = copy.deepcopy(ds_cfg)
    section = cfg.get("checkpoint") or {}
    cfg["checkpoint"] = {**section, "load_universal": True}
    return cfg


# --------------------------------------------------------------------------------------------------- inspection
def _zero_ranks(src: Path) -> dict[int, set[int]]:
    """mp rank -> the dp ranks that have an optimizer shard in ``src`` (file names only)."""
    ranks: dict[int, set[int]] = {}
    for f in src.iterdir():
        m = _ZERO_FILE.match(f.name)
        if m:
            ranks.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    return ranks


def _recorded_dp_world_size(src: Path) -> Optional[int]:
    """``dp_world_size`` from the rank-0 model-states file, read with torch's weights-only unpickler (plain
    containers and tensors only, nothing executed; mmap: no tensor data read); None when that file is absent
    or holds something that unpickler refuses."""
    import torch

    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (src / name).is_file():
            try:
                sd = torch.load(src / name, map_location="cpu", weights_only=True, mmap=True)
            except Exception:
                return None
            value = sd.get("dp_world_size") if isinstance(sd, dict) else None
            return int(value) if isinstance(value, int) else None
    return None


def saved_world_size(ckpt_dir: Path, tag: str) -> int:
    """The data-parallel world size that wrote ``ckpt_dir/tag``.

    DeepSpeed writes one ZeRO optimizer shard per dp rank (``zero_pp_rank_<dp>_mp_rank_<mp>_optim_states.pt``):
    their names say it without opening a file. The model-states file records it too (``dp_world_size``), read
    with torch's weights-only unpickler as a cross-check (and the answer for a checkpoint without ZeRO shards).
    Raises RuntimeError (one line) for a missing tag, shards that are not ranks 0..N-1, or a disagreement."""
    src = Path(ckpt_dir) / tag
    if not src.is_dir():
        raise RuntimeError(f"checkpoint {src} does not exist")
    ranks = _zero_ranks(src)
    recorded = _recorded_dp_world_size(src)
    if not ranks:
        if recorded is None:
            raise RuntimeError(f"checkpoint {src} has neither ZeRO optimizer shards nor a readable model-states "
                               f"file: not a DeepSpeed checkpoint")
        return recorded
    n = len(ranks[min(ranks)])
    for mp, dps in sorted(ranks.items()):
        if dps != set(range(n)):
            raise RuntimeError(f"checkpoint {src} is incomplete: model-parallel rank {mp} has ZeRO optimizer "
                               f"shards of data-parallel ranks {sorted(dps)}, expected 0..{n - 1}")
    if recorded is not None and recorded != n:
        raise RuntimeError(f"checkpoint {src} is inconsistent: {n} ZeRO optimizer shards per model-parallel rank "
                           f"but dp_world_size={recorded} in its model states")
    return n


def _fingerprint(src: Path) -> dict[str, list[int]]:
    """Name -> [size, mtime_ns] of the DeepSpeed files of a tag (a re-saved tag invalidates its copy)."""
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(src.iterdir())
            if f.is_file() and f.name.endswith(".pt")}


def _read_marker(out: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_converted(ckpt_dir: Path, tag: str) -> bool:
    """Whether ``tag`` has a complete universal copy converted from its current files."""
    ckpt_dir = Path(ckpt_dir)
    marker = _read_marker(ckpt_dir / universal_tag(tag))
    return bool(marker and marker.get("format") == MARKER_FORMAT and marker.get("source") == tag
                and marker.get("fingerprint") == _fingerprint(ckpt_dir / tag))


# --------------------------------------------------------------------------------------------------- conversion
def _converter_argv(src: Path, out: Path, workers: int) -> list[str]:
    # --inject_missing_state: the converter (ZeRO-1/2 path) insists on a ``universal_checkpoint_info`` entry in
    # the model-states file, which DeepSpeed writes only for AutoTP/AutoEP models; injecting it (the version key
    # alone) is all a model without tensor/pipeline parallelism needs, so checkpoints need no extra client state.
    return ["--input_folder", str(src), "--output_folder", str(out), "--inject_missing_state",
            "--num_extract_workers", str(workers), "--num_merge_workers", str(max(1, workers // 2))]


def _convert_in_process(src: Path, out: Path, log: Path) -> None:
    """Serial conversion in this process (no worker pool: forking a process that runs torch.distributed is not
    safe). The converter's progress output goes to ``log``."""
    from deepspeed.checkpoint import ds_to_universal as converter

    saved_argv = sys.argv
    with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            sys.argv = ["ds_to_universal", *_converter_argv(src, out, 1)]
            args = converter.parse_arguments()  # the converter's own defaults for every option not given
        finally:
            sys.argv = saved_argv
        converter.main(args)


def _convert_subprocess(src: Path, out: Path, log: Path, workers: int) -> None:
    """``python -m deepspeed.checkpoint.ds_to_universal`` with ``workers`` extraction processes."""
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", *_converter_argv(src, out, workers)]
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"exit status {proc.returncode}: {_last_line(log)}")


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    return lines[-1][:300] if lines else "no output"


def _convert(ckpt_dir: Path, tag: str, workers: int) -> None:
    """Rank 0: convert ``tag`` into ``<tag>_universal`` unless a complete copy of its current files exists."""
    src, out = ckpt_dir / tag, ckpt_dir / universal_tag(tag)
    world = saved_world_size(ckpt_dir, tag)  # also: the tag exists and holds ZeRO shards
    if is_converted(ckpt_dir, tag):
        return
    fingerprint = _fingerprint(src)
    for stale in ckpt_dir.glob(f".tmp-{universal_tag(tag)}-*"):  # left by a conversion that was killed
        shutil.rmtree(stale, ignore_errors=True)
    work = ckpt_dir / f".tmp-{universal_tag(tag)}-{os.getpid()}"
    work.mkdir(parents=True)
    # the converter writes ``latest_universal`` next to its output folder: nested, that file stays in ``work``
    tmp_out, log = work / universal_tag(tag), work / LOG
    kept = ckpt_dir / f".{universal_tag(tag)}.{LOG}"  # a failed conversion's log stays here
    try:
        if workers > 1:
            _convert_subprocess(src, tmp_out, log, workers)
        else:
            _convert_in_process(src, tmp_out, log)
        if not (tmp_out / "zero" / "optimizer_state.pt").is_file():
            raise RuntimeError(f"no zero/optimizer_state.pt in the output: {_last_line(log)}")
        import deepspeed

        shutil.copy2(log, tmp_out / LOG)
        (tmp_out / MARKER).write_text(json.dumps({
            "format": MARKER_FORMAT, "source": tag, "saved_world_size": world,
            "deepspeed": deepspeed.__version__, "fingerprint": fingerprint}, indent=1))
        shutil.rmtree(out, ignore_errors=True)  # an incomplete or outdated copy
        os.replace(tmp_out, out)
        kept.unlink(missing_ok=True)  # the log of an earlier failed attempt
    except Exception as e:
        with contextlib.suppress(OSError):
            shutil.copy2(log, kept)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else "no message"
        raise RuntimeError(f"converting checkpoint {src} to a universal checkpoint failed: "
                           f"{type(e).__name__}: {reason} (converter log: {kept})") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def to_universal(ckpt_dir: Path, tag: str, workers: int = 1) -> str:
    """Collective: convert ``ckpt_dir/tag`` to DeepSpeed's universal format in ``ckpt_dir/<tag>_universal``
    (kept, and reused while ``tag``'s files are unchanged); returns that tag, to load from ``ckpt_dir``.

    Rank 0 converts; the other ranks wait and raise the same one-line RuntimeError when it fails.
    workers: 1 converts in this process; more run DeepSpeed's converter as a subprocess with that many
    extraction workers (faster for large models)."""
    ckpt_dir = Path(ckpt_dir)
    error = None
    if mdist.get_rank() == 0:
        try:
            _convert(ckpt_dir, tag, workers)
        except RuntimeError as e:
            error = str(e)
        except Exception as e:  # a one-line error on every rank rather than rank 0's traceback and a hang
            error = f"converting checkpoint {ckpt_dir / tag} to a universal checkpoint failed: " \
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'}"
    error = mdist.broadcast_object(error)  # every rank waits here for rank 0
    if error:
        raise RuntimeError(error)
    return universal_tag(tag)


# ------------------------------------------------------------------------------------------------------ loading
def _base_optimizer(engine):
    opt = engine.optimizer
    return getattr(opt, "optimizer", opt)


def _saved_param_groups(out: Path) -> list[dict[str, Any]]:
    """The optimizer's param-group hyper-parameters as saved, from ``zero/optimizer_state.pt`` of our own
    universal copy, read weights-only (DeepSpeed's loss-scaler and ZeRO-stage classes allowed by name)."""
    import torch

    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    # torch's weights-only unpickler, with the three DeepSpeed classes this file holds allowed by name
    with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum]):
        sd = torch.load(out / "zero" / "optimizer_state.pt", map_location="cpu", weights_only=True)
    groups = sd.get("param_groups") or sd.get("optimizer_state_dict", {}).get("param_groups") or []
    return [{k: v for k, v in g.items() if k != "params"} for g in groups]


def load_universal(engine, ckpt_dir: Path, tag: str, workers: int = 1) -> dict[str, Any]:
    """Collective: restore model, optimizer (fp32 master weights, Adam moments, step), LR scheduler and client
    state from ZeRO checkpoint ``ckpt_dir/tag`` written on any world size (converted first when needed).

    ``engine`` must come from ``deepspeed.initialize`` with :func:`universal_ds_config`. Parameters are
    restored from the optimizer's fp32 copies (DeepSpeed skips the module state dict in this mode), so only
    parameters the optimizer holds are restored: buffers keep the values the freshly built model has.
    Returns the client state saved with the checkpoint (as ``engine.load_checkpoint`` returns it)."""
    if not engine.load_universal_checkpoint():
        raise RuntimeError(f"cannot load {Path(ckpt_dir) / tag} on another world size: build the engine with "
                           f"momo_ds.engine.universal.universal_ds_config(ds_cfg) (checkpoint.load_universal)")
    utag = to_universal(ckpt_dir, tag, workers)
    path, client = engine.load_checkpoint(str(ckpt_dir), tag=utag, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load universal checkpoint {Path(ckpt_dir) / utag}")
    if engine.zero_optimization_partition_weights():
        _restore_param_groups(engine, Path(ckpt_dir) / utag)
    _unshare_steps(engine)
    return client or {}


def _unshare_steps(engine) -> None:
    """ZeRO-3's universal load puts one ``step`` tensor into the state of every param group (DeepSpeed 0.19);
    torch's Adam increments it in place once per group, so each step would count N times (bias correction
    off from the next step on). Give every state its own copy (ZeRO-1/2 load one per group already)."""
    import torch

    for state in _base_optimizer(engine).state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def _restore_param_groups(engine, out: Path) -> None:
    """ZeRO-3's universal load gives every param group the hyper-parameters of the saved group 0 (DeepSpeed
    0.19: ``param_groups[0]`` copied into each group), which would decay the no-decay group; put each group's
    own saved values back (ZeRO-1/2 restore them group by group already)."""
    groups = _base_optimizer(engine).param_groups
    saved = _saved_param_groups(out)
    if len(saved) != len(groups):
        raise RuntimeError(f"universal checkpoint {out}: {len(saved)} saved optimizer param groups, the optimizer "
                           f"has {len(groups)}")
    for group, values in zip(groups, saved):
        group.update(values)
