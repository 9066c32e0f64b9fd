"""Evaluation runner: a random-initialised encoder sits near chance on retrieval; bad inputs are one-line errors."""
import dataclasses
import json

import pytest
import torch

from momo_ds.data import make_synthetic
from momo_ds.engine.checkpoint import export_encoder
from momo_ds.eval.runner import evaluate_synthetic, run_task
from momo_ds.model import build_model
from tools.evaluate import main as evaluate_main


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn"), num=256, image_size=32, seed=3)


@pytest.fixture(scope="module")
def random_encoder(tmp_path_factory, synthetic):
    torch.manual_seed(0)
    model = build_model("tiny", decoders=[])
    path = tmp_path_factory.mktemp("enc") / "encoder.safetensors"
    export_encoder(model, path, {"stage": 0, "model": dataclasses.asdict(model.cfg), "tokenizer": synthetic.tokenizer})
    return path


def test_random_encoder_retrieval_near_chance(random_encoder, synthetic):
    r = evaluate_synthetic(random_encoder, synthetic)
    ret = r["retrieval"]
    assert ret["images"] == ret["texts"] == 64 and ret["chance_r1_pct"] == pytest.approx(100 / 64)
    # chance R@10 = 15.6 %: an untrained encoder's embeddings carry no image-text alignment
    assert (ret["tr@10_pct"] + ret["ir@10_pct"]) / 2 < 35.0, ret
    lp = r["linear_probe"]
    assert lp["classes"] == 16 and 0.0 <= lp["top1"] <= 100.0 and lp["val_n"] == 64
    itm = r["itm"]  # on the retrieval split; an untrained head tells no pair from another
    assert itm["pairs"] == 64 and 35.0 < itm["itm_random_bacc_pct"] < 65.0, itm


def test_eval_json_has_itm_per_stage_and_none_for_an_export_without_the_head(tmp_path, random_encoder, synthetic):
    from safetensors.torch import load_file, save_file

    from momo_ds.engine.run import evaluate_run
    for n in (1, 2):
        (tmp_path / f"stage{n}").mkdir()
        (tmp_path / f"stage{n}" / "encoder.json").write_text(random_encoder.with_suffix(".json").read_text())
    (tmp_path / "stage1" / "encoder.safetensors").write_bytes(random_encoder.read_bytes())
    old = {k: v for k, v in load_file(str(random_encoder)).items() if not k.startswith("itm_head.")}
    save_file(old, str(tmp_path / "stage2" / "encoder.safetensors"))  # written before exports had the ITM head
    report = evaluate_run(tmp_path, [1, 2], synthetic)
    assert json.loads((tmp_path / "eval.json").read_text()) == report
    itm_keys = {"itm/itm_random_bacc_pct", "itm/itm_hard_bacc_pct", "itm/itm_pos_acc_pct",
                "itm/itm_random_neg_acc_pct", "itm/itm_hard_neg_acc_pct", "itm/pairs"}
    assert itm_keys <= set(report["stage1"]) and not itm_keys & set(report["stage2"])
    same = {k: v for k, v in report["stage1"].items() if not k.startswith("itm/")}
    assert report["stage2"] == same, "the same encoder: retrieval and linear probe do not depend on ITM"


def _err(capsys, argv):
    code = evaluate_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_inputs_are_one_line_errors(tmp_path, capsys, random_encoder, synthetic):
    assert "encoder file not found" in _err(capsys, ["--encoder", str(tmp_path / "nope.safetensors"),
                                                     "--task", "retrieval"])
    assert "unknown task 'nlvr2'" in _err(capsys, ["--encoder", str(random_encoder), "--task", "nlvr2"])
    assert "vqa needs --vqa" in _err(capsys, ["--encoder", str(random_encoder), "--task", "vqa"])
    assert "needs --pairs" in _err(capsys, ["--encoder", str(random_encoder), "--task", "retrieval"])
    assert "shard not found" in _err(capsys, ["--encoder", str(random_encoder), "--task", "retrieval",
                                              "--pairs", str(tmp_path / "missing-{000..001}.tar")])
    # encoder/config mismatch: the recorded config says depth 2, the weights have 4 blocks
    bad = tmp_path / "bad" / "encoder.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(random_encoder.read_bytes())
    meta = json.loads(random_encoder.with_suffix(".json").read_text())
    meta["model"]["embed_dim"] = 64
    bad.with_suffix(".json").write_text(json.dumps(meta))
    assert "encoder/config mismatch" in _err(capsys, ["--encoder", str(bad), "--task", "retrieval",
                                                      "--pairs", synthetic.shards["pair"]["val"]])
    # empty split: a shard with no usable sample
    empty = tmp_path / "empty.tar"
    import tarfile
    with tarfile.open(empty, "w"):
        pass
    msg = _err(capsys, ["--encoder", str(random_encoder), "--task", "linear_probe", "--train", str(empty),
                        "--val", str(empty)])
    assert "empty" in msg or "no usable sample" in msg or "yields nothing" in msg, msg


def test_glue_text_classification_runs_and_scores(tmp_path, random_encoder, synthetic):
    from momo_ds.eval.encoder import load_encoder
    rows = ["sentence\tlabel"] + [f"a {c} circle\t{int(c == 'red')}" for c in ("red", "blue") * 16]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join(rows[:9]) + "\n")
    enc = load_encoder(random_encoder)
    r = run_task(enc, "glue", glue_task="sst2", train=[str(tmp_path / "train.tsv")], val=[str(tmp_path / "dev.tsv")],
                 epochs=10, lr=5e-4)
    assert r["acc"] == 100.0 and r["val_n"] == 8  # trivially separable: the fine-tuning path really learns
    with pytest.raises(ValueError, match="missing column"):
        (tmp_path / "x.tsv").write_text("text\tlabel\nhi\t1\n")
        run_task(enc, "glue", glue_task="sst2", train=[str(tmp_path / "x.tsv")], val=[str(tmp_path / "x.tsv")])


def _mrpc(path, rows: int, words: int):
    """An MRPC file in the real GLUE layout whose sentence pairs run past the tiny encoder's 64 positions."""
    lines = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    for i in range(rows):
        c = ("red", "blue")[i % 2]
        lines.append(f"{int(c == 'red')}\t{2 * i}\t{2 * i + 1}\t{' '.join([f'a {c} circle'] * words)}\t"
                     f"\"the\" {c} one")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_glue_on_tiny_encoder_defaults_max_len_to_its_position_table(tmp_path, capsys, random_encoder):
    """The tiny preset has 64 text positions; GLUE's usual 128 used to fail on every text longer than 64."""
    train, dev = _mrpc(tmp_path / "train.tsv", 8, 30), _mrpc(tmp_path / "dev.tsv", 4, 30)
    out = tmp_path / "r" / "glue.json"
    argv = ["--encoder", str(random_encoder), "--task", "glue", "--glue_task", "MRPC", "--train", train, "--val", dev,
            "--epochs", "1", "--json", str(out)]
    assert evaluate_main(argv) == 0, capsys.readouterr().err
    r = json.loads(out.read_text())["glue"]
    assert set(r) == {"acc", "f1", "train_n", "val_n"} and r["val_n"] == 4
    assert evaluate_main([*argv, "--max_len", "16"]) == 0
    msg = _err(capsys, [*argv, "--max_len", "100"])
    assert "--max_len 100" in msg and "max_text_len 64" in msg, msg


def test_finished_tasks_survive_a_failing_one(tmp_path, capsys, random_encoder, synthetic):
    out = tmp_path / "eval.json"
    code = evaluate_main(["--encoder", str(random_encoder), "--task", "retrieval", "glue", "--glue_task", "sst2",
                          "--pairs", synthetic.shards["pair"]["val"], "--train", str(tmp_path / "no.tsv"),
                          "--val", str(tmp_path / "no.tsv"), "--json", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: glue: text classification data not found")
    r = json.loads(out.read_text())
    assert r["glue"] == {"error": err[0].removeprefix("error: glue: ")}
    assert {"tr@1_pct", "ir@10_pct", "chance_r1_pct"} <= set(r["retrieval"]) and "tr@1" not in r["retrieval"]


def test_a_crash_in_one_task_is_recorded_and_the_rest_still_run(tmp_path, capsys, monkeypatch, random_encoder):
    import tools.evaluate as cli

    def fake(enc, task, **kw):
        if task == "retrieval":
            raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")
        return {"top1": 50.0}

    monkeypatch.setattr(cli, "run_task", fake)
    out = tmp_path / "eval.json"
    code = cli.main(["--encoder", str(random_encoder), "--task", "retrieval", "linear_probe", "--pairs", "p.tar",
                     "--train", "t.tar", "--val", "v.tar", "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" in err
    assert err.strip().splitlines()[-1] == "error: retrieval: RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"
    assert json.loads(out.read_text()) == {
        "retrieval": {"error": "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"},
        "linear_probe": {"top1": 50.0}}


def test_first_user_mistakes_are_one_line_errors_before_any_task_runs(tmp_path, capsys, random_encoder, synthetic):
    enc, pairs = ["--encoder", str(random_encoder)], ["--pairs", synthetic.shards["pair"]["val"]]
    out = tmp_path / "eval.json"
    assert "unknown task 'nlvr2'" in _err(capsys, [*enc, "--task", "retrieval", "nlvr2", *pairs, "--json", str(out)])
    assert not out.exists(), "the typo in the second task must stop the command before retrieval runs"
    assert "glue needs --glue_dir (the suite) or --glue_task" in _err(capsys, [*enc, "--task", "glue", "--train", "a", "--val", "b"])
    assert "--device 'gpu'" in _err(capsys, [*enc, "--task", "retrieval", *pairs, "--device", "gpu"])
    if not torch.cuda.is_available():
        assert "CUDA is not available" in _err(capsys, [*enc, "--task", "retrieval", *pairs, "--device", "cuda"])
    assert "is a directory" in _err(capsys, [*enc, "--task", "retrieval", *pairs, "--json", str(tmp_path)])
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "cannot create its folder" in _err(capsys, [*enc, "--task", "retrieval", *pairs, "--json",
                                                       str(blocker / "eval.json")])
