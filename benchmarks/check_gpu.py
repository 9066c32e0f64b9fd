#!/usr/bin/env python
"""Do the fast paths run, and do they agree with the reference? SDPA flash / memory-efficient kernels, bf16,
DeepSpeed FusedAdam and (when installed) flash-attn's varlen kernel, each against fp32 math on the same inputs.

    python benchmarks/check_gpu.py [--preset base] [--json PATH] [--quick]

Checks (each "ok", "FAIL: why" or "skipped: why"; exit status 1 when any fails):
  sdpa_flash      image-only encoding (no padding mask) with SDPA restricted to the flash kernel, bf16, vs the
                  fp32 math backend: the kernel must be selectable and the [CLS] features must agree
  sdpa_efficient  joint image+text encoding (boolean key-padding mask) restricted to the memory-efficient kernel
  flash_varlen    the same joint encoding through ``attn_backend=flash_varlen`` (flash-attn installed only)
  bf16_losses     every stage-3 pair objective under bf16 autocast vs fp32: finite, relative difference
  fused_adam      the trainer's GPU optimizer is DeepSpeed FusedAdam (not the fallback) and one step from the
                  same gradients matches torch AdamW
On a CPU only the checks that mean something there run (flash kernel of the CPU SDPA, bf16, AdamW); the rest
are skipped, so ``--quick`` doubles as a smoke test.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from common import make_console, make_report, pick_device, print_table, write_json  # noqa: E402
from momo_ds.config import TrainConfig  # noqa: E402
from momo_ds.engine.optim import build_optimizer, param_groups  # noqa: E402
from momo_ds.data.collate import mask_pairs  # noqa: E402
from momo_ds.model import build_model  # noqa: E402
from momo_ds.objectives.task import PretrainTask  # noqa: E402

# bf16 has an 8-bit mantissa: through 12+ blocks features drift by a few 1e-2 relative to fp32
FEATURE_RTOL = 5e-2
LOSS_RTOL = 5e-2
ADAM_ATOL = 1e-5


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (a scale-free distance between a fast path's output and the reference)."""
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def attempt(fn: Callable[[], str]) -> str:
    try:
        return fn()
    except Exception as e:  # a kernel that cannot be selected raises RuntimeError("No available kernel...")
        return f"FAIL: {type(e).__name__}: {str(e).splitlines()[0][:160]}"


PAIR_OBJECTIVES = {"cmm": 1.0, "itc": 1.0, "itm": 1.0}  # every stage-3 pair objective


@dataclass
class Reference:
    """What every check compares against: the fp32 math-backend model, one batch of synthetic inputs on the device
    (images [B, 3, H, W], padded ids and mask [B, L], the masked PairBatch) and the reference [CLS] features [B, D]
    of the image-only and joint encodings. ``gen`` is the inputs' generator, drawn from again by later checks."""

    preset: str
    device: torch.device
    model: torch.nn.Module
    gen: torch.Generator
    images: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor
    pair: object
    fast_dtype: torch.dtype
    image_cls: torch.Tensor
    joint_cls: torch.Tensor

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def build_reference(preset: str, b: int, device: torch.device, length: int = 40) -> Reference:
    """Seeded reference model and inputs: ``b`` random images, texts of ``length // 2`` to ``length`` tokens, and
    their 75 %/75 % masked pair batch; the fast dtype is bf16 where the device has it, else fp16."""
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    ref = build_model(preset, attn_backend="math").to(device).eval()
    cfg = ref.cfg
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(b, 3, cfg.img_size, cfg.img_size, generator=gen)
    lengths = torch.randint(length // 2, length + 1, (b,), generator=gen)
    mask = torch.arange(length)[None] < lengths[:, None]
    ids = torch.randint(1, cfg.vocab_size, (b, length), generator=gen).masked_fill(~mask, 0)
    pair = mask_pairs(images, ids, mask, cfg.patch_size, 0.75, 0.75, generator=gen).to(device)
    images, ids, mask = images.to(device), ids.to(device), mask.to(device)
    fast_dtype = torch.bfloat16 if (not cuda or torch.cuda.is_bf16_supported()) else torch.float16
    with torch.no_grad():
        ref_image = ref.encode_image(images)[:, 0]
        ref_joint = ref.encode_pair(images, ids, attention_mask=mask)[0][:, 0]
    return Reference(preset, device, ref, gen, images, ids, mask, pair, fast_dtype, ref_image, ref_joint)


def fast_model(ref: Reference, backend: str):
    """The reference's weights in the fast dtype, with attention through ``backend``."""
    m = build_model(ref.preset, attn_backend=backend)
    m.load_state_dict(ref.model.state_dict())
    return m.to(ref.device, ref.fast_dtype).eval()


def feature_status(d: float) -> str:
    return "ok" if d < FEATURE_RTOL else f"FAIL: relative difference {d:.3g} >= {FEATURE_RTOL}"


def sdpa_check(ref: Reference, kernel: SDPBackend, joint: bool, measured: dict) -> str:
    """SDPA restricted to one kernel (selection fails loudly if the kernel cannot take these inputs): the image-only
    or joint [CLS] features vs the reference's; the difference goes to ``measured[kernel.name]``."""
    m = fast_model(ref, "sdpa")
    with torch.no_grad(), sdpa_kernel(kernel):
        out = (m.encode_pair(ref.images.to(ref.fast_dtype), ref.ids, attention_mask=ref.mask)[0][:, 0] if joint
               else m.encode_image(ref.images.to(ref.fast_dtype))[:, 0])
    d = rel_diff(out, ref.joint_cls if joint else ref.image_cls)
    measured[kernel.name] = d
    return feature_status(d)


def varlen_check(ref: Reference, measured: dict) -> str:
    """The joint encoding through flash-attn's varlen kernel vs the reference's [CLS] features."""
    m = fast_model(ref, "flash_varlen")
    with torch.no_grad():
        out = m.encode_pair(ref.images.to(ref.fast_dtype), ref.ids, attention_mask=ref.mask)[0][:, 0]
    d = rel_diff(out, ref.joint_cls)
    measured["flash_varlen"] = d
    return feature_status(d)


def bf16_check(ref: Reference, measured: dict) -> str:
    """Every pair objective's loss in fp32 and under bf16 autocast, same weights, batch and ITM draws: finite and
    within LOSS_RTOL."""
    device = ref.device
    m = build_model(ref.preset).to(device).train()
    m.load_state_dict(ref.model.state_dict())
    losses = {}
    for name, ctx in (("fp32", nullcontext()), ("bf16", torch.autocast(device.type, dtype=torch.bfloat16))):
        with torch.no_grad(), ctx:
            out = PretrainTask(m)(ref.pair, PAIR_OBJECTIVES, generator=torch.Generator(device=device).manual_seed(1))
        losses[name] = {k: float(v) for k, v in out.items() if k.endswith("loss")}
    measured["losses"] = losses
    worst = max(abs(losses["bf16"][k] - v) / max(abs(v), 1e-6) for k, v in losses["fp32"].items())
    measured["loss_rel_diff"] = worst
    if not all(torch.isfinite(torch.tensor(list(losses["bf16"].values())))):
        return "FAIL: non-finite bf16 loss"
    return "ok" if worst < LOSS_RTOL else f"FAIL: relative loss difference {worst:.3g} >= {LOSS_RTOL}"


def adam_check(ref: Reference, measured: dict) -> str:
    """One step of the trainer's optimizer (FusedAdam on a GPU) and of torch AdamW from the same random gradients:
    the parameters must agree within ADAM_ATOL, and on a GPU the trainer must not have fallen back."""
    device = ref.device
    models = [build_model(ref.preset).to(device) for _ in range(2)]
    for m in models:
        m.load_state_dict(ref.model.state_dict())
    grads = [torch.randn(q.shape, generator=ref.gen).to(device) * 1e-2 for q in models[0].parameters()]
    train_cfg = TrainConfig()
    fast = build_optimizer(models[0], train_cfg, device.type)
    plain = torch.optim.AdamW(param_groups(models[1], train_cfg.weight_decay), lr=train_cfg.lr,
                              betas=tuple(train_cfg.betas), eps=1e-8)
    for m, opt in ((models[0], fast), (models[1], plain)):
        for q, g in zip(m.parameters(), grads):
            q.grad = g.clone()
        opt.step()
    with torch.no_grad():
        d = max(float((a - c).abs().max()) for a, c in zip(models[0].parameters(), models[1].parameters()))
    measured["adam_max_abs_diff"] = d
    measured["optimizer"] = type(fast).__module__ + "." + type(fast).__name__
    if ref.cuda and "FusedAdam" not in type(fast).__name__:
        return f"FAIL: the trainer fell back to {measured['optimizer']} (FusedAdam did not build)"
    return "ok" if d < ADAM_ATOL else f"FAIL: max parameter difference {d:.3g} >= {ADAM_ATOL}"


def have_flash_attn(cuda: bool) -> bool:
    """flash-attn importable, and a GPU to run it on."""
    try:
        import flash_attn  # noqa: F401, PLC0415
        return cuda
    except Exception:
        return False


def run_checks(ref: Reference) -> dict[str, dict]:
    """{check name: {"status": ..., measured values}} in the order of the module docstring; a check that does not
    apply on this device is "skipped: why"."""
    results: dict[str, dict] = {}
    measured: dict = {}  # values the checks measure, for their rows

    def record(name: str, status: str, **extra) -> None:
        results[name] = {"status": status, **extra}

    record("sdpa_flash", attempt(lambda: sdpa_check(ref, SDPBackend.FLASH_ATTENTION, False, measured)),
           rel_diff=measured.get("FLASH_ATTENTION"), dtype=str(ref.fast_dtype))
    if ref.cuda:
        record("sdpa_efficient", attempt(lambda: sdpa_check(ref, SDPBackend.EFFICIENT_ATTENTION, True, measured)),
               rel_diff=measured.get("EFFICIENT_ATTENTION"), dtype=str(ref.fast_dtype))
    else:
        record("sdpa_efficient", "skipped: the CPU has no memory-efficient SDPA kernel")
    if have_flash_attn(ref.cuda):
        record("flash_varlen", attempt(lambda: varlen_check(ref, measured)), rel_diff=measured.get("flash_varlen"))
    else:
        record("flash_varlen", "skipped: flash-attn not installed" if ref.cuda else "skipped: needs a GPU")
    record("bf16_losses", attempt(lambda: bf16_check(ref, measured)), rel_diff=measured.get("loss_rel_diff"),
           losses=measured.get("losses"))
    record("fused_adam" if ref.cuda else "adamw_cpu", attempt(lambda: adam_check(ref, measured)),
           optimizer=measured.get("optimizer"), max_abs_diff=measured.get("adam_max_abs_diff"))
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help="model preset (default: base on GPU, tiny on CPU / --quick)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="tiny preset, batch 4")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = pick_device(args.device)
    preset = args.preset or ("base" if device.type == "cuda" and not args.quick else "tiny")
    b = 4 if args.quick else args.batch
    console = make_console()
    ref = build_reference(preset, b, device)
    results = run_checks(ref)
    rows = [[name, r["status"], r.get("rel_diff", r.get("max_abs_diff"))] for name, r in results.items()]
    print_table(console, f"fast paths vs fp32 math reference ({device}, {preset}, batch {b})",
                ["check", "status", "rel. diff / max abs diff"], rows)
    config = {"preset": preset, "batch": b, "device": str(device), "fast_dtype": str(ref.fast_dtype),
              "tolerances": {"feature_rtol": FEATURE_RTOL, "loss_rtol": LOSS_RTOL, "adam_atol": ADAM_ATOL}}
    write_json(args.json, make_report("check_gpu", args, config, results), console)
    return 1 if any(r["status"].startswith("FAIL") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
