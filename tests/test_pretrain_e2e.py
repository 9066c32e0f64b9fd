"""The main job end to end on CPU: default three-stage run, exact resume on 2 ranks, stage hand-over, and
one-line start-up errors. Runs are judged by the files they write."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from momo_ds.distributed import free_port
from tests.multirank import ROOT, launch, tail

pytestmark = pytest.mark.timeout(1800)
SMALL = ["data.synthetic_num=256", "train.log_every=1"]


def pretrain(args, env=None, timeout=600):
    """One process, plain python (what `deepspeed tools/pretrain.py` starts on a CPU machine)."""
    return subprocess.run([sys.executable, "tools/pretrain.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**__import__("os").environ, "OMP_NUM_THREADS": "2", **(env or {})})


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The README's main job exactly as a user starts it (deepspeed launcher, no arguments but the output dir)."""
    out = tmp_path_factory.mktemp("default") / "run"
    launcher = Path(sys.executable).with_name("deepspeed")  # the venv's launcher, activated or not
    cmd = [str(launcher) if launcher.exists() else "deepspeed", f"--master_port={free_port()}", "tools/pretrain.py",
           "--ds_config", "ds_configs/zero2.json", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500, start_new_session=True)
    return out, proc


def test_default_main_job_runs_all_stages(default_run):
    out, proc = default_run
    for n in (1, 2, 3):
        d = out / f"stage{n}"
        assert (d / "DONE.json").is_file(), f"stage {n} did not finish:\n{tail(proc)}"
        rows = (d / "metrics.csv").read_text().splitlines()
        steps = json.loads((d / "DONE.json").read_text())["steps"]
        logged = -(-steps // 10)  # every 10th step and the last one
        assert len(rows) == 1 + logged and "lr" in rows[0] and "samples_per_s" in rows[0]
        assert (d / "checkpoints" / "latest").read_text().strip() == f"step_{steps:08d}"
        assert (d / "config.yaml").is_file() and list((d / "tensorboard").iterdir())
        enc = load_file(str(d / "encoder.safetensors"))
        assert enc and not any("decoder" in k for k in enc)
        meta = json.loads((d / "encoder.json").read_text())
        assert meta["stage"] == n and meta["model"]["embed_dim"] == 128
    header = (out / "stage3" / "metrics.csv").read_text().splitlines()[0]
    for term in ("text/mlm_loss", "pair/cmm_image_loss", "pair/cmm_text_loss", "pair/itc_loss", "pair/itm_loss"):
        assert term in header
    assert "momo-ds pretraining results" in proc.stdout and (out / "eval.json").is_file()


# Thresholds set from the default run (see README "Learning check"): stage 3 reached R@1 5.2/5.6 %, R@10
# 40.0/40.8 % (TR/IR) and ITM balanced accuracy 90.5 % (random negatives) on 500 held-out pairs, linear probe
# 36-45 % on 16 classes; chance is stated beside each. Over seeds 0-2 of stage 3 the same recipe gave R@10
# 28-41 % and ITM 88-92 % (benchmarks/results/ablations_align_cpu2_2026-12-02.md).
def test_learning_check_far_above_chance(default_run):
    out, proc = default_run
    report = json.loads((out / "eval.json").read_text())
    s2, s3 = report["stage2"], report["stage3"]
    r1 = (s3["retrieval/tr@1_pct"] + s3["retrieval/ir@1_pct"]) / 2
    r10 = (s3["retrieval/tr@10_pct"] + s3["retrieval/ir@10_pct"]) / 2
    chance_r1 = s3["retrieval/chance_r1_pct"]  # 100 / 500 pairs = 0.2 %
    assert r1 >= 10 * chance_r1, f"held-out R@1 {r1:.2f} % vs chance {chance_r1:.2f} %"
    assert r10 >= 15.0, f"held-out R@10 {r10:.2f} % vs chance {10 * chance_r1:.2f} %"
    for stage in ("stage1", "stage2", "stage3"):
        # Not a learning signal: random-init tiny encoders already probe at 50-53 % on these shapes (measured,
        # benchmarks/results/ablations_cpu2_2026-11-22.md). This only catches collapsed or non-finite features.
        top1, chance = report[stage]["linear_probe/top1"], report[stage]["linear_probe/chance_top1"]  # ~8.4 %
        assert top1 >= max(25.0, 2.5 * chance), f"{stage} linear probe {top1:.1f} % vs chance {chance:.1f} %"
    # ITM (chance 50 %): stage 2 never trains the head, so its export scores an untrained head
    itm, untrained = s3["itm/itm_random_bacc_pct"], s2["itm/itm_random_bacc_pct"]
    assert itm >= 80.0 and untrained < 65.0, f"held-out ITM balanced accuracy {itm:.1f} % (untrained {untrained:.1f} %)"
    s2_r10 = (s2["retrieval/tr@10_pct"] + s2["retrieval/ir@10_pct"]) / 2
    assert r10 >= s2_r10 + 10.0, f"stage 3 R@10 {r10:.1f} % did not improve on stage 2's {s2_r10:.1f} %"


def _stage3(out, extra=(), env=None, sets=()):
    args = ["--ds_config", "ds_configs/zero2.json", "--config", "tiny", "--stage", "3", "--out", str(out),
            "--max_steps", "4", "--save_every", "2", "--no_eval", *extra,
            "--set", *SMALL, "train.init_from=", "data.num_workers=1", *sets]
    return launch("tools/pretrain.py", args, env=env)


# the alignment switches: a separate image mask drawn by the loader, one ITM negative per pair with hard
# negatives, and an unmasked tail that starts at step 3 - after the checkpoint the resumed run starts from
SWITCHES = ["model.align_inputs=masked_image", "data.streams.pair.align_mask_ratio=0.5", "model.itm_negatives=1",
            "model.itm_hardness=1.0", "train.align_full_tail=0.5"]


@pytest.mark.parametrize("sets", [[], SWITCHES], ids=["recipe", "align_switches"])
def test_killed_run_resumes_bitwise_on_two_ranks(tmp_path, sets):
    a, b = tmp_path / "straight", tmp_path / "killed"
    p1 = _stage3(a, sets=sets)
    assert (a / "stage3" / "DONE.json").is_file(), tail(p1)
    assert all(s.split(".")[-1].replace("=", ": ") in (a / "stage3" / "config.yaml").read_text() for s in sets)
    p2 = _stage3(b, env={"MOMO_FAULT_AT_STEP": "3"}, sets=sets)
    assert not (b / "stage3" / "DONE.json").is_file(), "fault injection did not stop the run"
    assert (b / "stage3" / "checkpoints" / "latest").read_text().strip() == "step_00000002", tail(p2)
    p3 = _stage3(b, extra=["--resume"], sets=sets)
    assert (b / "stage3" / "DONE.json").is_file(), tail(p3)
    assert "resumed stage 3" in p3.stdout
    for name in ("shared_fp32.safetensors", "encoder.safetensors"):
        x, y = load_file(str(a / "stage3" / name)), load_file(str(b / "stage3" / name))
        assert set(x) == set(y)
        diff = [k for k in x if not torch.equal(x[k], y[k])]
        assert not diff, f"{name}: resumed weights differ from the uninterrupted run in {diff[:5]}"


def test_stage2_starts_from_stage1_weights(tmp_path):
    out = tmp_path / "run"
    common = ["--ds_config", "ds_configs/zero2.json", "--out", str(out), "--no_eval", "--set", *SMALL]
    p1 = pretrain(["--stage", "1", "--max_steps", "2", *common])
    assert (out / "stage1" / "DONE.json").is_file(), tail(p1)
    p2 = pretrain(["--stage", "2", "--max_steps", "0", *common])  # no update: stage 2's weights are its init
    assert (out / "stage2" / "DONE.json").is_file(), tail(p2)
    s1, s2 = load_file(str(out / "stage1" / "shared_fp32.safetensors")), load_file(str(out / "stage2" / "shared_fp32.safetensors"))
    enc1 = load_file(str(out / "stage1" / "encoder.safetensors"))
    assert enc1 and all(torch.equal(enc1[k], load_file(str(out / "stage2" / "encoder.safetensors"))[k]) for k in enc1)
    assert all(torch.equal(s1[k], s2[k]) for k in s1 if k in s2)


@pytest.mark.parametrize("args, needle", [
    (["--set", "train.bogus=1"], "unknown config key 'train.bogus'"),
    (["--config", "nope"], "--config 'nope'"),
    (["--ds_config", "tests/data/ds_contradiction.json"], "train_batch_size=7 contradicts the recipe"),
    (["--set", "data.synthetic=false"], "data.tokenizer=synthetic is the vocabulary of the built-in synthetic"),
    (["--set", "data.synthetic=false", "data.tokenizer=/nonexistent/vocab.txt"], "no shards given"),
    (["--set", "data.tokenizer=/nonexistent/vocab.txt", "data.streams.0.shards=['/nonexistent/shard-{000..001}.tar']"],
     "/nonexistent/shard-000.tar"),
    (["--set", "data.streams.image.shards=[/nonexistent/a-{0..1}.tar]", "data.streams.image.shards=[/x.tar]"],
     "data.streams.image.shards is given 2 times"),
])
def test_bad_start_up_input_is_one_line_error(tmp_path, args, needle):
    proc = pretrain(["--out", str(tmp_path / "o"), "--stage", "1", "--max_steps", "1", *args], timeout=300)
    assert proc.returncode != 0
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and needle in err[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def _logged(out: Path, stage: int, column: str) -> list[float]:
    with open(out / f"stage{stage}" / "metrics.csv") as f:
        return [float(row[column]) for row in csv.DictReader(f)]


def test_learning_check_reconstruction_losses_fall(default_run):
    """What stages 1 and 2 learn is reconstruction (the probe cannot show it, see above). Default run: stage-1 MIM
    1.22 -> 0.54, stage-2 MLM 5.97 -> 3.28 (first and last logged window). With the per-patch normalised target
    (norm_pix_loss), predicting each patch's mean scores 1.0."""
    out, _ = default_run
    mim = _logged(out, 1, "image/mim_loss")
    assert mim[-1] <= 0.7 and mim[-1] <= 0.6 * mim[0], f"stage-1 MIM loss {mim[0]:.3f} -> {mim[-1]:.3f}"
    mlm = _logged(out, 2, "text/mlm_loss")
    assert mlm[-1] <= 0.75 * mlm[0], f"stage-2 MLM loss {mlm[0]:.3f} -> {mlm[-1]:.3f}"
    itm = _logged(out, 3, "pair/itm_loss")
    assert itm[-1] < 0.55, f"stage-3 ITM loss {itm[0]:.3f} -> {itm[-1]:.3f} (a head at its 1:1 prior scores 0.693)"
    cmm_text = _logged(out, 3, "pair/cmm_text_loss")
    assert cmm_text[-1] <= 0.6 * cmm_text[0], f"stage-3 CMM text loss {cmm_text[0]:.3f} -> {cmm_text[-1]:.3f}"


def test_two_rank_synthetic_run_evaluates_on_every_rank(tmp_path):
    """The final evaluation reads the held-out split in per-rank shares and gathers features, so every rank must
    take part (rank 0 alone would wait in the gather forever); its numbers equal a one-process evaluation."""
    from momo_ds.data import make_synthetic
    from momo_ds.eval.runner import evaluate_synthetic

    out = tmp_path / "run"
    proc = launch("tools/pretrain.py", ["--ds_config", "ds_configs/zero2.json", "--stage", "1", "--out", str(out),
                                        "--max_steps", "1", "--set", *SMALL, "data.num_workers=0"], timeout=900)
    assert (out / "eval.json").is_file(), tail(proc)
    report = json.loads((out / "eval.json").read_text())["stage1"]
    single = evaluate_synthetic(out / "stage1" / "encoder.safetensors",
                                make_synthetic(out / "data", num=256, image_size=32, seed=0))
    for k, v in single["retrieval"].items():
        assert report[f"retrieval/{k}"] == pytest.approx(v, abs=1e-4), k
    for k, v in single["itm"].items():
        assert report[f"itm/{k}"] == pytest.approx(v, abs=1e-4), k


def _readme_snippet() -> str:
    """The README's three-line load_pretrained snippet, verbatim."""
    text = (ROOT / "README.md").read_text()
    return text.split("<!-- snippet: load_pretrained", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def _val_pairs(out: Path, n: int):
    """The first ``n`` held-out synthetic pairs of the run: (jpg bytes, caption)."""
    import tarfile

    pairs = {}
    for shard in sorted((out / "data" / "pair").glob("val-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.rsplit(".", 1)
                pairs.setdefault(key, {})[ext] = tar.extractfile(m).read()
        if len(pairs) >= n:
            break
    return [(p["jpg"], p["txt"].decode()) for p in list(pairs.values())[:n]]


def test_readme_snippet_embeds_with_the_stage3_export(default_run, tmp_path, monkeypatch):
    import io

    from PIL import Image

    out, _ = default_run
    code = _readme_snippet()
    assert len([line for line in code.splitlines() if line.strip()]) == 3, code
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "momo-tiny").symlink_to(out, target_is_directory=True)  # the README's paths, this run
    pairs = _val_pairs(out, 64)
    (tmp_path / "cat.jpg").write_bytes(pairs[0][0])
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    sim, m = ns["sim"], ns["m"]
    assert sim.shape == (1, 2) and torch.isfinite(sim).all() and sim.abs().max() <= 1.0 + 1e-5
    # the same three calls on 64 held-out pairs: each image's own caption ranks in its top 10 far above chance
    # (10 / 64 = 15.6 %); a random-init encoder stays near chance (tests/test_eval_runner.py)
    images = [Image.open(io.BytesIO(jpg)) for jpg, _ in pairs]
    s = m.similarity(m.image_features(images), m.text_features([t for _, t in pairs]))
    rank = (s > s.diagonal()[:, None]).sum(1)
    r10 = 100.0 * float((rank < 10).float().mean())
    assert r10 >= 35.0, f"README snippet features: image->text R@10 {r10:.1f} % on 64 held-out pairs"


def _random_orientation_probe(out: Path) -> dict:
    """The orientation probe of a random-init encoder with the run's tokenizer and config."""
    import dataclasses

    from momo_ds.data.synthetic_probe import make_orientation_probe
    from momo_ds.engine.checkpoint import export_encoder
    from momo_ds.eval.encoder import load_encoder
    from momo_ds.eval.runner import run_task
    from momo_ds.model import build_model

    trained = load_encoder(out / "stage1" / "encoder.safetensors")
    torch.manual_seed(0)
    model = build_model(trained.config)
    path = out.parent / "random" / "encoder.safetensors"
    path.parent.mkdir(exist_ok=True)
    export_encoder(model, path, {**trained.meta, "stage": 0, "model": dataclasses.asdict(trained.config),
                                 "tokenizer": str(out / "data" / "tokenizer.json")})
    probe = make_orientation_probe(out / "data" / "probe", image_size=trained.config.img_size)
    return run_task(load_encoder(path), "linear_probe", train=[probe.shards["train"]], val=[probe.shards["val"]])


@pytest.fixture(scope="module")
def random_probe(default_run):
    return _random_orientation_probe(default_run[0])


def test_orientation_probe_random_init_is_near_chance(default_run, random_probe):
    """The orientation probe is an instrument that can show learning: an untrained encoder sits near its 25 %
    chance (measured 33.9 %), where on the 16 coloured-shape classes it already reaches 50-53 %."""
    report = json.loads((default_run[0] / "eval.json").read_text())
    for stage in ("stage1", "stage2", "stage3"):
        assert report[stage]["orientation_probe/chance_top1"] == 25.0
        assert report[stage]["orientation_probe/val_n"] == 1000.0
    assert random_probe["chance_top1"] == 25.0 and random_probe["top1"] < 40.0, random_probe


@pytest.mark.xfail(strict=True, reason="not reached by the tiny recipes: stage 1 (120 MIM steps) probes at ~28 % "
                                       "against random init's ~34 % (README, 'Orientation probe')")
def test_orientation_probe_stage1_beats_random_init(default_run, random_probe):
    stage1 = json.loads((default_run[0] / "eval.json").read_text())["stage1"]["orientation_probe/top1"]
    assert stage1 >= random_probe["top1"] + 15.0, f"stage 1 {stage1:.1f} % vs random init {random_probe['top1']:.1f} %"


def test_synthetic_vqa_stage3_beats_random_init_and_majority(default_run):
    """VQA fine-tuning (tiny recipe, one epoch) of the stage-3 export, in eval.json, against the majority answer
    and a random-init encoder fine-tuned the same way. Measured: 57-63 % vs 46-48 % vs 22 % over 6 seeds."""
    from momo_ds.eval.encoder import load_encoder
    from momo_ds.eval.runner import synthetic_vqa
    from momo_ds.model import build_model

    out = default_run[0]
    s3 = json.loads((out / "eval.json").read_text())["stage3"]
    enc = load_encoder(out / "stage3" / "encoder.safetensors")
    torch.manual_seed(0)
    enc.model = build_model(enc.config).eval()  # the same config and tokenizer, untrained weights
    random_init = synthetic_vqa(enc, out / "data")
    pre, majority = s3["vqa/vqa_score"], s3["vqa/majority_score"]
    assert random_init["majority_score"] == majority and s3["vqa/val_n"] == random_init["val_n"] == 1500
    assert pre >= majority + 25.0, f"VQA {pre:.1f} % vs majority answer {majority:.1f} %"
    assert pre >= random_init["vqa_score"] + 5.0, f"VQA {pre:.1f} % vs random init {random_init['vqa_score']:.1f} %"


def test_readme_export_and_timm_snippet(default_run, tmp_path, monkeypatch):
    """The README's export command and timm snippet on the stage-3 export: timm's own transform and model give
    the encoder's [CLS] features, with the ImageNet mean/std it was trained with."""
    import io

    from PIL import Image

    import momo_ds

    out = default_run[0]
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "momo-tiny").symlink_to(out, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "export.py"), "--encoder",
                           "runs/momo-tiny/stage3/encoder.safetensors", "--out", "momo-tiny-hf"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (ROOT / "README.md").read_text()
    code = text.split("<!-- snippet: timm", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    image = Image.open(io.BytesIO(_val_pairs(out, 1)[0][0]))
    ns: dict = {"image": image}
    exec(compile(code, "README.md", "exec"), ns)
    m = momo_ds.load_pretrained("momo-tiny-hf")
    assert tuple(ns["cfg"]["mean"]) == (0.485, 0.456, 0.406) and tuple(ns["cfg"]["std"]) == (0.229, 0.224, 0.225)
    torch.testing.assert_close(ns["pooled"], m.cls_features(image), atol=1e-5, rtol=1e-5)
