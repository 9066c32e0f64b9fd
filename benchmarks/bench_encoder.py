#!/usr/bin/env python
"""How much does visible-token-only encoding save? One training step (forward + backward) of image MIM, text MLM and
CMM, visible-only (the model's own forward) vs full-sequence, per preset and attention backend.

    python benchmarks/bench_encoder.py [--quick] [--presets tiny,base] [--backends sdpa,math] [--json PATH]

Full-sequence is the same model and the same decoder and loss work with mask ratio 0 at the encoder input: every
patch and token enters the encoder, masked ones replaced by a mask embedding (a learned vector plus the patch's
position for images, a [MASK] id for text), as BEiT/SimMIM/BERT encode. The encoder outputs at [CLS] and the
visible positions are then handed to the model's decoder exactly as visible-only encoding hands them, so the
decoders see identical inputs (1 + N patches, 1 + L tokens) and only the encoder's work differs.

Shapes come from the packaged recipes (stage-1 image stream, stage-2 text stream, stage-3 pair stream; CMM with
its 75 %/75 % masks); batch sizes are the recipes' on GPU and smaller on the CPU. Timings are medians of repeats
with the two variants interleaved. Also reported: the analytic FLOP ratio (momo_ds.model.flops), the AdamW step
time, and the step ratio with it (the "full training step" ratio); with the math backend the FLOPs torch's
FlopCounterMode counts, which must equal the analytic count on padded lengths.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from common import (device_peak, make_console, make_report, pick_device, print_table,  # noqa: E402
                    set_threads, synthetic_batch, time_interleaved, train_dtype, write_json)
from momo_ds.model.flops import MomoFlops, training_flops  # noqa: E402
from momo_ds.batch import ImageBatch, PairBatch, TextBatch  # noqa: E402
from momo_ds.config import load_recipe, packaged_recipe  # noqa: E402
from momo_ds.engine.cmga import cast_floats  # noqa: E402
from momo_ds.engine.optim import param_groups  # noqa: E402
from momo_ds.model import build_model  # noqa: E402
from momo_ds.model.attention import check_backend  # noqa: E402
from momo_ds.objectives import cmm_loss, mim_loss, mlm_loss  # noqa: E402
from momo_ds.objectives.task import PretrainTask  # noqa: E402

OBJECTIVE_STREAM = {"mim": (1, "image"), "mlm": (2, "text"), "cmm": (3, "pair")}  # recipe stage, stream kind
CPU_BATCH = {"tiny": 32, "base": 4, "large": 2}
TARGET = 3.5  # stage-1 (MIM) training step, visible-only vs full-sequence


class FullSequence(nn.Module):
    """Full-sequence encoding of a MoMo model (every patch and token enters the encoder, masked ones as [MASK]
    embeddings: BEiT / BERT style), followed by the model's own decoder and loss for ``objective``."""

    def __init__(self, model: nn.Module, objective: str):
        super().__init__()
        self.model, self.objective = model, objective
        self.mask_embed = nn.Parameter(torch.zeros(1, 1, model.cfg.embed_dim))  # BEiT/SimMIM-style [MASK] patch
        nn.init.normal_(self.mask_embed, std=0.02)
        self.mask_id = min(103, model.cfg.vocab_size - 1)  # BERT's [MASK]; any id costs the same

    def forward(self, batch) -> Tensor:
        m, cfg = self.model, self.model.cfg
        image = batch.image if isinstance(batch, PairBatch) else batch if isinstance(batch, ImageBatch) else None
        text = batch.text if isinstance(batch, PairBatch) else batch if isinstance(batch, TextBatch) else None
        b = (image.images if image is not None else text.input_ids).shape[0]
        keep_idx = [torch.zeros(b, 1, dtype=torch.long, device=m.type_ids.device)]  # [CLS] is output row 0
        image_embeds = ids = positions = text_mask = vis_key_mask = None
        if image is not None:
            x = m.image_embed(image.images)  # [B, N, D], every patch with its position
            masked = torch.zeros(b, cfg.num_patches, dtype=torch.bool, device=x.device)
            masked.scatter_(1, image.patch_masked, True)
            mask_patch = self.mask_embed.to(x.dtype) + m.image_embed.pos_embed.to(x.dtype)
            image_embeds = torch.where(masked[..., None], mask_patch, x)
            keep_idx.append(1 + image.patch_keep)
        n_prefix = 1 + (cfg.num_patches if image is not None else 0)
        if text is not None:
            ids, text_mask = text.full_ids, text.full_mask
            hit = torch.zeros_like(ids).scatter_add_(1, text.masked_positions, text.masked_valid.long()) > 0
            ids = torch.where(hit, torch.full_like(ids, self.mask_id), ids)
            positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids) * text_mask
            keep_idx.append(n_prefix + text.positions)
            n_vis_prefix = 1 + (image.patch_keep.shape[1] if image is not None else 0)
            vis_key_mask = torch.cat([torch.ones(b, n_vis_prefix, dtype=torch.bool, device=ids.device),
                                      text.attention_mask], dim=1)
        # the whole sequence [B, 1 + N + L, D], mask embeddings included
        h, _ = m.forward_features(ids=ids, positions=positions, text_mask=text_mask, image_embeds=image_embeds)
        idx = torch.cat(keep_idx, dim=1)
        h = torch.gather(h, 1, idx[..., None].expand(-1, -1, h.shape[-1]))  # [CLS, visible] as the decoder expects
        im = image if self.objective != "mlm" else None
        tx = text if self.objective != "mim" else None
        pixels, states = m.decoder(self.objective)(
            h, vis_key_mask, None if im is None else im.patch_keep, None if im is None else im.patch_masked,
            None if tx is None else tx.positions, None if tx is None else tx.masked_positions,
            None if tx is None else tx.masked_valid)
        if self.objective == "mim":
            return mim_loss(pixels, image.images, image.patch_masked, cfg.patch_size, cfg.norm_pix_loss)["mim_loss"]
        if self.objective == "mlm":
            return mlm_loss(m.lm_head(states), text.masked_ids, text.masked_valid)["mlm_loss"]
        terms = cmm_loss(pixels, image.images, image.patch_masked, cfg.patch_size, cfg.norm_pix_loss,
                         m.lm_head(states), text.masked_ids, text.masked_valid)
        return terms["cmm_image_loss"] + terms["cmm_text_loss"]


def full_lengths(cfg, batch, padded: bool) -> Tensor:
    """Encoder tokens per row of the full-sequence variant."""
    image = isinstance(batch, (ImageBatch, PairBatch))
    text = batch.text if isinstance(batch, PairBatch) else batch if isinstance(batch, TextBatch) else None
    n = 1 + (cfg.num_patches if image else 0)
    b = batch.batch_size
    if text is None:
        return torch.full((b,), n)
    return n + (torch.full((b,), text.full_ids.shape[1]) if padded else text.full_mask.sum(1).cpu())


def analytic(cfg, batch, objective: str, padded: bool = False) -> dict[str, float]:
    """Training FLOPs of both variants: same decoder and heads, encoder on visible vs all tokens."""
    vis = training_flops(cfg, batch, {objective: 1.0}, padded)
    full = dict(vis)
    full["encoder"] = 3 * MomoFlops(cfg).encoder(full_lengths(cfg, batch, padded))
    full["total"] = vis["total"] - vis["encoder"] + full["encoder"]
    return {"visible": vis["total"], "full": full["total"], "visible_encoder": vis["encoder"],
            "full_encoder": full["encoder"]}


def counted_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def available_backends(device: torch.device) -> list[str]:
    out = ["sdpa", "math"]
    try:
        check_backend("flash_varlen")
        if device.type == "cuda":
            out.append("flash_varlen")
    except ValueError:
        pass
    return out


def objective_stream(preset: str, objective: str, args, device):
    """The packaged recipe's stream that trains ``objective`` (stage 1 images, 2 texts, 3 pairs), with this run's
    batch size: --batch, 4 with --quick, the recipe's on a GPU, CPU_BATCH on the CPU."""
    stage, kind = OBJECTIVE_STREAM[objective]
    recipe = load_recipe(packaged_recipe(preset, stage))
    stream = next(s for s in recipe.data.streams if s.kind == kind)
    stream.batch_size = args.batch or (4 if args.quick else stream.batch_size if device.type == "cuda"
                                       else CPU_BATCH.get(preset, 4))
    return stream


def backward_step(params: list, loss_fn):
    """A callable that clears the gradients of ``params`` and runs forward + backward of ``loss_fn``."""
    def run():
        for p in params:
            p.grad = None
        loss_fn().backward()
    return run


def objective_row(preset: str, objective: str, backend: str, stream, timing: dict, t_opt: float, flops: dict,
                  flops_padded: dict, counted) -> dict:
    """One result row: both variants' medians and their ratios, with and without the AdamW step, and the FLOPs."""
    tv, tf = timing["visible"].median, timing["full"].median
    kind = stream.kind
    return {
        "preset": preset, "objective": objective, "backend": backend, "batch": stream.batch_size,
        "image_mask_ratio": stream.image_mask_ratio if kind != "text" else None,
        "text_mask_ratio": stream.text_mask_ratio if kind != "image" else None,
        "max_text_len": stream.max_text_len if kind != "image" else None,
        "visible_s": tv, "full_s": tf, "optimizer_s": t_opt,
        "time_ratio": tf / tv, "step_ratio_with_optimizer": (tf + t_opt) / (tv + t_opt),
        "time_ratio_of_minima": min(timing["full"].times) / min(timing["visible"].times),
        "flops_visible": flops["visible"], "flops_full": flops["full"],
        "flop_ratio": flops["full"] / flops["visible"],
        "encoder_flop_ratio": flops["full_encoder"] / flops["visible_encoder"],
        "flops_padded_visible": flops_padded["visible"], "flops_padded_full": flops_padded["full"],
        "flops_counted": counted,
        "visible_tflops_per_s": flops["visible"] / tv / 1e12, "full_tflops_per_s": flops["full"] / tf / 1e12,
        "samples_per_s_visible": stream.batch_size / tv, "samples_per_s_full": stream.batch_size / tf,
        "timings": {k: v.as_dict() for k, v in timing.items()},
    }


def run_objective(preset: str, objective: str, args, device, dtype, console) -> list[dict]:
    """Time the visible-only and full-sequence training steps of ``objective`` on one synthetic batch, once per
    attention backend -> a row per backend."""
    stream = objective_stream(preset, objective, args, device)
    torch.manual_seed(0)
    model = build_model(preset, decoders=[objective]).to(device=device, dtype=dtype)
    full = FullSequence(model, objective).to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    host = synthetic_batch(model.cfg, stream, gen, args.min_text_frac)
    batch = cast_floats(host, dtype, device)
    params = [p for p in full.parameters()]
    visible = backward_step(params, lambda: PretrainTask(model)(batch, {objective: 1.0})["loss"])
    full_seq = backward_step(params, lambda: full(batch))
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, fused=device.type == "cuda")
    visible()

    def opt_step():
        opt.step()

    t_opt = time_interleaved({"opt": opt_step}, device, 1, args.repeats)["opt"].median
    flops = analytic(model.cfg, host, objective)
    flops_padded = analytic(model.cfg, host, objective, padded=True)
    rows = []
    for backend in args.backends:
        model.set_attn_backend(backend)
        timing = time_interleaved({"visible": visible, "full": full_seq}, device, args.warmup, args.repeats)
        counted = None
        if backend == "math" and not args.no_flop_count:
            counted = {"visible": counted_flops(visible), "full": counted_flops(full_seq)}
        rows.append(objective_row(preset, objective, backend, stream, timing, t_opt, flops, flops_padded, counted))
        tv, tf = rows[-1]["visible_s"], rows[-1]["full_s"]
        console.print(f"  {preset} {objective} {backend}: visible {tv * 1e3:.1f} ms, full {tf * 1e3:.1f} ms "
                      f"(x{tf / tv:.2f}; FLOPs x{flops['full'] / flops['visible']:.2f})")
    del model, full, opt
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny preset, batch 4, 1 warm-up + 2 repeats")
    p.add_argument("--presets", default=None, help="comma list of tiny,base,large (default: tiny,base on CPU, "
                                                   "all three on GPU)")
    p.add_argument("--objectives", default="mim,mlm,cmm")
    p.add_argument("--backends", default=None, help="comma list of sdpa,math,flash_varlen (default: all available)")
    p.add_argument("--batch", type=int, default=None, help="batch size for every row (default: per preset)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 2 quick, 3 on CPU, 10 on GPU)")
    p.add_argument("--min-text-frac", type=float, default=0.5, help="text lengths uniform in [frac*L, L]")
    p.add_argument("--no-flop-count", action="store_true", help="skip the FlopCounterMode check (math backend)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (default 1 on the CPU, see common.set_threads)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    set_threads(args.threads, device)
    dtype = train_dtype(device, args.dtype)
    default_presets = "tiny" if args.quick else "tiny,base,large" if device.type == "cuda" else "tiny,base"
    presets = (args.presets or default_presets).split(",")
    args.backends = args.backends.split(",") if args.backends else available_backends(device)
    args.repeats = args.repeats or (2 if args.quick else 10 if device.type == "cuda" else 3)
    console = make_console()
    peak, peak_src = device_peak(device, dtype, quick=args.quick)
    console.print(f"device {device} {dtype}; peak {peak and peak / 1e12:.3g} TFLOP/s ({peak_src})")
    results = []
    for preset in presets:
        for objective in args.objectives.split(","):
            results += run_objective(preset, objective, args, device, dtype, console)
    cols = ["preset", "obj", "backend", "B", "visible ms", "full ms", "time x", "FLOP x", "enc FLOP x",
            "+AdamW x", "target", "vis TFLOP/s", "counted/analytic"]
    rows = []
    for r in results:
        check = None
        if r["flops_counted"]:
            check = f"{r['flops_counted']['visible'] / r['flops_padded_visible']:.3f}/" \
                    f"{r['flops_counted']['full'] / r['flops_padded_full']:.3f}"
        rows.append([r["preset"], r["objective"], r["backend"], r["batch"], r["visible_s"] * 1e3, r["full_s"] * 1e3,
                     r["time_ratio"], r["flop_ratio"], r["encoder_flop_ratio"], r["step_ratio_with_optimizer"],
                     f">= {TARGET}" if r["objective"] == "mim" else "-", r["visible_tflops_per_s"], check])
    print_table(console, f"visible-only vs full-sequence training step ({device}, {str(dtype)[6:]})", cols, rows,
                caption="x = full / visible: time (fwd+bwd), analytic FLOPs on real tokens (step, encoder only), "
                        "time with the AdamW step added. counted/analytic: FlopCounterMode vs analytic FLOPs on "
                        "padded tokens (math backend), visible/full")
    config = {"presets": presets, "objectives": args.objectives.split(","), "backends": args.backends,
              "device": str(device), "dtype": str(dtype), "warmup": args.warmup, "repeats": args.repeats,
              "min_text_frac": args.min_text_frac, "peak_flops": peak, "peak_source": peak_src, "target": TARGET,
              "full_sequence": "all patches/tokens enter the encoder (masked ones as a mask embedding); outputs "
                               "at [CLS] + visible positions go to the same decoder and loss"}
    write_json(args.json, make_report("bench_encoder", args, config, results), console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
