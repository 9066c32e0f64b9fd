#!/usr/bin/env python
"""Ablations in miniature on the synthetic data (tiny preset, CPU): the paper's Table 6 and the align-input choice.

--study stage2 (the paper's Table 6): from one shared stage-1 run, stage 2 is trained four ways:
  cmga           images + text in every step (CMGA), separate decoders   (the MoMo recipe)
  text_only      stage 2 without simultaneous image data                 (paper: ImageNet LE 52.9 -> 9.5)
  alternating    images and text in alternate optimizer steps (2x steps, same samples), no CMGA
  shared_decoder one decoder trunk for MIM and MLM
Metrics: linear-probe top-1 on held-out images (16 classes; chance printed beside it), held-out retrieval R@1
(chance 0.2 %: stage 2 has no alignment objective, so it stays near chance), and the final MIM / MLM losses.

--study align (what contrastive and ITM see, and how many joint sequences ITM encodes): from one shared stage-2
checkpoint, stage 3 is trained with each variant of ALIGN_VARIANTS at the same number of steps, and the cheaper
ones again at the same training FLOPs as ``full`` (steps scaled by the analytic FLOP ratio of a whole stage-3
step, momo_ds.model.flops.training_flops; ``--flop-matched`` names which). Metrics: held-out retrieval R@1/R@10
in both directions, held-out ITM balanced accuracy (positives vs random and vs hard negatives) and the probe.

    python benchmarks/ablations.py --study stage2 --json out/ablations.json [--seeds 0 1] [--quick]
    python benchmarks/ablations.py --study align --stage2 <run>/stage2/shared_fp32.safetensors --steps 160 \
        --seeds 0 1 2 --json out/align.json
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
    ret, itm = r["retrieval"], r.get("itm", {})
    return {"probe_top1": r["linear_probe"]["top1"], "probe_chance": r["linear_probe"]["chance_top1"],
            "orient_top1": r["orientation_probe"]["top1"], "orient_chance": r["orientation_probe"]["chance_top1"],
            "tr_r1": ret["tr@1_pct"], "ir_r1": ret["ir@1_pct"], "tr_r10": ret["tr@10_pct"], "ir_r10": ret["ir@10_pct"],
            "retrieval_r1": (ret["tr@1_pct"] + ret["ir@1_pct"]) / 2,
            "retrieval_r10": (ret["tr@10_pct"] + ret["ir@10_pct"]) / 2,
            "itm_random_bacc": itm.get("itm_random_bacc_pct"), "itm_hard_bacc": itm.get("itm_hard_bacc_pct")}


# stage-3 variants of the align study: name -> overrides of the packaged tiny stage-3 recipe. Each sets all three
# switches, so a variant means the same whatever the recipe's own choice (mask50_1neg since 2026-12-02).
_FULL = ["model.align_inputs=full", "data.streams.pair.align_mask_ratio=null"]
_MASK50 = ["model.align_inputs=masked_image", "data.streams.pair.align_mask_ratio=0.5"]
_CMM_VISIBLE = ["model.align_inputs=masked_image", "data.streams.pair.align_mask_ratio=null"]
ALIGN_VARIANTS = {
    "full": [*_FULL, "model.itm_negatives=2"],  # unmasked pairs, two negatives per pair: the recipe until then
    "full_1neg": [*_FULL, "model.itm_negatives=1"],
    "mask50_1neg": [*_MASK50, "model.itm_negatives=1"],  # the recipe since then
    "mask50_1neg_tail": [*_MASK50, "model.itm_negatives=1", "train.align_full_tail=0.1"],
    "mask75_1neg": [*_CMM_VISIBLE, "model.itm_negatives=1"],  # the CMM-visible 25 %
    "full_1neg_hard": [*_FULL, "model.itm_negatives=1", "model.itm_hardness=1.0"],  # softmax-drawn, 1:1 classes
    "masked_image": [*_CMM_VISIBLE, "model.itm_negatives=2"],
    "masked": ["model.align_inputs=masked", "data.streams.pair.align_mask_ratio=null", "model.itm_negatives=2"],
}


def parse_variant(sets: list[str]) -> tuple[dict, dict, float]:
    """ALIGN_VARIANTS overrides -> (model overrides, pair-stream overrides, unmasked tail share)."""
    import yaml

    model, stream, tail = {}, {}, 0.0
    for item in sets:
        key, value = item.split("=", 1)
        value = yaml.safe_load(value)
        if key.startswith("model."):
            model[key[len("model."):]] = value
        elif key.startswith("data.streams.pair."):
            stream[key[len("data.streams.pair."):]] = value
        elif key == "train.align_full_tail":
            tail = float(value)
        else:
            raise ValueError(f"unsupported variant override {item!r}")
    return model, stream, tail


def stage3_flops(sets: list[str] = ()) -> float:
    """Analytic training FLOPs of one tiny stage-3 step (every stream of the packaged recipe) under the
    ALIGN_VARIANTS-style overrides ``sets``, averaged over the stage when an unmasked tail is set."""
    import dataclasses

    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import synthetic_batch

    from momo_ds.model.flops import training_flops

    from momo_ds.config import load_recipe, packaged_recipe
    from momo_ds.model import resolve_config

    model, stream_sets, tail = parse_variant(list(sets))
    recipe = load_recipe(packaged_recipe("tiny", 3))
    cfg = resolve_config("tiny", **{**recipe.model, **model})
    total = 0.0
    for s in recipe.data.streams:
        if s.kind == "pair":
            s = dataclasses.replace(s, **stream_sets)
        batch = synthetic_batch(cfg, s, torch.Generator().manual_seed(0))
        masked = training_flops(cfg, batch, s.objectives)["total"]
        full = training_flops(cfg, batch, s.objectives, align_inputs="full")["total"]
        total += (1 - tail) * masked + tail * full
    return total


def stage2_study(seed: int, args, common: list[str]) -> list[dict]:
    out = Path(args.out) / "stage2" / f"seed{seed}"
    print(f"[ablations] seed {seed}: stage 1 ({args.steps} steps)", flush=True)
    pretrain(out / "base", 1, args.steps, common, out / "stage1.log")
    init = out / "base" / "stage1" / "shared_fp32.safetensors"
    rows = [{"seed": seed, "variant": "random_init", "steps": 0, "wall_s": 0.0, "mim_loss": None, "mlm_loss": None,
             **evaluate(random_export(out / "random", out / "base" / "data", seed), out / "base" / "data",
                        args.num, seed)},
            {"seed": seed, "variant": "stage1", "steps": args.steps, "wall_s": None, "mim_loss": None,
             "mlm_loss": None, **evaluate(out / "base" / "stage1" / "encoder.safetensors", out / "base" / "data",
                                          args.num, seed)}]
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


def random_export(out: Path, data: Path, seed: int) -> Path:
    """A random-init tiny encoder exported like a trained one (the same seed's tokenizer): the baseline row."""
    import dataclasses

    import torch

    from momo_ds.engine.checkpoint import export_encoder
    from momo_ds.model import build_model

    torch.manual_seed(seed)
    model = build_model("tiny", decoders=[])
    path = out / "encoder.safetensors"
    out.mkdir(parents=True, exist_ok=True)
    export_encoder(model, path, {"stage": 0, "model": dataclasses.asdict(model.cfg),
                                 "tokenizer": str(data / "tokenizer.json")})
    return path


def _shared_data(vdir: Path, data: Path) -> None:
    """Every run of a seed reads the seed's one synthetic dataset (generated once, by the first run)."""
    vdir.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    if not (vdir / "data").exists():
        (vdir / "data").symlink_to(data.resolve(), target_is_directory=True)


def align_study(seed: int, args, common: list[str]) -> list[dict]:
    out = Path(args.out) / "align" / f"seed{seed}"
    base = out / "base"
    init = Path(args.stage2) if args.stage2 else base / "stage2" / "shared_fp32.safetensors"
    for stage in () if args.stage2 else (1, 2):
        print(f"[ablations] seed {seed}: stage {stage} ({args.steps} steps)", flush=True)
        pretrain(base, stage, args.steps, common, out / f"stage{stage}.log")
    variants = args.variants or list(ALIGN_VARIANTS)
    flops = {v: stage3_flops(ALIGN_VARIANTS[v]) for v in {*variants, *args.flop_matched, "full"}}
    runs = [(v, args.steps) for v in variants]
    runs += [(v, round(args.steps * flops["full"] / flops[v])) for v in args.flop_matched if v != "full"]
    rows = []
    for variant, steps in runs:
        name = f"{variant}@{steps}"
        vdir = out / name
        _shared_data(vdir, out / "data")
        print(f"[ablations] seed {seed}: stage 3 {variant} ({steps} steps)", flush=True)
        finished = vdir / "stage3" / "DONE.json"
        if finished.is_file():  # a study started again reuses the runs it finished (same command, same result)
            done = {**json.loads(finished.read_text()), "run_s": None}
        else:
            done = pretrain(vdir, 3, steps, [*common, f"train.init_from={init}", *ALIGN_VARIANTS[variant]],
                            out / f"{name}.log")
        final = done["final"]
        rows.append({"seed": seed, "variant": variant, "steps": steps, "wall_s": round(done["wall_s"], 1),
                     "step_gflop": round(flops[variant] / 1e9, 2), "train_tflop": round(steps * flops[variant] / 1e12, 2),
                     "flop_matched": steps != args.steps, "itc_acc": final.get("pair/itc_acc"),
                     "itm_loss": final.get("pair/itm_loss"),
                     **evaluate(vdir / "stage3" / "encoder.safetensors", vdir / "data", args.num, seed)})
        print(f"[ablations]   R@10 TR/IR {rows[-1]['tr_r10']:.1f}/{rows[-1]['ir_r10']:.1f}, ITM random "
              f"{rows[-1]['itm_random_bacc']}, {rows[-1]['wall_s']} s", flush=True)
        write_partial(args, rows)
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
    p.add_argument("--variants", nargs="+", choices=sorted(ALIGN_VARIANTS), default=None,
                   help="align study: the step-matched variants (default: all)")
    p.add_argument("--flop-matched", nargs="*", choices=sorted(ALIGN_VARIANTS), default=["mask50_1neg", "mask75_1neg"],
                   help="align study: variants run again at the training FLOPs of full's steps")
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
    write_partial(args, rows)
    return 0


def write_partial(args, rows: list[dict]) -> None:
    """The JSON report so far (rewritten after every run: a long study leaves its finished runs behind)."""
    if not args.json:
        return
    import torch

    meta = {"machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count()},
            "versions": {"torch": torch.__version__}, "study": args.study, "steps": args.steps,
            "num": args.num, "seeds": args.seeds, "preset": "tiny", "stage2": args.stage2}
    if args.study == "align":
        meta["variants"] = {v: ALIGN_VARIANTS[v] for v in {r["variant"] for r in rows}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows, "summary": summarize(rows)}, indent=2))


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and spread (max - min) over seeds of every numeric metric, per (variant, steps)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["steps"]), []).append(r)
    out = []
    for (variant, steps), rs in groups.items():
        entry = {"variant": variant, "steps": steps, "seeds": [r["seed"] for r in rs]}
        for k, v in rs[0].items():
            vals = [r[k] for r in rs if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)]
            if k not in ("seed", "steps") and len(vals) == len(rs) and vals:
                entry[k] = {"mean": sum(vals) / len(vals), "spread": max(vals) - min(vals)}
        out.append(entry)
    return out


def print_table(study: str, rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    cols = {"stage2": [("seed", "seed"), ("variant", "variant"), ("steps", "steps"), ("probe top-1 %", "probe_top1"),
                       ("chance %", "probe_chance"), ("orientation top-1 %", "orient_top1"),
                       ("retrieval R@1 %", "retrieval_r1"), ("MIM loss", "mim_loss"),
                       ("MLM loss", "mlm_loss"), ("wall s", "wall_s")],
            "align": [("seed", "seed"), ("variant", "variant"), ("steps", "steps"),
                      ("train TFLOP", "train_tflop"), ("TR/IR R@1 %", "tr_r1", "ir_r1"),
                      ("TR/IR R@10 %", "tr_r10", "ir_r10"), ("ITM bacc random/hard %", "itm_random_bacc",
                                                              "itm_hard_bacc"),
                      ("final ITM loss", "itm_loss"), ("probe top-1 %", "probe_top1"), ("wall s", "wall_s")]}[study]
    t = Table(title=f"{study} ablation (tiny preset, synthetic data)")
    for title, *_ in cols:
        t.add_column(title)
    fmt = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    for r in rows:
        t.add_row(*(" / ".join(fmt(r.get(k)) for k in keys) for _, *keys in cols))
    console = Console(width=180)
    console.print(t)
    if study == "stage2":
        s = Table(title="stage-2 ablation: mean ± spread (max - min) over seeds")
        for title in ("variant", "seeds", "probe top-1 % (16 classes)", "orientation top-1 % (4)", "MIM loss",
                      "MLM loss"):
            s.add_column(title)
        ms = lambda e, k, d=1: "-" if k not in e else f"{e[k]['mean']:.{d}f} ± {e[k]['spread']:.{d}f}"  # noqa: E731
        for e in summarize(rows):
            s.add_row(e["variant"], str(len(e["seeds"])), ms(e, "probe_top1"), ms(e, "orient_top1"),
                      ms(e, "mim_loss", 3), ms(e, "mlm_loss", 3))
        console.print(s)
    if study == "align":
        s = Table(title="align ablation: mean ± spread (max - min) over seeds")
        for title in ("variant", "steps", "seeds", "train TFLOP", "R@1 % (TR, IR)", "R@10 % (TR, IR)",
                      "ITM bacc random %", "ITM bacc hard %"):
            s.add_column(title)
        ms = lambda e, k: "-" if k not in e else f"{e[k]['mean']:.1f} ± {e[k]['spread']:.1f}"  # noqa: E731
        for e in summarize(rows):
            s.add_row(e["variant"], str(e["steps"]), str(len(e["seeds"])), ms(e, "train_tflop"),
                      f"{ms(e, 'tr_r1')}, {ms(e, 'ir_r1')}", f"{ms(e, 'tr_r10')}, {ms(e, 'ir_r10')}",
                      ms(e, "itm_random_bacc"), ms(e, "itm_hard_bacc"))
        console.print(s)


if __name__ == "__main__":
    sys.exit(main())
