"""Derived seeds and isolation of the global RNGs used by augmentation libraries.

Every random choice of the data side is a pure function of a seed derived from (data seed, stream, epoch, loader
slot, sample index): a restored loader regenerates exactly the same batches. torchvision and timm transforms draw
from the *global* torch/Python/NumPy generators, so augmentation runs inside :func:`isolated_global_rng`, which
seeds them per sample and restores the caller's state afterwards (this matters with ``num_workers=0``, where the
loader runs in the trainer's process).
"""
from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager
from typing import Iterator, Union

import numpy as np
import torch


def mix_seed(*parts: Union[int, str]) -> int:
    """A 63-bit seed that depends on every part (stable across processes and Python versions)."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\x1f")
    return int.from_bytes(h.digest(), "little") >> 1


@contextmanager
def isolated_global_rng(seed: int) -> Iterator[None]:
    """Run a block with the CPU torch generator, Python's ``random`` and NumPy's legacy global generator seeded
    from ``seed``, and give the caller its own streams back afterwards (the trainer's CUDA generators are never
    touched)."""
    t_state = torch.default_generator.get_state()
    p_state = random.getstate()
    n_state = np.random.get_state()
    try:
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)
        yield
    finally:
        torch.default_generator.set_state(t_state)
        random.setstate(p_state)
        np.random.set_state(n_state)


def torch_generator(seed: int) -> torch.Generator:
    """A fresh CPU generator (used for vectorised mask drawing, one per batch)."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g
