"""The main job: parse arguments, run the requested stages in order, print the results table.

    deepspeed [--num_gpus N | --hostfile H] tools/pretrain.py --ds_config ds_configs/zero2.json \
        [--config RECIPE] [--stage 1|2|3|all] [--out DIR] [--max_steps N] [--save_every N] [--resume] \
        [--set key=value ...]

``--config`` is a preset name (tiny | base | large: the packaged recipes), a directory holding
``stage{1,2,3}.yaml``, or one stage's YAML file. With no ``--config`` the tiny preset runs all three stages on the
built-in synthetic data (generated into ``<out>/data`` if absent).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

from momo_ds import distributed as mdist
from momo_ds.config import ConfigError, PACKAGED_RECIPES, RecipeConfig

STAGES = ("1", "2", "3", "all")
LOG_LEVELS = ("debug", "info", "warning", "error")
SHARED_WEIGHTS = "shared_fp32.safetensors"  # encoder + shared heads (no decoders): the next stage starts here
DONE = "DONE.json"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MoMo pretraining with DeepSpeed (CMGA over modality streams)")
    p.add_argument("--ds_config", "--deepspeed_config", dest="ds_config", default="ds_configs/zero2.json",
                   help="DeepSpeed JSON (batch fields 'auto' are derived from the recipe)")
    p.add_argument("--config", default="tiny", help="preset (tiny|base|large), recipe directory, or stage YAML")
    p.add_argument("--stage", default=None, choices=STAGES,
                   help="1, 2, 3 or all (default: all, or the stage of a YAML file)")
    p.add_argument("--out", default="runs/momo-tiny", help="output directory")
    p.add_argument("--max_steps", type=int, default=None, help="optimizer steps per stage (overrides the recipe)")
    p.add_argument("--save_every", type=int, default=None, help="checkpoint every N steps per stage")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoints in --out")
    p.add_argument("--set", dest="overrides", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="recipe overrides applied to every stage, e.g. train.lr=1e-4 data.num_workers=2; "
                        "address a stream by name: 'data.streams.image.shards=[/data/train-{000000..000099}.tar]' "
                        "(quoted, so that the shell leaves the braces alone)")
    p.add_argument("--no_eval", action="store_true", help="skip the final evaluation of the tiny/synthetic run")
    p.add_argument("--log_level", default="warning", choices=LOG_LEVELS,
                   help="DeepSpeed's own log level (default: warning; its INFO lines are most of a log otherwise)")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return p.parse_args(argv)


def stage_recipes(config: str, stage: Optional[str]) -> list[Path]:
    """The recipe files to run, in order."""
    path = Path(config)
    if path.is_file():
        return [path]
    folder = path if path.is_dir() else PACKAGED_RECIPES / config
    if not folder.is_dir():
        valid = ", ".join(sorted(p.name for p in PACKAGED_RECIPES.iterdir() if p.is_dir()))
        raise ConfigError(f"--config {config!r} is neither a recipe file, a directory nor a preset ({valid})")
    wanted = [1, 2, 3] if stage in (None, "all") else [int(stage)]
    files = [folder / f"stage{n}.yaml" for n in wanted]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(f"recipe file(s) not found: {', '.join(missing)}")
    return files


def prepare_data(recipe: RecipeConfig, out: Path):
    """Synthetic recipes: generate the built-in dataset once (rank 0 first). Returns (the recipe with its streams
    pointed at the dataset, validated again: a validated config is never changed in place, the dataset's
    SyntheticInfo), or (the recipe itself, None) for a recipe with real shards."""
    from momo_ds.data import resolve_synthetic

    if not recipe.data.synthetic:
        return recipe, None
    if mdist.is_main_process():
        resolve_synthetic(recipe.data, out / "data")
    mdist.barrier()
    data, info = resolve_synthetic(recipe.data, out / "data")  # reuses what rank 0 wrote
    return dataclasses.replace(recipe, data=data).validate(), info


def require_shards(recipe: RecipeConfig) -> None:
    """Every stream names shards (the real-data path; synthetic data is off)."""
    for s in recipe.data.streams:
        if not s.shards:
            raise ConfigError(f"stage {recipe.stage}, stream {s.name!r} ({s.kind}): no shards given "
                              f"(--set 'data.streams.{s.name}.shards=[/path/train-{{000000..000099}}.tar]')")


def say(line: str) -> None:
    if mdist.is_main_process():
        print(f"[momo_ds] {line}", flush=True)


def run(args: argparse.Namespace) -> list:
    from momo_ds.engine.ds_config import load_ds_config
    from momo_ds.engine.preempt import StopSignals
    from momo_ds.engine.recipes import load_run_recipes

    out = Path(args.out)
    ds_cfg = load_ds_config(args.ds_config)
    recipes, notes = load_run_recipes(stage_recipes(args.config, args.stage), _step_overrides(args))
    for note in notes:  # every recipe was validated before any work starts
        say(note)
    results, info = [], None
    stop = StopSignals()
    try:
        for recipe in recipes:
            result, info = _run_stage(args, recipe, out, ds_cfg, stop, info)
            results.append(result)
    finally:
        stop.close()
    if mdist.is_main_process():
        print_results(results)
    if info is not None and not args.no_eval:
        evaluate_run(out, [r["stage"] for r in results], info)
    elif not args.no_eval:
        say("the built-in held-out evaluation runs on the synthetic data only: evaluate these encoders on your "
            "held-out data with tools/evaluate.py")
    mdist.barrier()
    return results


def _run_stage(args, recipe, out: Path, ds_cfg: dict, stop, info):
    """One stage, or its record when ``--resume`` finds it finished: (the result dict, synthetic-data info)."""
    from momo_ds.engine.checkpoint import resume_candidates
    from momo_ds.engine.preempt import Preempted
    from momo_ds.engine.stage import StageRunner

    stage_dir = out / f"stage{recipe.stage}"
    if args.resume and (stage_dir / DONE).is_file():
        say(f"stage {recipe.stage} already finished in {stage_dir}; skipping")
        return json.loads((stage_dir / DONE).read_text()), info
    if args.resume and not resume_candidates(stage_dir / "checkpoints"):
        say(f"--resume: no checkpoint of stage {recipe.stage} in {stage_dir / 'checkpoints'}; starting it "
            f"from step 0")
    recipe, synthetic, tokenizer = _stage_data(recipe, out)
    info = synthetic or info
    init_state, source = _init_state(recipe, out)
    runner = StageRunner(recipe, ds_cfg, stage_dir, tokenizer, init_state=init_state, init_source=source,
                         resume_run=args.resume)
    try:
        result = runner.train(stop)
    except Preempted:
        runner.close()
        raise
    _finish_stage(runner, recipe, stage_dir, result)
    return result.__dict__, info


def _step_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides plus those of --max_steps / --save_every."""
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.save_every is not None:
        overrides.append(f"train.save_every={args.save_every}")
    return overrides


def _stage_data(recipe, out: Path):
    """(recipe with its data settled, synthetic-data info or None, tokenizer): synthetic data made when the recipe
    asks for it, every local shard checked and the tokenizer loaded before any model is built."""
    from momo_ds.data import load_tokenizer
    from momo_ds.data.loader import check_streams
    from momo_ds.data.text import vocab_fill_warning

    recipe, synthetic = prepare_data(recipe, out)
    require_shards(recipe)
    check_streams(recipe.data)
    tokenizer = load_tokenizer(recipe.data.tokenizer)
    # the tiny preset's table is sized for the synthetic vocabulary's cap (512), not for what it fills
    warning = None if recipe.data.synthetic else vocab_fill_warning(tokenizer, recipe.model_config().vocab_size)
    if warning:
        say(warning)
    return recipe, synthetic, tokenizer


def _init_state(recipe, out: Path) -> tuple[Optional[dict], str]:
    """(weights, their file) a stage starts from: ``train.init_from`` = previous (the previous stage's shared
    weights in ``out``) or a file; (None, "") for a fresh start."""
    from safetensors.torch import load_file

    init = recipe.train.init_from
    source = str(out / f"stage{recipe.stage - 1}" / SHARED_WEIGHTS) if init == "previous" else (init or "")
    if not source:
        return None, ""
    if not Path(source).is_file():
        raise ConfigError(f"train.init_from: {source} not found (run the previous stage first)")
    return load_file(source), source


def _finish_stage(runner, recipe, stage_dir: Path, result) -> None:
    """Rank 0 writes the stage's export, the weights the next stage starts from and the DONE record (each
    atomically); every rank then closes its runner."""
    from safetensors.torch import save_file

    from momo_ds.model.parts import NEXT_STAGE_PARTS, select

    state = runner.fp32_weights()
    if mdist.is_main_process():
        meta = {"stage": recipe.stage, "preset": recipe.preset, "model": _model_dict(runner.model_cfg),
                "tokenizer": recipe.data.tokenizer, "steps": runner.step}
        result.encoder = str(runner.export(state, meta))
        shared = {k: v.contiguous() for k, v in select(state, NEXT_STAGE_PARTS).items()}
        tmp = stage_dir / f".{SHARED_WEIGHTS}.tmp"
        save_file(shared, str(tmp))
        os.replace(tmp, stage_dir / SHARED_WEIGHTS)
        from momo_ds.engine.checkpoint import atomic_write_text

        atomic_write_text(stage_dir / DONE, json.dumps(result.__dict__, indent=2))
    mdist.barrier()
    runner.close()


def evaluate_run(out: Path, stages: list[int], info) -> dict:
    """Synthetic runs: retrieval, linear probe, held-out ITM and the orientation probe of each stage's encoder on
    the held-out split, and synthetic VQA fine-tuning of the stage-3 encoder ->
    eval.json (stages 1 and 2 never train the ITM head: their ITM numbers are an untrained baseline).

    Every rank takes part: the held-out split is read in per-rank shares and its features gathered; rank 0 writes.
    """
    from momo_ds.eval.runner import evaluate_synthetic, write_report

    report = {}
    device = mdist.local_device()
    for n in stages:
        enc = out / f"stage{n}" / "encoder.safetensors"
        if enc.is_file():
            r = evaluate_synthetic(enc, info, device, vqa=n == 3)  # VQA: the joint encoder after stage 3
            report[f"stage{n}"] = {**{f"retrieval/{k}": v for k, v in r["retrieval"].items()},
                                   **{f"linear_probe/{k}": v for k, v in r["linear_probe"].items()},
                                   **{f"itm/{k}": v for k, v in r.get("itm", {}).items()},
                                   **{f"orientation_probe/{k}": v for k, v in r["orientation_probe"].items()},
                                   **{f"vqa/{k}": v for k, v in r.get("vqa", {}).items()}}
    if mdist.is_main_process():
        write_report(report, out / "eval.json", title="held-out synthetic evaluation")
    return report


def _model_dict(cfg) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)


def print_results(results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="momo-ds pretraining results")
    for col in ("stage", "steps", "wall s", "steps/s", "samples/s", "final losses", "encoder"):
        table.add_column(col)
    for r in results:
        losses = " ".join(f"{k.replace('_loss', '')}={v:.3f}" for k, v in r.get("final", {}).items()
                          if k.endswith("_loss"))
        table.add_row(str(r["stage"]), str(r["steps"]), f"{r['wall_s']:.1f}", f"{r['steps_per_s']:.2f}",
                      f"{r['samples_per_s']:.1f}", losses, r.get("encoder", ""))
    console = Console()
    Console(width=max(console.width, 140)).print(table)  # log files (no terminal) would otherwise wrap at 80


def report_error(out: Path, e: Exception) -> int:
    """One ``error:`` line for a config or data error. Every rank meets the same start-up errors, so rank 0
    alone prints those; an error of one rank's own data share (``rank_local``) is printed by that rank."""
    from momo_ds.engine import failure

    rank = mdist.get_rank()
    message = " ".join(str(e).split())  # one line, whatever the message held
    printed = rank == 0 or getattr(e, "rank_local", False)
    if printed:
        _print_error(rank, message)
    if mdist.get_world_size() > 1:
        failure.record(out, rank, message, printed)
    return 2


def _print_error(rank: int, message: str) -> None:
    prefix = f"rank {rank}: " if rank else ""
    print(f"error: {prefix}{message}", file=sys.stderr, flush=True)


def set_deepspeed_log_level(level: str) -> None:
    """DeepSpeed's logger at ``level`` (its warnings and errors stay; its INFO lines go unless asked for)."""
    import logging

    from deepspeed.utils import logger

    logger.setLevel(getattr(logging, level.upper()))


def main(argv: Optional[list[str]] = None) -> int:
    """Exit codes: 0 done, 2 a reported config or data error, :data:`~momo_ds.engine.preempt.EXIT_PREEMPTED` (75)
    stopped by SIGTERM / SIGUSR1 with a checkpoint to resume from; an unexpected error raises."""
    from momo_ds.data.errors import DataError
    from momo_ds.engine import failure
    from momo_ds.engine.checkpoint import CheckpointError
    from momo_ds.engine.preempt import EXIT_PREEMPTED, Preempted

    args = parse_args(argv)
    started = time.time()
    try:
        stage_recipes(args.config, args.stage)  # fail fast on a bad --config before starting processes' work
        set_deepspeed_log_level(args.log_level)
        mdist.init_distributed()
        start = time.perf_counter()
        run(args)
        say(f"done in {time.perf_counter() - start:.1f} s; outputs in {args.out}")
    except (ConfigError, DataError, CheckpointError) as e:  # bad recipe or data; a checkpoint not written / usable
        return report_error(Path(args.out), e)
    except Preempted as e:
        say(str(e))
        return EXIT_PREEMPTED
    except Exception:
        # A peer that stopped on a reported error leaves this rank failing inside a collective: its line is the
        # message, this traceback would only bury it.
        peer = failure.peer_failure(Path(args.out), mdist.get_rank(), started) if mdist.get_world_size() > 1 \
            else None
        if peer is None:
            raise
        if not peer.printed and mdist.is_main_process():
            _print_error(peer.rank, peer.message)
        return 2
    return 0
