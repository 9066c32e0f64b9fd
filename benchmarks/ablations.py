#!/usr/bin/env python
"""The paper's Table 6 in miniature on the synthetic data (tiny preset, CPU).

From one shared stage-1 run, stage 2 is trained four ways and each encoder is evaluated the same way:
  cmga           images + text in every step (CMGA), separate decoders   (the MoMo recipe)
  text_only      stage 2 without simultaneous image data                 (paper: ImageNet LE 52.9 -> 9.5)
  alternating    images and text in alternate optimizer steps (2x steps, same samples), no CMGA
  shared_decoder one decoder trunk for MIM and MLM
Metrics, the same for every variant: linear-probe top-1 on held-out images (16 classes; chance printed beside it),
held-out retrieval R@1 (chance 0.2 %: stage 2 has no alignment objective, so it stays near chance), and the
MIM / MLM training losses at the end of stage 2.

    python benchmarks/ablations.py --json benchmarks/results/ablations.json [--seeds 0 1] [--quick]
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
    return {"probe_top1": r["linear_probe"]["top1"], "probe_chance": r["linear_probe"]["chance_top1"],
            "retrieval_r1": (r["retrieval"]["tr@1"] + r["retrieval"]["ir@1"]) / 2}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/ablations")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=150, help="optimizer steps of stage 1 and of each stage 2 variant")
    p.add_argument("--num", type=int, default=4000, help="synthetic samples per kind")
    p.add_argument("--quick", action="store_true", help="10 steps, 512 samples: a smoke run")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.quick:
        args.steps, args.num = 10, 512
    out = Path(args.out)
    rows = []
    for seed in args.seeds:
        common = [f"data.seed={seed}", f"train.seed={seed}", f"data.synthetic_num={args.num}"]
        base = out / f"seed{seed}" / "stage1"
        print(f"[ablations] seed {seed}: stage 1 ({args.steps} steps)", flush=True)
        pretrain(base, 1, args.steps, common, base.parent / "stage1.log")
        init = base / "stage1" / "shared_fp32.safetensors"
        for name, sets in VARIANTS.items():
            steps = args.steps * (2 if name == "alternating" else 1)
            vdir = out / f"seed{seed}" / name
            print(f"[ablations] seed {seed}: stage 2 {name} ({steps} steps)", flush=True)
            done = pretrain(vdir, 2, steps, [*common, f"train.init_from={init}", *sets], vdir.parent / f"{name}.log")
            final = done["final"]
            rows.append({"seed": seed, "variant": name, "steps": steps, "wall_s": round(done["wall_s"], 1),
                         "mim_loss": final.get("image/mim_loss"), "mlm_loss": final.get("text/mlm_loss"),
                         **evaluate(vdir / "stage2" / "encoder.safetensors", vdir / "data", args.num, seed)})
    print_table(rows)
    if args.json:
        import torch

        meta = {"machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count()},
                "versions": {"torch": torch.__version__}, "steps": args.steps, "num": args.num,
                "seeds": args.seeds, "preset": "tiny"}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="stage-2 ablations (tiny preset, synthetic data)")
    for c in ("seed", "variant", "steps", "probe top-1 %", "chance %", "retrieval R@1 %", "MIM loss", "MLM loss",
              "wall s"):
        t.add_column(c)
    fmt = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    for r in rows:
        t.add_row(fmt(r["seed"]), r["variant"], fmt(r["steps"]), fmt(r["probe_top1"]), fmt(r["probe_chance"]),
                  fmt(r["retrieval_r1"]), fmt(r["mim_loss"]), fmt(r["mlm_loss"]), fmt(r["wall_s"]))
    Console().print(t)


if __name__ == "__main__":
    sys.exit(main())
