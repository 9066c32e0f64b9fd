#!/usr/bin/env python
"""FLAVA as the external reference for MoMo's stage 3: trained at the same FLOPs on the same synthetic data and
evaluated on the same held-out retrieval split.

    python benchmarks/flava_reference.py [--seeds 0 1 2] [--steps N] [--json PATH] [--out DIR] [--quick]

What trains: ``transformers.FlavaForPreTraining``, random init, with a FlavaConfig scaled to MoMo-tiny's shapes
(bench_peers.scaled_flava_config: width 128, 4 unimodal layers, 2 multimodal layers, 32 px images in 4 px
patches, the 512-entry vocabulary; the text position table gets one more slot for FLAVA's [CLS]). Plain PyTorch,
fp32 on the CPU, one optimizer step = one pair batch + one text batch, as MoMo's stage 3 (CMGA) does.

Data: the built-in synthetic dataset of each seed (momo_ds.data.make_synthetic, 4,000 samples per kind), read by
momo_ds's own stage loader with the packaged tiny stage-3 recipe: the ``pair`` (64, RandAugment) and ``text``
(64 windows of 32 tokens) streams on the train shards, the same seed, hence the same samples, order and
augmentation as MoMo's stage 3. The loader's masks are off (ratios 0): FLAVA draws its own on the unmasked
``full_ids`` and gets the tokenizer's [CLS] in front of every text (momo_ds ids carry no special tokens; FLAVA
reads its text embedding at position 0).

Losses, as FlavaForPreTraining.forward computes them from the inputs given (its own weights, all 1):
  pairs: global contrastive (projected [CLS] states of the unmasked image and caption, over the matched pairs),
         ITM (on the multimodal encoding of the masked inputs) and MMM-text (the masked caption tokens of the
         matched pairs, predicted from that multimodal encoding);
  text:  unimodal MLM (a text-only forward: input_ids_masked and mlm_labels, no pixels, no input_ids, so it runs
         the text encoder once and nothing else).
ITM negatives follow FLAVA's data pipeline (torchmultimodal's VLTransform, itm_probability 0.1): 10 % of the
pairs get another sample's caption. They pass their captions round among themselves, so that no caption is in
the batch twice: FLAVA keeps every caption of the batch as a contrastive candidate, and bench_peers.flava_inputs'
rolled captions (50 %, fine for timing) would put a copy of half the positives' own captions among their
negatives. Text masking is BERT's, as FLAVA's collators do it: 15 % of the tokens, 80 % of them [MASK] (the
synthetic WordPiece's id, not BERT's 103), 10 % a random word, 10 % unchanged.
MIM and MMM-image are off by default: their targets come from FLAVA's pretrained DALL-E codebook, which cannot be
had offline. Without a codebook the forward still demands MIM labels whenever it sees pixels, so it gets
all-ignored ones (-100) and an empty bool_masked_pos, and mim_weight = mmm_image_weight = 0 (the heads do not
run); its masked pass then encodes the unmasked image a second time. ``--with-codebook`` turns MMM-image on with
a random-init codebook (targets from random features: a cost check rather than a recipe): 75/196 of the patches
masked at random (FLAVA masks that share in blocks) and the images, mapped as FLAVA maps codebook pixels.

FLOP matching: the target is the budget at which the align ablation compares its variants (benchmarks/ablations.py):
160 tiny stage-3 steps with unmasked alignment inputs and two ITM negatives (its ``full`` variant, the recipe
before 2026-12-02), ``160 x ablations.stage3_flops(ALIGN_VARIANTS["full"])`` = 23.1 TFLOP of analytic training
FLOPs over every stream; ``--match-tflop`` overrides it, and the recorded 23.1 stands in when ablations.py cannot
be imported. Today's recipe spends the same on its 286 steps. One real FLAVA training step (forward and
backward of the pair and text batches, the first batches of the run) is counted with torch's FlopCounterMode
(bench_peers.counted_flops), and steps = round(target / step FLOPs). Both counts are matmul FLOPs; MoMo's counts
real text tokens of random-length texts, FLAVA's the padded batch it executes. MoMo's 23.1 TFLOP are stage 3
alone: its stages 1-2 (unimodal pretraining the stage-3 run starts from) are not counted, and FLAVA starts from
random init.

Optimisation: the recipe's (AdamW, lr 1e-3, betas 0.9/0.95, eps 1e-8, weight decay 0.05 except on biases,
norms, embeddings, [CLS]/mask tokens and the temperature; gradients clipped at 1.0; linear warm-up over the
recipe's share of the steps (10 %), then cosine to min_lr, scaled with --lr).

Evaluation, momo_ds.eval's own code on the seed's held-out pair split (momo_ds.eval.runner.evaluate_synthetic's
split, loader, tokenizer, batch and text length): zero-shot retrieval R@1/5/10 both ways
(momo_ds.eval.retrieval.evaluate_retrieval on FLAVA's L2-normalised projected [CLS] embeddings of the unmasked
image and caption, the states its contrastive loss trains) and held-out ITM balanced accuracy against a random
and a hard negative caption (momo_ds.eval.itm.evaluate_itm through FLAVA's ITM head on the unmasked pair).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_peers import FLAVA_IMAGE_MASK, FLAVA_TEXT_MASK, counted_flops  # noqa: E402
from common import count_params, make_console, make_report, print_table, set_threads, write_json  # noqa: E402
from flava_data import (IGNORE, ITM_NEGATIVES, StepInputs, TextIds, itm_negatives, mlm_targets,  # noqa: E402
                        pair_inputs, stage3_data)
from flava_model import build_flava, build_optimizer, evaluate, step_losses  # noqa: E402
from momo_ds.config import load_recipe, packaged_recipe  # noqa: E402
from momo_ds.data.rng import mix_seed  # noqa: E402

# the runner's names, and the FLAVA input helpers of flava_data that are reached through this module
__all__ = ["IGNORE", "LOSS_TERMS", "MOMO_STAGE3_TFLOP", "QUICK", "REFERENCE_STEPS", "REFERENCE_WARMUP", "TextIds",
           "flop_matched_steps", "itm_negatives", "main", "mlm_targets", "momo_target_flops", "pair_inputs",
           "parse_args", "run_seed", "summarize"]

MOMO_STAGE3_TFLOP = 23.1  # 160 tiny stage-3 steps of the align ablation's "full" variant
# The budget the align ablation compares at: its "full" variant for 160 steps with 16 warm-up steps (the tiny
# stage-3 recipe before 2026-12-02, whose FLOPs the recipe's 286 steps now spend); FLAVA warms up the same share.
REFERENCE_STEPS, REFERENCE_WARMUP = 160, 16
LOSS_TERMS = ("global_contrastive", "itm", "mmm_text", "mmm_image", "mlm")
QUICK = dict(num=256, steps=4, batch=16, text_batch=16, workers=0)


# ------------------------------------------------------------------------------------------------- FLOP target
def flop_matched_steps(target_flops: float, step_flops: float) -> int:
    """The number of steps whose training FLOPs come closest to ``target_flops`` (at least 1)."""
    if step_flops <= 0:
        raise ValueError(f"step FLOPs must be positive, got {step_flops}")
    return max(1, round(target_flops / step_flops))


def momo_target_flops(match_tflop: Optional[float], momo_steps: int) -> tuple[float, str]:
    """(training FLOPs of MoMo's tiny stage 3, where the number comes from)."""
    if match_tflop is not None:
        return match_tflop * 1e12, "--match-tflop"
    try:
        from ablations import ALIGN_VARIANTS, stage3_flops

        return (momo_steps * stage3_flops(ALIGN_VARIANTS["full"]),
                f"ablations.stage3_flops(ALIGN_VARIANTS['full']) x {momo_steps} steps")
    except Exception as e:  # ablations.py is being changed: the recorded value stands in
        return MOMO_STAGE3_TFLOP * 1e12, (f"recorded {MOMO_STAGE3_TFLOP} TFLOP (ablations_align_cpu2_2026-11-22.md); "
                                          f"ablations.stage3_flops() failed: {type(e).__name__}: {e}")


# ---------------------------------------------------------------------------------------------------- training
def train_step(flava, inputs: dict[str, dict], opt, sched, params: list, grad_clip: float) -> dict[str, float]:
    """One optimizer step on every stream's summed loss, gradients clipped -> the loss terms, grad norm and lr."""
    loss, terms = step_losses(flava, inputs)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    terms["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    terms["lr"] = sched.get_last_lr()[0]
    opt.step()
    sched.step()
    return terms


def train(flava, loader, first: dict, inputs_of: StepInputs, steps: int, optim: tuple, seed: int, args,
          console) -> tuple[list[dict], float]:
    """``steps`` training steps, the first on the already drawn ``first`` inputs; ``optim`` is (optimizer,
    scheduler, TrainConfig). Logs every --log-every steps -> (per-step loss terms, training seconds)."""
    opt, sched, train_cfg = optim
    params = [p for p in flava.parameters() if p.requires_grad]
    history, window_t, window_n = [], time.perf_counter(), 0
    t_train = time.perf_counter()
    for step in range(steps):
        inputs = first if step == 0 else inputs_of(loader.next())
        terms = train_step(flava, inputs, opt, sched, params, train_cfg.grad_clip)
        if not all(math.isfinite(v) for v in terms.values()):
            raise FloatingPointError(f"seed {seed} step {step}: non-finite loss {terms}")
        history.append({"step": step, **terms})
        window_n += args.batch
        if (step + 1) % args.log_every == 0 or step + 1 == steps:
            rate = window_n / (time.perf_counter() - window_t)
            shown = " ".join(f"{k} {terms[k]:.3f}" for k in (*LOSS_TERMS, "loss") if k in terms)
            console.print(f"seed {seed}: step {step + 1}/{steps} {shown} lr {terms['lr']:.2e} {rate:.1f} pairs/s",
                          highlight=False)
            window_t, window_n = time.perf_counter(), 0
    return history, time.perf_counter() - t_train


def seed_row(seed: int, flop_counts: dict, train_s: float, wall_s: float, ev: dict, history: list[dict], flava,
             args) -> dict:
    """A seed's result row: steps and FLOPs (``flop_counts``: steps, steps_flop_matched, step_flops,
    match_flops), times, held-out retrieval R@K and ITM accuracy, and the loss history."""
    ret, itm = ev["retrieval"], ev.get("itm", {})
    steps, step_flops = flop_counts["steps"], flop_counts["step_flops"]
    return {"seed": seed, **flop_counts, "train_tflop": steps * step_flops / 1e12, "train_s": train_s,
            "wall_s": wall_s,
            "tr_r1": ret["tr@1_pct"], "ir_r1": ret["ir@1_pct"], "tr_r5": ret["tr@5_pct"], "ir_r5": ret["ir@5_pct"],
            "tr_r10": ret["tr@10_pct"], "ir_r10": ret["ir@10_pct"],
            "r1": (ret["tr@1_pct"] + ret["ir@1_pct"]) / 2, "r10": (ret["tr@10_pct"] + ret["ir@10_pct"]) / 2,
            "itm_random_bacc": itm.get("itm_random_bacc_pct"), "itm_hard_bacc": itm.get("itm_hard_bacc_pct"),
            "retrieval": ret, "itm": itm or None, "first_losses": history[0], "final_losses": history[-1],
            "history": history[:: max(1, args.log_every // 2)] + history[-1:],
            "params_trainable": count_params(flava, True), "eval_pairs": ret["texts"]}


def run_seed(seed: int, args, target: float, console) -> dict:
    """Train FLAVA for one seed and evaluate it -> a result row."""
    from momo_ds.data import build_stage_loader, load_tokenizer

    t0 = time.perf_counter()
    data, info, recipe = stage3_data(Path(args.out), seed, args.num, args.batch, args.text_batch, args.workers)
    mcfg = recipe.model_config()
    ids = TextIds.load(info.tokenizer)
    torch.manual_seed(seed)
    flava, codebook_px = build_flava(mcfg, args.with_codebook)
    flava.train()
    gen = torch.Generator().manual_seed(mix_seed(seed, "flava_reference", "masks"))
    loader = build_stage_loader(data, tokenizer=load_tokenizer(info.tokenizer), patch_size=mcfg.patch_size)
    inputs_of = StepInputs(mcfg.img_size // mcfg.patch_size, codebook_px, ids, gen, args.itm_negatives,
                           args.with_codebook)
    first = inputs_of(loader.next())
    step_flops = counted_flops(lambda: step_losses(flava, first)[0].backward())
    flava.zero_grad(set_to_none=True)
    matched = flop_matched_steps(target, step_flops)
    steps = args.steps or matched
    reference = dataclasses.replace(recipe.train, max_steps=REFERENCE_STEPS, warmup_steps=REFERENCE_WARMUP)
    optim = build_optimizer(flava, reference, steps, args.lr)
    console.print(f"seed {seed}: FLAVA {count_params(flava, True) / 1e6:.2f}M trainable params, "
                  f"{step_flops / 1e9:.1f} GFLOP/step (counted) -> {matched} FLOP-matched steps; training {steps}")
    history, train_s = train(flava, loader, first, inputs_of, steps, optim, seed, args, console)
    loader.close()
    ev = evaluate(flava, info, ids, mcfg, itm=not args.no_itm)
    flop_counts = {"steps": steps, "steps_flop_matched": matched, "step_flops": step_flops, "match_flops": target}
    row = seed_row(seed, flop_counts, train_s, time.perf_counter() - t0, ev, history, flava, args)
    console.print(f"seed {seed}: R@1 TR/IR {row['tr_r1']:.1f}/{row['ir_r1']:.1f}, R@10 TR/IR "
                  f"{row['tr_r10']:.1f}/{row['ir_r10']:.1f} ({ev['retrieval']['images']:.0f} images), ITM random "
                  f"{row['itm_random_bacc']}, {row['wall_s']:.0f} s", highlight=False)
    return row


def summarize(rows: list[dict]) -> dict:
    """Mean and spread (max - min) over seeds of the retrieval and ITM numbers."""
    out = {"seeds": [r["seed"] for r in rows]}
    for k in ("r1", "r10", "tr_r1", "ir_r1", "tr_r10", "ir_r10", "itm_random_bacc", "itm_hard_bacc",
              "train_tflop", "wall_s"):
        vals = [r[k] for r in rows if r.get(k) is not None]
        if vals:
            out[k] = {"mean": statistics.fmean(vals), "spread": max(vals) - min(vals)}
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=None, help="training steps (default: FLOP-matched to MoMo's stage 3)")
    p.add_argument("--match-tflop", type=float, default=None,
                   help=f"FLOP target in TFLOP (default: the align ablation's full variant x {REFERENCE_STEPS} steps, "
                        f"else {MOMO_STAGE3_TFLOP})")
    p.add_argument("--num", type=int, default=4000, help="synthetic samples per kind (train split)")
    p.add_argument("--batch", type=int, default=64, help="pairs per step (the recipe's 64)")
    p.add_argument("--text-batch", type=int, default=64, help="texts per step (the recipe's 64; 0: no text MLM)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's 1e-3)")
    p.add_argument("--itm-negatives", type=float, default=ITM_NEGATIVES,
                   help="share of pairs whose caption is swapped for ITM (FLAVA's itm_probability)")
    p.add_argument("--with-codebook", action="store_true",
                   help="MMM-image with a random-init codebook (off: no MIM/MMM-image, see the docstring)")
    p.add_argument("--no-itm", action="store_true", help="skip the held-out ITM evaluation")
    p.add_argument("--workers", type=int, default=None, help="loader workers per stream (default: the recipe's)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default 1, see common.set_threads)")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--out", default="runs/flava_reference", help="where the synthetic datasets go")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK['num']} samples, {QUICK['steps']} steps, batches of {QUICK['batch']}")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        given = {k: v for k, v in vars(p.parse_args([])).items() if getattr(args, k) != v}
        for k, v in QUICK.items():
            if k not in given:
                setattr(args, k, v)
        args.log_every = min(args.log_every, 2)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads, torch.device("cpu"))
    recipe = load_recipe(packaged_recipe("tiny", 3))
    args.lr = args.lr or recipe.train.lr
    console = make_console()
    target, source = momo_target_flops(args.match_tflop, REFERENCE_STEPS)
    console.print(f"FLOP target {target / 1e12:.2f} TFLOP ({source})", highlight=False)
    rows = [run_seed(seed, args, target, console) for seed in args.seeds]
    cols = ["seed", "steps", "train TFLOP", "R@1 TR", "R@1 IR", "R@10 TR", "R@10 IR", "ITM bacc rnd/hard",
            "train s", "wall s"]
    table = [[r["seed"], r["steps"], r["train_tflop"], r["tr_r1"], r["ir_r1"], r["tr_r10"], r["ir_r10"],
              "-" if r["itm_random_bacc"] is None else f"{r['itm_random_bacc']:.1f}/{r['itm_hard_bacc']:.1f}",
              r["train_s"], r["wall_s"]] for r in rows]
    print_table(console, "FLAVA (scaled to MoMo-tiny) on MoMo's tiny stage-3 data: held-out retrieval", cols, table,
                caption=f"{rows[0]['eval_pairs']:.0f} held-out pairs; R@K in %; FLOP target "
                        f"{target / 1e12:.1f} TFLOP = MoMo tiny stage 3 ({source})")
    summary = summarize(rows)
    ms = lambda k: f"{summary[k]['mean']:.1f} ± {summary[k]['spread']:.1f}"  # noqa: E731
    console.print(f"R@10 mean(TR, IR) {ms('r10')} (TR {ms('tr_r10')}, IR {ms('ir_r10')}); R@1 {ms('r1')}; "
                  f"mean ± spread over seeds {summary['seeds']}", highlight=False)
    losses = [t for t in LOSS_TERMS if not (t == "mmm_image" and not args.with_codebook)
              and not (t == "mlm" and args.text_batch == 0)]
    config = {"args": vars(args), "flop_target": target, "flop_target_source": source, "losses": losses,
              "preset": "tiny", "recipe": str(packaged_recipe("tiny", 3)), "flava_image_mask": FLAVA_IMAGE_MASK
              if args.with_codebook else 0.0, "flava_text_mask": FLAVA_TEXT_MASK}
    write_json(args.json, make_report("flava_reference", args, config, rows, summary=summary), console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
