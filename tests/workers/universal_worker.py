"""Worker of the elastic-resume test: the tiny MoMo engine built by the trainer's ``build_engine`` (fp32 on CPU,
ds_configs/zero<N>.json resolved like the trainer does), trained, saved with the trainer's ``checkpoint.save``,
and resumed through DeepSpeed's universal checkpoint on another world size. Rank 0 writes what the ranks hold
(full fp32 master weights and Adam moments per parameter name, scheduler and param groups) for the test.

    torchrun --nproc_per_node 2 tests/workers/universal_worker.py OUT 1,2,3 train
    python tests/workers/universal_worker.py OUT 1,2,3 train resume:2

ZeRO stages name the config: ``2`` is ds_configs/zero2.json, ``2_offload`` ds_configs/zero2_offload.json.

``train``:    STEPS steps from the seed, save tag step_<STEPS> in OUT/z<zero>_w<world>/ (state after the save:
              ``*_saved``), one more step (``*_ref``: the reference of a resumed step on this world size)
``resume:N``: a fresh engine (universal config) loads the world-N checkpoint (``*_loaded``), one step
              (``*_after``)

Every global batch is cut into equal rank slices of images and fixed-length texts (each row masks the same
number of patches/tokens) and the contrastive loss gathers over ranks, so the mean of the ranks' losses is the
full-batch loss: a step on 1 rank and on 2 ranks is the same step up to summation order.
"""
import json
import os
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import deepspeed  # noqa: E402
import torch  # noqa: E402
from deepspeed.utils import lazy_init_hp_params_optimizer_state  # noqa: E402
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from momo_ds import distributed as mdist  # noqa: E402
from momo_ds.batch import PairBatch  # noqa: E402
from momo_ds.config import DataConfig, RecipeConfig, StreamConfig, TrainConfig  # noqa: E402
from momo_ds.data.collate import mask_images, mask_text  # noqa: E402
from momo_ds.engine import checkpoint as ckpt  # noqa: E402
from momo_ds.engine import universal  # noqa: E402
from momo_ds.engine.ds_config import load_ds_config, resolve_ds_config  # noqa: E402
from momo_ds.engine.stage import build_engine  # noqa: E402
from momo_ds.model import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GLOBAL_B, IMG, PATCH, VOCAB, TEXT_LEN = 8, 32, 4, 512, 10
STEPS = 2
CLIENT = {"stage": 2, "counters": {"samples": STEPS * 3 * GLOBAL_B, "tokens": 1234, "elapsed_s": 0.5},
          "note": "elastic"}


def recipe(world: int) -> RecipeConfig:
    """The tiny preset (2 encoder blocks, 1-block decoders) on three streams; per-rank batch = GLOBAL_B / world,
    so the global batch (and the DeepSpeed train_batch_size) is the same on every world size."""
    b = GLOBAL_B // world
    streams = [StreamConfig(name="image", kind="image", objectives={"mim": 1.0}, batch_size=b),
               StreamConfig(name="text", kind="text", objectives={"mlm": 1.0}, batch_size=b),
               StreamConfig(name="pair", kind="pair", objectives={"cmm": 1.0, "itc": 0.5}, batch_size=b)]
    train = TrainConfig(max_steps=8, warmup_steps=2, lr=1e-3, min_lr=1e-5, weight_decay=0.05, grad_clip=1.0)
    return RecipeConfig(stage=2, preset="tiny", model={"depth": 2, "decoder_depth": 1},
                        data=DataConfig(streams=streams, image_size=IMG), train=train).validate()


def _text(g: torch.Generator, ratio: float):
    ids = torch.randint(1, VOCAB, (GLOBAL_B, TEXT_LEN), generator=g)
    return mask_text(ids, torch.ones(GLOBAL_B, TEXT_LEN, dtype=torch.bool), ratio, 0, g)


def global_batches(step: int) -> dict:
    g = torch.Generator().manual_seed(1000 + step)
    image = mask_images(torch.randn(GLOBAL_B, 3, IMG, IMG, generator=g), PATCH, 0.75, g)
    text = _text(g, 0.15)
    pair = PairBatch(image=mask_images(torch.randn(GLOBAL_B, 3, IMG, IMG, generator=g), PATCH, 0.75, g),
                     text=_text(g, 0.5))
    return {"image": image, "text": text, "pair": pair}


def local_batches(step: int, rank: int, world: int) -> dict:
    from tests.workers.fake_batches import slice_batch

    n = GLOBAL_B // world
    return {k: slice_batch(b, rank * n, (rank + 1) * n) for k, b in global_batches(step).items()}


def build(zero: str, world: int, elastic: bool):
    rec = recipe(world)
    ds_cfg = resolve_ds_config(load_ds_config(ROOT / "ds_configs" / f"zero{zero}.json"), rec, world)
    if elastic:
        ds_cfg = universal.universal_ds_config(ds_cfg)
    torch.manual_seed(rec.train.seed)
    model = build_model(rec.model_config())
    engine, (step,) = build_engine(rec, ds_cfg, model, torch.device("cpu"))
    return engine, step, model


def link_moments(engine) -> None:
    """ZeRO-1/2 (DeepSpeed 0.19) link the parameters' views of the Adam moments once, right after the first
    param group's first step, when torch's AdamW has no state yet for the second group: the views of the
    no-decay group stay empty and ``safe_get_full_optimizer_state`` raises for them. Link every group again."""
    opt = engine.optimizer
    if hasattr(opt, "single_partition_of_fp32_groups"):
        for lp_group, flat in zip(opt.bit16_groups, opt.single_partition_of_fp32_groups):
            lazy_init_hp_params_optimizer_state(lp_group, flat, opt.optimizer.state)


def snapshot(engine, model, out: Path, name: str, full: bool) -> None:
    """Collective (ZeRO-3 gathers): rank 0 writes ``name.safetensors`` (fp32 master weights, with ``full`` the
    Adam moments too) and ``name.json`` (scheduler, param groups, Adam step, engine steps)."""
    if full:
        link_moments(engine)
    tensors = {}
    for n, p in model.named_parameters():
        tensors[f"fp32/{n}"] = safe_get_full_fp32_param(p).detach().clone()
        if full:
            for key in ("exp_avg", "exp_avg_sq"):
                tensors[f"{key}/{n}"] = safe_get_full_optimizer_state(p, key).detach().clone()
    if mdist.get_rank() != 0:
        return
    base = engine.optimizer.optimizer if hasattr(engine.optimizer, "optimizer") else engine.optimizer
    sched = engine.lr_scheduler.state_dict()
    meta = {
        "scheduler": {"last_epoch": sched["last_epoch"], "base_lrs": sched["base_lrs"],
                      "last_lr": sched["_last_lr"], "step_count": sched.get("_step_count")},
        "groups": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
                   for g in base.param_groups],
        "adam_steps": sorted({float(s["step"]) for s in base.state.values() if "step" in s}),
        "global_steps": engine.global_steps, "lr": engine.get_lr(),
        "grad_norm": None if engine.get_global_grad_norm() is None else float(engine.get_global_grad_norm()),
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"{name}.safetensors"))
    (out / f"{name}.json").write_text(json.dumps(meta, indent=1))


def train(out: Path, zero: str, rank: int, world: int) -> None:
    engine, step, model = build(zero, world, elastic=False)
    for s in range(STEPS):
        step(local_batches(s, rank, world), s)
    ckpt_dir = out / f"z{zero}_w{world}"
    rank_state = {"loader": {"rank": rank}, "rng": ckpt.rng_state()}
    ckpt.save(engine, ckpt_dir, STEPS, {"step": STEPS, **CLIENT}, rank_state, keep_last=2)
    snapshot(engine, model, out, f"z{zero}_w{world}_saved", full=True)
    step(local_batches(STEPS, rank, world), STEPS)
    snapshot(engine, model, out, f"z{zero}_w{world}_ref", full=False)
    engine.destroy()


def resume(out: Path, zero: str, rank: int, world: int, src_world: int) -> None:
    engine, step, model = build(zero, world, elastic=True)
    ckpt_dir, tag = out / f"z{zero}_w{src_world}", ckpt.tag_for(STEPS)
    name = f"z{zero}_w{world}_from{src_world}"
    t0 = time.perf_counter()
    client = universal.load_universal(engine, ckpt_dir, tag)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = universal.to_universal(ckpt_dir, tag)  # the copy is complete: reused, not converted again
    reuse_s = time.perf_counter() - t0
    snapshot(engine, model, out, f"{name}_loaded", full=True)
    # the module's own weights (what forward uses) follow the restored fp32 master weights
    module_ok = True
    if not engine.zero_optimization_partition_weights():
        module_ok = all(torch.equal(p.data.float(), safe_get_full_fp32_param(p)) for p in model.parameters())
    step(local_batches(int(client["step"]), rank, world), int(client["step"]))
    snapshot(engine, model, out, f"{name}_after", full=False)
    if rank == 0:
        keep = {k: client[k] for k in ("step", *CLIENT) if k in client}
        (out / f"{name}_client.json").write_text(json.dumps({
            "client": keep, "saved_world_size": universal.saved_world_size(ckpt_dir, tag), "reused_tag": again,
            "load_s": load_s, "reuse_s": reuse_s, "module_follows_fp32": module_ok}))
    engine.destroy()


def init() -> None:
    """torchrun's ranks, or a plain process as a world of one; a short collective timeout so a rank left
    waiting by a failed peer gives up within minutes."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(mdist.free_port()))
    deepspeed.init_distributed(dist_backend="gloo", verbose=False, timeout=timedelta(minutes=5))


def main(out: Path, zeros: list[str], modes: list[str]) -> None:
    init()
    rank, world = mdist.get_rank(), mdist.get_world_size()
    for mode in modes:
        for zero in zeros:
            t0 = time.perf_counter()
            label = f"{mode.replace(':', '')}_z{zero}_w{world}"
            try:
                if mode == "train":
                    train(out, zero, rank, world)
                else:
                    resume(out, zero, rank, world, int(mode.split(":")[1]))
                status = {"ok": True}
            except Exception as e:  # the ranks may now disagree on the next collective: report and stop
                status = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(),
                          "wall_s": time.perf_counter() - t0}
                (out / f"{label}_rank{rank}.json").write_text(json.dumps(status))
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)
            status["wall_s"] = time.perf_counter() - t0
            (out / f"{label}_rank{rank}.json").write_text(json.dumps(status))
            mdist.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3:])
