"""Single-process units of the trainer: batch arithmetic, schedule, parameter groups, RNG state, NaN guard, log row."""
import json
import math
import random

import numpy as np
import pytest
import torch

from momo_ds.config import ConfigError, load_recipe, packaged_recipe
from momo_ds.data import SkipStats
from momo_ds.engine.checkpoint import rng_state, set_rng_state
from momo_ds.engine.cmga import CMGAStep, NonFiniteLossError
from momo_ds.engine.ds_config import load_ds_config, resolve_ds_config
from momo_ds.engine.optim import lr_lambda, param_groups
from momo_ds.engine.metrics import StageConsole, _short, progress_line
from momo_ds.engine.stage import StageRunner, _summary_rows
from momo_ds.engine.telemetry import Window


def stage3():
    return load_recipe(packaged_recipe("tiny", 3))


@pytest.mark.parametrize("name", ["zero1", "zero2", "zero3", "zero2_offload"])
def test_shipped_ds_configs_resolve(name):
    cfg = resolve_ds_config(load_ds_config(f"ds_configs/{name}.json"), stage3(), world_size=4)
    assert cfg["train_micro_batch_size_per_gpu"] == 128  # 64 text + 64 pairs per rank per step
    assert cfg["train_batch_size"] == 512 and cfg["gradient_accumulation_steps"] == 1
    assert cfg["gradient_clipping"] == 1.0 and cfg["bf16"]["enabled"] is torch.cuda.is_available()
    assert cfg["data_types"]["grad_accum_dtype"] == "fp32"


def test_contradictory_batch_size_is_a_start_up_error():
    ds = load_ds_config("ds_configs/zero2.json") | {"train_batch_size": 256}
    with pytest.raises(ConfigError) as e:
        resolve_ds_config(ds, stage3(), world_size=4)
    assert "train_batch_size=256 contradicts the recipe" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=4"):
        resolve_ds_config(load_ds_config("ds_configs/zero2.json") | {"gradient_accumulation_steps": 4},
                          stage3(), world_size=1)


def test_optimizer_section_refused_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="'optimizer' section"):
        resolve_ds_config({"optimizer": {"type": "Adam"}}, stage3(), 1)
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_ds_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_ds_config(tmp_path / "missing.json")


def test_lr_schedule_warmup_then_cosine():
    vals = [lr_lambda(s, warmup=10, total=110, min_ratio=0.1) for s in range(110)]
    assert vals[0] == pytest.approx(0.1) and vals[9] == pytest.approx(1.0)
    assert vals[10] == pytest.approx(1.0) and vals[60] == pytest.approx(0.55)
    assert all(a >= b for a, b in zip(vals[10:], vals[11:]))
    assert lr_lambda(10_000, 10, 110, 0.1) == pytest.approx(0.1)
    assert math.isclose(lr_lambda(0, 0, 100, 0.0), 1.0)


def test_param_groups_no_decay_for_norms_biases_embeddings_temperature():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.token_embed = torch.nn.Embedding(10, 4)
            self.lin = torch.nn.Linear(4, 4)
            self.norm = torch.nn.LayerNorm(4)
            self.logit_scale = torch.nn.Parameter(torch.ones(1))
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.token_embed.weight  # tied: listed once
    decay, no_decay = param_groups(M(), 0.05)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 5 and no_decay["weight_decay"] == 0.0


def test_rng_state_roundtrip_is_json_safe():
    torch.manual_seed(3); random.seed(3); np.random.seed(3)
    state = json.loads(json.dumps(rng_state()))
    a = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(state)
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_non_finite_loss_stops_before_step_naming_stream_and_objective():
    terms = {"text/loss": torch.tensor(1.0), "text/mlm_loss": torch.tensor(1.0),
             "pair/loss": torch.tensor(float("nan")), "pair/itc_loss": torch.tensor(float("inf")),
             "pair/cmm_image_loss": torch.tensor(0.5)}
    with pytest.raises(NonFiniteLossError) as e:
        CMGAStep._raise_if_non_finite(terms)
    assert "pair stream, itc_loss" in str(e.value) and "text" not in str(e.value)


def test_repeated_set_flags_all_apply():
    """`--set a=1 --set b=2` keeps both (argparse's default would keep only the last, silently)."""
    from momo_ds.engine.run import parse_args

    args = parse_args(["--set", "model.align_inputs=masked", "--set", "train.max_steps=9", "train.warmup_steps=2"])
    assert args.overrides == ["model.align_inputs=masked", "train.max_steps=9", "train.warmup_steps=2"]
    assert parse_args([]).overrides == []


class _Engine:
    def get_lr(self):
        return [1e-3]

    def get_global_grad_norm(self):
        return 0.5


class _Loader:
    """Like StageLoader.skip_counts: every stream listed, only its non-zero reasons."""

    def __init__(self, counts: dict[str, dict[str, int]]):
        self.counts = counts

    def skip_counts(self) -> dict[str, dict[str, int]]:
        return {s: dict(r) for s, r in self.counts.items()}


def fake_runner(loader, world: int = 1, peak=None) -> StageRunner:
    """A StageRunner with only what _log_window reads: engine, loader, world size, device, peak, counters."""
    runner = StageRunner.__new__(StageRunner)
    runner.engine, runner.loader, runner.world, runner.device, runner.peak = _Engine(), loader, world, torch.device(
        "cpu"), peak
    runner.counters = {"samples": 0, "tokens": 0, "elapsed_s": 0.0}
    return runner


def fake_window(running: dict, counts: dict, samples: dict, tokens: dict, flops: float = 0.0) -> Window:
    window = Window()
    window.running, window.counts, window.samples, window.tokens = running, counts, samples, tokens
    window.flops, window.steps = flops, max(counts.values())
    return window


TIMES = {"wall_s": 2.0, "data_s": 0.5, "fwd_bwd_s": 1.2, "optim_s": 0.2}


def log_row(skips: dict[str, dict[str, int]]) -> dict[str, float]:
    running = {"img/loss": torch.tensor(3.0), "txt/mlm_loss": torch.tensor(1.0)}
    window = fake_window(running, {"img/loss": 2, "txt/mlm_loss": 1}, {"img": 30, "txt": 10}, {"img": 300, "txt": 100})
    return fake_runner(_Loader(skips))._log_window(window, TIMES)


def test_log_row_has_every_stream_and_reason_column_from_the_first_row():
    row = log_row({"img": {SkipStats.BAD_LABEL: 2, SkipStats.CORRUPT_IMAGE: 1}, "txt": {}})
    assert row["img/loss"] == 1.5 and row["txt/mlm_loss"] == 1.0 and row["samples_per_s"] == 20.0
    assert row["img/skipped"] == 3.0 and row["txt/skipped"] == 0.0
    for stream in ("img", "txt"):
        assert [k for k in row if k.startswith(f"{stream}/skipped/")] == [
            f"{stream}/skipped/{r}" for r in SkipStats.REASONS]
    assert row["img/skipped/bad_label"] == 2.0 and row["img/skipped/corrupt_image"] == 1.0
    assert row["img/skipped/broken_tar"] == 0.0 and row["txt/skipped/bad_utf8"] == 0.0
    assert list(log_row({"img": {}, "txt": {SkipStats.BAD_UTF8: 5}})) == list(row), "same columns, same order"


def test_log_row_refuses_a_reason_it_cannot_log():
    with pytest.raises(ValueError, match="img/made_up"):
        log_row({"img": {"made_up": 1}, "txt": {}})


def test_log_window_telemetry_columns():
    """MFU = this rank's window FLOPs / wall time / peak; per-phase seconds are per step; throughput per stream
    over all ranks; data wait is a share of the wall time."""
    window = fake_window({"img/loss": torch.tensor(2.0)}, {"img/loss": 4}, {"img": 40}, {"img": 400}, flops=8e9)
    row = fake_runner(_Loader({"img": {}}), world=2, peak=1e10)._log_window(window, TIMES)
    assert row["mfu"] == pytest.approx(8e9 / 2.0 / 1e10)
    assert row["step_s"] == 0.5 and row["time/data_s"] == 0.125 and row["time/fwd_bwd_s"] == 0.3
    assert row["time/optim_s"] == 0.05 and row["data_wait_pct"] == 25.0
    assert row["img/samples_per_s"] == 40.0 and row["img/tokens_per_s"] == 400.0 and row["samples_per_s"] == 40.0
    assert 0.01 < row["memory_gib"] < 64, "the process's peak RSS"
    assert "mfu" not in fake_runner(_Loader({"img": {}}))._log_window(window, TIMES), "no peak: no MFU"


def test_progress_line_for_log_files():
    row = log_row({"img": {SkipStats.BAD_LABEL: 2}, "txt": {}})
    row.update(mfu=0.123, data_wait_pct=4.5, memory_gib=1.25)
    line = progress_line(3, 40, 200, row, eta_s=125.0)
    assert line.startswith("[momo_ds] stage 3 step 40/200 | txt/mlm 1 | lr "), "objectives, not stream totals"
    assert "| 20.0 samples/s | MFU 12.3 % | data 4.5 % | mem 1.25 GiB | skipped 2 | ETA 2m05s" in line
    assert "\n" not in line


def test_console_prints_one_plain_line_per_log_step_off_a_terminal(capsys):
    console = StageConsole(1, 10, 0, enabled=True, plain=True)
    for step in range(1, 11):
        if step % 5 == 0:
            console.update(step, {"img/mim_loss": 1.0 / step, "lr": 1e-3})
        else:
            console.advance_to(step)
    console.close()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[0] for line in lines] == ["[momo_ds] stage 1 step 5/10", "[momo_ds] stage 1 step 10/10"]


def test_progress_bar_shows_skip_totals_not_reasons():
    row = log_row({"img": {SkipStats.BAD_LABEL: 2}, "txt": {}})
    short = _short(row)
    assert short["img/skipped"] == 2.0 and short["txt/skipped"] == 0.0 and short["smp/s"] == 20.0
    assert not [k for k in short if "/skipped/" in k]


def test_stage_summary_names_window_throughput_apart_from_stage_means():
    row = log_row({"img": {SkipStats.BAD_LABEL: 2}, "txt": {}})
    summary = _summary_rows(row)
    assert summary["samples/s (last window)"] == 20.0 and summary["tokens/s (last window)"] == 200.0
    assert not {"samples_per_s", "tokens_per_s", "samples/s (stage mean)", "tokens/s (stage mean)"} & set(summary)
    assert [k for k in summary if "/skipped/" in k] == ["img/skipped/bad_label"], "only the reasons that occurred"
    assert summary["txt/skipped"] == 0.0 and summary["img/loss"] == 1.5


def test_rendezvous_from_srun_tasks_or_a_world_of_one():
    from momo_ds.distributed import rendezvous_env

    assert rendezvous_env({"RANK": "3"}) == {}, "a launcher's variables win"
    slurm = {"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "MASTER_ADDR": "node01"}
    assert rendezvous_env(slurm) == {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "MASTER_PORT": "29500"}
    with pytest.raises(RuntimeError, match="export MASTER_ADDR"):
        rendezvous_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
    one = rendezvous_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    assert one["WORLD_SIZE"] == "1" and one["MASTER_ADDR"] == "127.0.0.1"


def test_gpu_optimizer_falls_back_to_torch_fused_adamw_in_one_line(monkeypatch, capsys):
    """No compiler for DeepSpeed's FusedAdam: torch's fused AdamW, said in one line, never a slow path silently."""
    import deepspeed.ops.adam as ds_adam

    from momo_ds.config import TrainConfig
    from momo_ds.engine.optim import build_optimizer

    def no_nvcc(*args, **kwargs):
        raise RuntimeError("Error building extension 'fused_adam': nvcc not found")

    monkeypatch.setattr(ds_adam, "FusedAdam", no_nvcc)
    capsys.readouterr()  # the import's own accelerator line
    opt = build_optimizer(torch.nn.Linear(4, 4), TrainConfig(), "cuda")
    assert type(opt) is torch.optim.AdamW and opt.defaults["fused"] is True
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[momo_ds]")]
    assert len(lines) == 1 and "FusedAdam unavailable" in lines[0] and "AdamW(fused=True)" in lines[0]
