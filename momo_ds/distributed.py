"""Everything that talks to torch.distributed: rank helpers, gathers (with and without gradient), reductions.

Model and loss code never import torch.distributed; they receive a :class:`TorchDist` (or the model's local
identity context) and call its ``gather*`` methods.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor


def free_port() -> int:
    """A free TCP port on localhost (for a rendezvous of ranks started here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(backend: Optional[str] = None) -> None:
    """torch.distributed through DeepSpeed, under the deepspeed launcher, torchrun, ``srun`` (one task per rank)
    or a plain ``python`` (one process: a world of one on a free local port). backend: None lets DeepSpeed pick
    (NCCL on GPUs, gloo on CPU)."""
    import deepspeed

    os.environ.update(rendezvous_env(os.environ))
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def rendezvous_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables torch.distributed reads, where the launcher did not set them: SLURM's per-task ones under
    ``srun`` (the job script exports MASTER_ADDR, e.g. the first host of ``$SLURM_JOB_NODELIST``), else a world
    of one on a free local port."""
    if "RANK" in env:
        return {}
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        if "MASTER_ADDR" not in env:
            raise RuntimeError("srun with several tasks: export MASTER_ADDR (the first host of the job: "
                               "$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)) and MASTER_PORT")
        return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"],
                "LOCAL_RANK": env.get("SLURM_LOCALID", "0"), "MASTER_PORT": env.get("MASTER_PORT", "29500")}
    return {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": env.get("MASTER_PORT", str(free_port()))}


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def local_device() -> torch.device:
    """This rank's device: cuda:LOCAL_RANK (made current) when there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(get_local_rank())
        return torch.device("cuda", get_local_rank())
    return torch.device("cpu")


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate ``x`` from every rank along dim 0; the backward sums the gradient of the concatenation over
    ranks and returns this rank's slice, so each rank's local-rows loss contributes to every rank's inputs.
    (Written with all_reduce rather than reduce_scatter because gloo, the CPU backend, lacks the latter.)"""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        world = dist.get_world_size()
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: Tensor) -> Tensor:
    """x: [b, ...] (same b on every rank) -> [world*b, ...], differentiable."""
    if not is_initialized() or dist.get_world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x)


@torch.no_grad()
def gather(x: Tensor) -> Tensor:
    """x: [b, ...] (same shape on every rank) -> [world*b, ...], no gradient."""
    if not is_initialized() or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def gather_padded(x: Tensor, pad_value=0) -> Tensor:
    """x: [b, L_rank, ...] -> [world*b, max L, ...]: dim 1 padded with ``pad_value`` to the longest rank."""
    if not is_initialized() or dist.get_world_size() == 1:
        return x
    length = torch.tensor([x.shape[1]], device=x.device)
    longest = int(gather(length).max())
    if x.shape[1] < longest:
        pad_shape = (x.shape[0], longest - x.shape[1], *x.shape[2:])
        x = torch.cat([x, x.new_full(pad_shape, pad_value)], dim=1)
    return gather(x)


@dataclass
class TorchDist:
    """The distributed context handed to losses (contrastive, ITM): rank, world size and the gathers."""

    rank: int
    world_size: int

    @classmethod
    def current(cls) -> "TorchDist":
        return cls(rank=get_rank() if is_initialized() else 0, world_size=get_world_size() if is_initialized() else 1)

    def gather_with_grad(self, x: Tensor) -> Tensor:
        return gather_with_grad(x)

    def gather(self, x: Tensor) -> Tensor:
        return gather(x)

    def gather_padded(self, x: Tensor, pad_value=0) -> Tensor:
        return gather_padded(x, pad_value)


def all_reduce_mean(values: Tensor) -> Tensor:
    """Mean of a tensor over ranks (used only on log steps)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / dist.get_world_size()


def broadcast_object(obj, src: int = 0):
    """Broadcast a picklable object this process built itself (never data from files) from ``src``."""
    if not is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def sum_count_table(counts: Mapping[str, Mapping[str, int]], rows: Sequence[str], cols: Sequence[str],
                    device: Optional[torch.device] = None) -> dict[str, dict[str, int]]:
    """Sum a rows x cols table of integer counters over ranks; every cell is in the result, 0 included.

    Absent cells count as 0 and the layout is the caller's fixed order, the same on every rank, so the sum does
    not depend on which counters a rank has seen; one all_reduce of one int64 tensor. A counter outside the
    table is an error rather than silently dropped.
    """
    outside = sorted(f"{r}/{c}" for r, by_col in counts.items() for c in by_col if r not in rows or c not in cols)
    if outside:
        raise ValueError(f"counters outside the table: {outside}")
    table = [[int(counts.get(r, {}).get(c, 0)) for c in cols] for r in rows]
    if is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor(table, dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        table = t.tolist()
    return {r: dict(zip(cols, values)) for r, values in zip(rows, table)}


@torch.no_grad()
def gather_variable(x: Tensor) -> Tensor:
    """x: [n_rank, ...] with n differing between ranks -> [sum n, ...] in rank order (evaluation features)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = gather(n).tolist()
    longest = max(sizes)
    if x.shape[0] < longest:
        x = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))], dim=0)
    parts = gather(x).split(longest, dim=0)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0)


def all_reduce_max(values: Tensor) -> Tensor:
    """Elementwise max of a tensor over ranks (used only on log steps: peak memory, the slowest loader)."""
    if not is_initialized() or dist.get_world_size() == 1:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


class FlagVote:
    """Every rank learns whether any rank raised a host-side flag, one call late and without blocking a step.

    Each call starts an asynchronous max-reduce of this rank's flag and returns the result of the previous call's
    reduce, so every rank gets the same answer at the same call (the trainer calls it once per step) and a step
    never waits on it: the reduce had a whole step to finish. It runs over a gloo group on host tensors, so on
    GPUs (NCCL) it costs no device sync either. One process: the flag itself, at once.
    """

    def __init__(self):
        self.distributed = is_initialized() and dist.get_world_size() > 1
        self.group = None
        if self.distributed and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")
        self._pending = None

    def __call__(self, flag: bool) -> bool:
        if not self.distributed:
            return flag
        previous = self._collect()
        t = torch.tensor([int(flag)], dtype=torch.int32)
        self._pending = (dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group, async_op=True), t)
        return previous

    def _collect(self) -> bool:
        if self._pending is None:
            return False
        work, t = self._pending
        self._pending = None
        work.wait()
        return bool(t.item())

    def close(self) -> None:
        """Finish the reduce in flight (every rank calls it at the same point) so no collective outlives the
        loop that issued it."""
        if self.distributed:
            self._collect()


def all_ranks(flags: Sequence[bool]) -> list[bool]:
    """Elementwise: is each flag true on every rank? (one all_reduce; start-up and checkpoint checks only)"""
    if not is_initialized() or dist.get_world_size() == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int64, device=local_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return [bool(v) for v in t.tolist()]


def any_rank(flag: bool) -> bool:
    """Is ``flag`` true on some rank? (collective)"""
    return not all_ranks([not flag])[0]
