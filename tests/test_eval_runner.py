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
    assert ret["images"] == ret["texts"] == 64 and ret["chance_r1"] == pytest.approx(100 / 64)
    # chance R@10 = 15.6 %: an untrained encoder's embeddings carry no image-text alignment
    assert (ret["tr@10"] + ret["ir@10"]) / 2 < 35.0, ret
    lp = r["linear_probe"]
    assert lp["classes"] == 16 and 0.0 <= lp["top1"] <= 100.0 and lp["val_n"] == 64


def _err(capsys, argv):
    code = evaluate_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_inputs_are_one_line_errors(tmp_path, capsys, random_encoder, synthetic):
    assert "encoder file not found" in _err(capsys, ["--encoder", str(tmp_path / "nope.safetensors"),
                                                     "--task", "retrieval"])
    assert "unknown task 'vqa'" in _err(capsys, ["--encoder", str(random_encoder), "--task", "vqa"])
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
