"""The GLUE suite (a learning-rate grid per task, best dev result), the paper's Table-2 report, and
``tools/evaluate.py --suite paper`` over a folder holding part of the data."""
import json
import shutil

import pytest
import torch

from momo_ds.data.synthetic_vqa import make_synthetic_vqa
from momo_ds.eval.encoder import load_encoder
from momo_ds.eval.glue_suite import glue_files, run_glue_suite
from momo_ds.eval.paper import COLUMNS, PAPER_ROWS, markdown_table, our_row, retrieval_cell
from momo_ds.eval.runner import _tokenizer, run_task
from tests.eval_fixtures import make_coco, make_glue
from tools.evaluate import main as evaluate_main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    make_coco(root / "coco")
    make_glue(root / "glue")
    make_synthetic_vqa(root / "vqa", num_train_images=16, num_val_images=8, questions_per_image=3)
    return root


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_glue_suite_grid_picks_best_and_leaves_the_encoder(data):
    enc = load_encoder(data / "coco" / "encoder.safetensors")
    before = _weights(enc.model)
    lines = []
    r = run_glue_suite(enc.model, _tokenizer(enc, None), data / "glue", lrs=(1e-5, 1e-3), epochs=1, max_len=16,
                       say=lines.append)
    assert set(r) == {"sst2", "mrpc", "stsb", "missing"} and r["missing"] == ["rte", "qqp", "mnli", "qnli", "cola"]
    for task, metrics in (("sst2", ("acc",)), ("mrpc", ("acc", "f1")), ("stsb", ("pearson", "spearman"))):
        grid = r[task]["grid"]
        assert set(grid) == {"1e-05", "0.001"} and r[task]["lr"] in (1e-5, 1e-3)
        mean = {lr: sum(g[m] for m in metrics) / len(metrics) for lr, g in grid.items()}
        assert mean[f"{r[task]['lr']:g}"] == max(mean.values())  # the best dev result is reported
        assert all(r[task][m] == grid[f"{r[task]['lr']:g}"][m] for m in metrics)
    assert len(lines) == 6 and all(line.startswith("glue ") for line in lines)
    after = _weights(enc.model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # every run fine-tuned a copy


def test_single_glue_task_trains_a_copy(data):
    enc = load_encoder(data / "coco" / "encoder.safetensors")
    before = _weights(enc.model)
    sst = data / "glue" / "SST-2"
    r = run_task(enc, "glue", glue_task="SST-2", train=[str(sst / "train.tsv")], val=[str(sst / "dev.tsv")],
                 epochs=1, max_len=16)
    assert 0 <= r["acc"] <= 100
    after = _weights(enc.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_glue_files_layouts(tmp_path):
    (tmp_path / "MNLI").mkdir()
    for name in ("train.tsv", "dev_matched.tsv"):
        (tmp_path / "MNLI" / name).write_text("x")
    (tmp_path / "rte").mkdir()
    for name in ("train.jsonl", "validation.jsonl"):
        (tmp_path / "rte" / name).write_text("x")
    assert glue_files(tmp_path, "mnli")[1].name == "dev_matched.tsv"
    assert glue_files(tmp_path, "RTE")[1].name == "validation.jsonl"
    assert glue_files(tmp_path, "sst2") is None
    with pytest.raises(ValueError, match="none of the GLUE tasks"):
        run_glue_suite(None, None, tmp_path, tasks=("sst2",))


def test_paper_row_layout():
    results = {"vqa": {"vqa_score": 61.25}, "coco": {"tr@1_pct": 10.0, "tr@5_pct": 30.0, "ir@1_pct": 20.0,
                                                     "ir@5_pct": 40.0},
               "glue": {"mrpc": {"acc": 70.0, "f1": 80.5}, "stsb": {"pearson": 50.0, "spearman": 49.0}},
               "imagenet": {"top1": 33.3}}
    assert retrieval_cell(results["coco"]) == 25.0 and retrieval_cell({"tr@1_pct": 1.0}) is None
    row = dict(zip(COLUMNS, our_row(results)))
    assert row == {"VQAv2": "61.2", "COCO": "25.0", "Flickr30K": "–", "SST-2": "–", "RTE": "–", "MRPC": "70.0/80.5",
                   "QQP": "–", "MNLI": "–", "QNLI": "–", "STS-B": "50.0/49.0", "ImageNet LE": "33.3"}
    table = markdown_table(results).splitlines()
    assert len(table) == 2 + 2 + len(PAPER_ROWS) + 1 and table[-1].startswith("| ours | 61.2 | 25.0 |")
    assert all(len(cells) == len(COLUMNS) for cells in PAPER_ROWS.values())


def test_suite_cli_runs_what_the_folder_holds(data, tmp_path, capsys):
    out = tmp_path / "paper.json"
    code = evaluate_main(["--encoder", str(data / "coco" / "encoder.safetensors"), "--suite", "paper", "--data",
                          str(data), "--json", str(out), "--epochs", "1", "--lrs", "1e-4", "--max_len", "16"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["not_run"] == ["flickr30k", "imagenet"] and report["coco"]["images"] == 24
    assert report["vqa"]["val_n"] == 24 and 0 <= report["vqa"]["vqa_score"] <= 100
    assert set(report) >= {"coco", "glue/sst2", "glue/mrpc", "glue/stsb"}
    md = out.with_suffix(".md").read_text()
    ours = next(line for line in md.splitlines() if line.startswith("| ours"))
    assert f"| {retrieval_cell(report['coco']):.1f} |" in ours and "MoMo (paper)" in md
    assert f"{report['glue/mrpc']['acc']:.1f}/{report['glue/mrpc']['f1']:.1f}" in ours
    assert ours.startswith(f"| ours (coco) | {report['vqa']['vqa_score']:.1f} |")


def test_vqa_cli_fine_tunes_a_copy(data, tmp_path, capsys):
    out = tmp_path / "vqa.json"
    assert evaluate_main(["--encoder", str(data / "coco" / "encoder.safetensors"), "--task", "vqa", "retrieval",
                          "--vqa", str(data / "vqa"), "--karpathy", str(data / "coco" / "dataset_coco.json"),
                          "--json", str(out)]) == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["vqa"]["train_n"] == 48 and report["vqa"]["majority_score"] <= report["vqa"]["oracle_score"]
    enc = load_encoder(data / "coco" / "encoder.safetensors")
    assert report["retrieval"] == run_task(enc, "retrieval", karpathy=str(data / "coco" / "dataset_coco.json"))
    assert evaluate_main(["--encoder", str(data / "coco" / "encoder.safetensors"), "--task", "vqa", "--vqa",
                          str(tmp_path)]) == 2
    assert "questions" in capsys.readouterr().err


def test_suite_errors(data, tmp_path, capsys):
    enc = str(data / "coco" / "encoder.safetensors")
    assert evaluate_main(["--encoder", enc, "--suite", "paper"]) == 2
    assert "needs --data" in capsys.readouterr().err
    assert evaluate_main(["--encoder", enc, "--suite", "paper", "--data", str(tmp_path)]) == 2
    assert "no suite data" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(data / "coco", broken / "coco")
    (broken / "coco" / "dataset_coco.json").write_text("{")
    assert evaluate_main(["--encoder", enc, "--suite", "paper", "--data", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "error: coco:" in err and "not a JSON file" in err
