#!/usr/bin/env python
"""MoMo's stage-3 multimodal step vs FLAVA's pretraining step: same images, text length and batch.

    python benchmarks/bench_peers.py [--quick] [--presets tiny,base] [--batch N] [--json PATH]

MoMo: the stage-3 pair objectives (CMM 75 %/75 % + global contrastive + ITM), once per variant of VARIANTS
(the align ablation's names, benchmarks/ablations.py): ``full`` (contrastive/ITM on unmasked inputs, as FLAVA,
two ITM negatives per pair), ``masked_image`` (the CMM-visible patches with the whole caption, as FLIP),
``masked`` (exactly the CMM inputs), and with one ITM negative per pair ``mask50_1neg`` (a separate 50 % image
mask for contrastive/ITM) and ``mask75_1neg`` (the CMM-visible 25 %). FLAVA: ``transformers.FlavaForPreTraining``, random init, with its own losses (MMM image +
text, ITM, global contrastive; unimodal MIM/MLM are off for pairs in its forward), fed what its forward needs:
input_ids and the 15 %-masked input_ids_masked with mlm_labels, pixel_values with a random ~40 % bool_masked_pos
(BEiT/FLAVA's 75 of 196), codebook_pixel_values for its frozen DALL-E codebook (which computes the MIM labels
inside the step), and itm_labels with half the pairs mismatched (texts rolled by one).

Base preset: FlavaConfig() (ViT-B/16 image and BERT-base text encoders, 6-layer multimodal encoder) at 224 px vs
MoMo-Base. Tiny preset (the CPU default, and --quick): a FlavaConfig scaled to MoMo-tiny's width and depth (32 px,
patch 4, width 128, 4 layers, 2 multimodal layers, small codebook) - a like-for-like shape check, not FLAVA.

A step = zero_grad + forward + backward + AdamW step, plain PyTorch for both (fp32 on the CPU, bf16 autocast on a
GPU); the three variants are timed interleaved, medians of repeats. FLOPs per sample are counted with torch's
FlopCounterMode on one extra step (math attention for MoMo, FLAVA's eager attention).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import (count_params, make_console, make_report, pick_device, print_table, set_threads,  # noqa: E402
                    synthetic_batch, time_interleaved, train_dtype, write_json)
from momo_ds.model.flops import training_flops  # noqa: E402
from ablations import ALIGN_VARIANTS, parse_variant  # noqa: E402
from momo_ds.config import load_recipe, packaged_recipe  # noqa: E402
from momo_ds.data.masking import draw_patch_masks  # noqa: E402
from momo_ds.model import build_model  # noqa: E402
from momo_ds.objectives.task import PretrainTask  # noqa: E402

TARGET = 1.5  # MoMo samples/s over FLAVA's, for the stage-3 default
VARIANTS = ("full", "masked_image", "masked", "mask50_1neg", "mask75_1neg")
CPU_BATCH = {"tiny": 32, "base": 2}
FLAVA_IMAGE_MASK = 75 / 196  # BEiT / FLAVA masking generator: 75 of 196 patches
FLAVA_TEXT_MASK = 0.15


def scaled_flava_config(mcfg):
    """FLAVA at MoMo-tiny's shapes (width, depth, image and patch size, vocabulary)."""
    from transformers import FlavaConfig

    d, heads, layers = mcfg.embed_dim, mcfg.num_heads, mcfg.depth
    enc = dict(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * d)
    grid = mcfg.img_size // mcfg.patch_size
    return FlavaConfig(
        image_config=dict(enc, image_size=mcfg.img_size, patch_size=mcfg.patch_size, vocab_size=512),
        text_config=dict(enc, vocab_size=mcfg.vocab_size, max_position_embeddings=mcfg.max_text_len),
        multimodal_config=dict(enc, num_hidden_layers=max(1, layers // 2)),
        image_codebook_config=dict(hidden_size=16, vocab_size=512, num_groups=4, num_blocks_per_group=1),
        hidden_size=d, projection_dim=mcfg.proj_dim), grid * 8


def flava_inputs(images, full_ids, full_mask, grid: int, codebook_px: int, vocab: int, gen) -> dict:
    """What FlavaForPreTraining.forward needs for its pretraining losses on a batch of pairs."""
    b, n = images.shape[0], grid * grid
    mask_id = min(103, vocab - 1)  # BERT's [MASK]
    pick = (torch.rand(full_ids.shape, generator=gen) < FLAVA_TEXT_MASK) & full_mask
    pick[:, 0] |= ~pick.any(dim=1)  # at least one masked token per text
    itm = (torch.rand(b, generator=gen) < 0.5).long()
    ids = torch.where(itm[:, None].bool(), full_ids, full_ids.roll(1, dims=0))  # mismatched pairs: rolled texts
    mask = torch.where(itm[:, None].bool(), full_mask, full_mask.roll(1, dims=0))
    pick &= mask
    n_img = max(1, round(FLAVA_IMAGE_MASK * n))
    order = torch.rand(b, n, generator=gen).argsort(dim=1)
    bool_masked_pos = torch.zeros(b, n, dtype=torch.bool).scatter_(1, order[:, :n_img], True)
    return {"input_ids": ids, "input_ids_masked": torch.where(pick, torch.full_like(ids, mask_id), ids),
            "attention_mask": mask.long(), "mlm_labels": torch.where(pick, ids, torch.full_like(ids, -100)),
            "pixel_values": images, "bool_masked_pos": bool_masked_pos, "itm_labels": itm,
            "codebook_pixel_values": torch.rand(b, 3, codebook_px, codebook_px, generator=gen),
            "return_loss": True}


def counted_flops(fn) -> float:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:  # fused kernels are not counted
        fn()
    return float(fc.get_total_flops())


def pair_stream(preset: str, args, device):
    """(stage-3 recipe, its pair stream) with this run's batch size and text length and the pair objectives."""
    recipe = load_recipe(packaged_recipe(preset, 3))
    stream = next(s for s in recipe.data.streams if s.kind == "pair")
    stream.batch_size = args.batch or (4 if args.quick else stream.batch_size if device.type == "cuda"
                                       else CPU_BATCH.get(preset, 2))
    stream.max_text_len = args.text_len or stream.max_text_len
    stream.objectives = {"cmm": 1.0, "itc": 1.0, "itm": 1.0}
    return recipe, stream


def momo_variants(preset: str, recipe, device) -> tuple[dict, dict]:
    """({variant: MoMo model with the variant's model settings}, {variant: its stream settings}), seeded alike."""
    torch.manual_seed(0)
    momo, stream_sets = {}, {}
    for v in VARIANTS:
        model_sets, stream_sets[v], _ = parse_variant(ALIGN_VARIANTS[v])
        momo[v] = build_model(preset, decoders=["cmm"], **{**recipe.model, **model_sets}).to(device)
    return momo, stream_sets


def variant_batches(host, stream, mcfg, stream_sets: dict) -> dict:
    """{variant: host batch}: the same pairs and CMM masks for every variant; a variant with its own
    align_mask_ratio gets a separate contrastive/ITM patch mask (align_keep [B, kept])."""
    hosts = {v: host for v in VARIANTS}
    for v, sets in stream_sets.items():
        if sets.get("align_mask_ratio") is not None:
            keep = draw_patch_masks(stream.batch_size, mcfg.num_patches, sets["align_mask_ratio"],
                                    torch.Generator().manual_seed(1))[0]
            hosts[v] = dataclasses.replace(host, align_keep=keep)
    return hosts


def build_flava_peer(preset: str, args, mcfg, device):
    """(FlavaForPreTraining in train mode, its config, codebook pixel size, what the config is): FlavaConfig() for
    base (or --flava-config default), else scaled to MoMo-tiny; its image size must be MoMo's."""
    from transformers import FlavaConfig, FlavaForPreTraining

    if preset == "base" or args.flava_config == "default":
        fcfg, codebook_px = FlavaConfig(), 112
        flava_note = "FlavaConfig() defaults"
    else:
        fcfg, codebook_px = scaled_flava_config(mcfg)
        flava_note = "FlavaConfig scaled to MoMo-tiny's shapes (not FLAVA's size)"
    img_cfg = fcfg.image_config
    if img_cfg.image_size != mcfg.img_size:
        raise ValueError(f"FLAVA image size {img_cfg.image_size} != MoMo's {mcfg.img_size}")
    return FlavaForPreTraining(fcfg).to(device).train(), fcfg, codebook_px, flava_note


def trainer(model, loss_fn, device, autocast):
    """(full step: zero_grad + forward + backward + AdamW, forward + backward alone) of ``model``'s trainable
    parameters under ``autocast``."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn()
        loss.backward()
        opt.step()

    def fwd_bwd():
        with autocast():
            loss = loss_fn()
        loss.backward()
    return step, fwd_bwd


def flops_per_sample(fwd_bwd: dict, b: int, device, console) -> dict[str, float]:
    """{name: counted FLOPs per sample} of one forward + backward each; a count that runs out of memory is left
    out."""
    counted = {}
    for name, fn in fwd_bwd.items():
        try:
            counted[name] = counted_flops(fn) / b
        except torch.OutOfMemoryError:  # math attention materialises the scores; the count is optional
            console.print(f"  {name}: out of memory counting FLOPs (use --batch or --no-flop-count)")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return counted


def variant_results(steps: dict, timing: dict, b: int, counted: dict, analytic: dict) -> dict[str, dict]:
    """{name: step time, samples/s, speed-up over FLAVA, FLOPs per sample} for every timed model."""
    t_flava = timing["flava"].median
    variants = {}
    for name in steps:
        t = timing[name].median
        variants[name] = {"step_s": t, "samples_per_s": b / t, "speedup_vs_flava": t_flava / t,
                          "flops_per_sample_counted": counted.get(name), "timing": timing[name].as_dict()}
        if name.startswith("momo_"):
            variants[name]["flops_per_sample_analytic"] = analytic[name[5:]]
    variants["flava"]["codebook_s"] = timing["flava_codebook"].median
    return variants


def param_counts(momo: dict, flava) -> dict[str, int]:
    return {"momo_total": count_params(momo["full"]),
            "momo_exported_encoder": sum(v.numel() for v in momo["full"].export_state_dict().values()),
            "flava_total": count_params(flava), "flava_trainable": count_params(flava, True),
            "flava_codebook": count_params(flava.image_codebook) if flava.image_codebook else 0}


def run_preset(preset: str, args, device, console) -> dict:
    """Time every MoMo variant's pair step and FLAVA's, interleaved, on the same synthetic pairs -> a result row."""
    recipe, stream = pair_stream(preset, args, device)
    amp = device.type == "cuda" and train_dtype(device) == torch.bfloat16
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    momo, stream_sets = momo_variants(preset, recipe, device)
    mcfg = momo["full"].cfg
    gen = torch.Generator().manual_seed(0)
    host = synthetic_batch(mcfg, stream, gen, args.min_text_frac)
    hosts = variant_batches(host, stream, mcfg, stream_sets)
    batches = {v: h.to(device) for v, h in hosts.items()}
    flava, fcfg, codebook_px, flava_note = build_flava_peer(preset, args, mcfg, device)
    grid = fcfg.image_config.image_size // fcfg.image_config.patch_size
    inputs = flava_inputs(host.image.images, host.text.full_ids, host.text.full_mask, grid, codebook_px,
                          fcfg.text_config.vocab_size, gen)
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    objectives = stream.objectives
    steps, fwd_bwd = {}, {}
    for a, m in momo.items():
        steps[f"momo_{a}"], fwd_bwd[f"momo_{a}"] = trainer(
            m, lambda m=m, a=a: PretrainTask(m)(batches[a], objectives)["loss"], device, autocast)
    steps["flava"], fwd_bwd["flava"] = trainer(flava, lambda: flava(**inputs).loss, device, autocast)

    def codebook():
        with torch.no_grad(), autocast():
            flava.image_codebook.get_codebook_indices(inputs["codebook_pixel_values"])

    timing = time_interleaved({**steps, "flava_codebook": codebook}, device, args.warmup, args.repeats)
    b = stream.batch_size
    counted = {} if args.no_flop_count else flops_per_sample(fwd_bwd, b, device, console)
    analytic = {a: training_flops(m.cfg, hosts[a], objectives)["total"] / b for a, m in momo.items()}
    variants = variant_results(steps, timing, b, counted, analytic)
    row = {"preset": preset, "batch": b, "image_size": mcfg.img_size, "text_len": stream.max_text_len,
           "image_mask": {"momo": stream.image_mask_ratio, "flava": FLAVA_IMAGE_MASK},
           "text_mask": {"momo": stream.text_mask_ratio, "flava": FLAVA_TEXT_MASK}, "flava_config": flava_note,
           "autocast_bf16": amp, "variants": variants, "params": param_counts(momo, flava)}
    for name, v in variants.items():
        console.print(f"  {preset} {name}: {v['samples_per_s']:.2f} samples/s (x{v['speedup_vs_flava']:.2f} FLAVA)")
    del momo, flava
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: tiny preset + scaled FLAVA, batch 4, 1+2")
    p.add_argument("--presets", default=None, help="comma list of tiny,base (default: tiny quick, else both)")
    p.add_argument("--batch", type=int, default=None, help="pairs per step (default: recipe on GPU, 32/2 on CPU)")
    p.add_argument("--text-len", type=int, default=None, help="text length (default: the stage-3 pair recipe's)")
    p.add_argument("--flava-config", default="auto", choices=["auto", "default"],
                   help="auto: FlavaConfig() for base, scaled for tiny; default: FlavaConfig() always (224 px)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=None, help="default 2 quick, 3 CPU, 10 GPU")
    p.add_argument("--min-text-frac", type=float, default=0.5, help="text lengths uniform in [frac*L, L]")
    p.add_argument("--no-flop-count", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (default 1 on the CPU, see common.set_threads)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = pick_device(args.device)
    set_threads(args.threads, device)
    args.repeats = args.repeats or (2 if args.quick else 10 if device.type == "cuda" else 3)
    presets = (args.presets or ("tiny" if args.quick else "tiny,base")).split(",")
    console = make_console()
    results = [run_preset(preset, args, device, console) for preset in presets]
    cols = ["preset", "model", "B", "img px", "text len", "params M", "step ms", "samples/s", "vs FLAVA",
            "target", "GFLOP/sample"]
    rows = []
    for r in results:
        for name, v in r["variants"].items():
            params = r["params"]["momo_total"] if name.startswith("momo") else r["params"]["flava_trainable"]
            gflop = v["flops_per_sample_counted"]
            rows.append([r["preset"], name.replace("momo_", "MoMo align=") if name != "flava" else "FLAVA", r["batch"],
                         r["image_size"], r["text_len"], params / 1e6, v["step_s"] * 1e3, v["samples_per_s"],
                         v["speedup_vs_flava"], f">= {TARGET}" if name.startswith("momo") else "-",
                         gflop and gflop / 1e9])
    print_table(console, f"stage-3 pair training step: MoMo vs FLAVA ({device})", cols, rows,
                caption="step = fwd + bwd + AdamW; FLAVA params exclude its frozen codebook (which runs inside its "
                        "step); GFLOP/sample from FlopCounterMode; tiny = FLAVA scaled to MoMo-tiny shapes")
    config = {"presets": presets, "device": str(device), "warmup": args.warmup, "repeats": args.repeats,
              "batch": args.batch, "min_text_frac": args.min_text_frac, "target": TARGET,
              "momo_objectives": {"cmm": 1.0, "itc": 1.0, "itm": 1.0}}
    write_json(args.json, make_report("bench_peers", args, config, results), console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
