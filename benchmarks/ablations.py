#!/usr/bin/env python
"""Ablations in miniature on the synthetic data (tiny preset, CPU): the paper's Table 6 and the align-input choice.

--study stage2 (the paper's Table 6): from one shared stage-1 run, stage 2 is trained four ways:
  cmga           images + text in every step (CMGA), separate decoders   (the MoMo recipe)
  text_only      stage 2 without simultaneous image data                 (paper: ImageNet LE 52.9 -> 9.5)
  alternating    images and text in alternate optimizer steps (2x steps, same samples), no CMGA
  shared_decoder one decoder trunk for MIM and MLM
Metrics: linear-probe top-1 on held-out images (16 classes; chance printed beside it), held-out retrieval R@1
(chance 0.2 %: stage 2 has no alignment objective, so it stays near chance), and the final MIM / MLM losses.

--study align (what contrastive and ITM see, ``model.align_inputs``): from one shared stage-1 + stage-2 run,
stage 3 is trained with ``full``, ``masked_image`` and ``masked`` at the same number of steps, and the two
cheaper modes again at the same training FLOPs as ``full`` (steps scaled by the analytic FLOP ratio of a stage-3
step, benchmarks/common.training_flops). Metrics: held-out retrieval R@1/R@10 (mean of TR and IR) and the probe.

    python benchmarks/ablations.py --study stage2 --json out/ablations.json [--seeds 0 1] [--quick]
    python benchmarks/ablations.py --study align --steps 120 --json out/align.json
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXT_ONLY = ("data.streams=[{name: text, kind: text, objectives: {mlm: 1.0}, batch_size: 64, "
             "text_mask_ratio: 0.15, max_text_len: 32}]")
VARIANTS = {
    "cmga": [],
    "text_only": [TEXT_ONLY],
    "alternating": ["train.update=alternating"],
    "shared_decoder": ["model.shared_decoder=true"],
}


def pretrain(out: Path, stage: int, steps: int, sets: list[str], log: Path) -> dict:
    cmd = [sys.executable, "tools/pretrain.py", "--ds_config", "ds_configs/zero2.json", "--stage", str(stage),
           "--out", str(out), "--max_steps", str(steps), "--no_eval", "--set", *sets]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    done = out / f"stage{stage}" / "DONE.json"
    if not done.is_file():
        raise SystemExit(f"run failed ({' '.join(cmd)}); log: {log}")
    return {**json.loads(done.read_text()), "run_s": time.perf_counter() - t}


def evaluate(encoder: Path, data_dir: Path, num: int, seed: int) -> dict:
    from momo_ds.data import make_synthetic
    from momo_ds.eval.runner import evaluate_synthetic

    r = evaluate_synthetic(encoder, make_synthetic(data_dir, num=num, image_size=32, seed=seed))
    ret = r["retrieval"]
    return {"probe_top1": r["linear_probe"]["top1"], "probe_chance": r["linear_probe"]["chance_top1"],
            "retrieval_r1": (ret["tr@1_pct"] + ret["ir@1_pct"]) / 2,
            "retrieval_r10": (ret["tr@10_pct"] + ret["ir@10_pct"]) / 2}


def stage3_flops(align: str) -> float:
    """Analytic training FLOPs of one tiny stage-3 step (every stream of the packaged recipe) with ``align``."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import synthetic_batch, training_flops

    from momo_ds.config import load_recipe, packaged_recipe
    from momo_ds.model import resolve_config

    recipe = load_recipe(packaged_recipe("tiny", 3))
    cfg = resolve_config("tiny", align_inputs=align)
    return sum(training_flops(cfg, synthetic_batch(cfg, s, torch.Generator().manual_seed(0)), s.objectives)["total"]
               for s in recipe.data.streams)


def stage2_study(seed: int, args, common: list[str]) -> list[dict]:
    out = Path(args.out) / "stage2" / f"seed{seed}"
    print(f"[ablations] seed {seed}: stage 1 ({args.steps} steps)", flush=True)
    pretrain(out / "base", 1, args.steps, common, out / "stage1.log")
    init = out / "base" / "stage1" / "shared_fp32.safetensors"
    rows = []
    for name, sets in VARIANTS.items():
        steps = args.steps * (2 if name == "alternating" else 1)
        vdir = out / name
        print(f"[ablations] seed {seed}: stage 2 {name} ({steps} steps)", flush=True)
        done = pretrain(vdir, 2, steps, [*common, f"train.init_from={init}", *sets], out / f"{name}.log")
        final = done["final"]
        rows.append({"seed": seed, "variant": name, "steps": steps, "wall_s": round(done["wall_s"], 1),
                     "mim_loss": final.get("image/mim_loss"), "mlm_loss": final.get("text/mlm_loss"),
                     **evaluate(vdir / "stage2" / "encoder.safetensors", vdir / "data", args.num, seed)})
    return rows


def align_study(seed: int, args, common: list[str]) -> list[dict]:
    out = Path(args.out) / "align" / f"seed{seed}"
    base = out / "base"
    init = Path(args.stage2) if args.stage2 else base / "stage2" / "shared_fp32.safetensors"
    for stage in () if args.stage2 else (1, 2):
        print(f"[ablations] seed {seed}: stage {stage} ({args.steps} steps)", flush=True)
        pretrain(base, stage, args.steps, common, out / f"stage{stage}.log")
    flops = {a: stage3_flops(a) for a in ("full", "masked_image", "masked")}
    runs = [(a, args.steps) for a in flops]
    runs += [(a, round(args.steps * flops["full"] / flops[a])) for a in ("masked_image", "masked")]
    rows = []
    for align, steps in runs:
        name = f"{align}@{steps}"
        vdir = out / name
        print(f"[ablations] seed {seed}: stage 3 align_inputs={align} ({steps} steps)", flush=True)
        done = pretrain(vdir, 3, steps, [*common, f"train.init_from={init}", f"model.align_inputs={align}"],
                        out / f"{name}.log")
        final = done["final"]
        rows.append({"seed": seed, "variant": align, "steps": steps, "wall_s": round(done["wall_s"], 1),
                     "train_gflop": round(steps * flops[align] / 1e9, 1), "itc_acc": final.get("pair/itc_acc"),
                     **evaluate(vdir / "stage3" / "encoder.safetensors", vdir / "data", args.num, seed)})
    return rows


STUDIES = {"stage2": stage2_study, "align": align_study}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", choices=sorted(STUDIES), default="stage2")
    p.add_argument("--out", default="runs/ablations")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=150, help="optimizer steps of each stage (stage2: of stage 1 and of "
                                                          "each stage-2 variant; align: of stages 1 and 2 and of "
                                                          "the step-matched stage-3 runs)")
    p.add_argument("--num", type=int, default=4000, help="synthetic samples per kind")
    p.add_argument("--stage2", default=None, help="align study: start stage 3 from this stage-2 "
                                                   "shared_fp32.safetensors instead of training stages 1-2")
    p.add_argument("--quick", action="store_true", help="10 steps, 512 samples: a smoke run")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.quick:
        args.steps, args.num = 10, 512
    rows = []
    for seed in args.seeds:
        common = [f"data.seed={seed}", f"train.seed={seed}", f"data.synthetic_num={args.num}"]
        rows += STUDIES[args.study](seed, args, common)
    print_table(args.study, rows)
    if args.json:
        import torch

        meta = {"machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count()},
                "versions": {"torch": torch.__version__}, "study": args.study, "steps": args.steps,
                "num": args.num, "seeds": args.seeds, "preset": "tiny"}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


def print_table(study: str, rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    cols = {"stage2": [("seed", "seed"), ("variant", "variant"), ("steps", "steps"), ("probe top-1 %", "probe_top1"),
                       ("chance %", "probe_chance"), ("retrieval R@1 %", "retrieval_r1"), ("MIM loss", "mim_loss"),
                       ("MLM loss", "mlm_loss"), ("wall s", "wall_s")],
            "align": [("seed", "seed"), ("align_inputs", "variant"), ("steps", "steps"),
                      ("train GFLOP", "train_gflop"), ("R@1 %", "retrieval_r1"), ("R@10 %", "retrieval_r10"),
                      ("probe top-1 %", "probe_top1"), ("final ITC acc", "itc_acc"), ("wall s", "wall_s")]}[study]
    t = Table(title=f"{study} ablation (tiny preset, synthetic data)")
    for title, _ in cols:
        t.add_column(title)
    fmt = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    for r in rows:
        t.add_row(*(fmt(r.get(key)) for _, key in cols))
    Console(width=160).print(t)


if __name__ == "__main__":
    sys.exit(main())
