"""The main job on a user's own data, from the command line: shards made with tools/make_shards.py from raw
files, a BERT vocab.txt, all three stages with streams addressed by name; and one error line when one rank's
share of a stream has no usable sample."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from momo_ds.distributed import free_port
from tests.multirank import ROOT, tail

pytestmark = pytest.mark.timeout(1800)
WORDS = ["a", "red", "blue", "green", "circle", "square", "small", "large", "on", "the", "left", "right", "and"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]


def _image(i: int, size: int = 40) -> Image.Image:
    colour = [(200, 40, 40), (40, 40, 200), (40, 180, 60)][i % 3]
    img = Image.new("RGB", (size + i % 7, size), (250, 250, 250))
    img.paste(colour, (4 + i % 5, 6, 24 + i % 5, 26))
    return img


def make_sources(root: Path) -> dict[str, Path]:
    """Raw files as a user has them: class folders of images, a text file, a captions JSONL, a vocab.txt."""
    for i in range(24):
        folder = root / "images" / ["red", "blue", "green"][i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        _image(i).save(folder / f"{i:03d}.jpg", quality=90)
    paragraphs = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(12)) for i in range(40)]
    (root / "books.txt").write_text("\n\n".join(paragraphs) + "\n")
    captions = root / "captions.jsonl"
    (root / "pics").mkdir()
    with captions.open("w") as f:
        for i in range(24):
            _image(i).save(root / "pics" / f"{i:03d}.png")
            colour = ["red", "blue", "green"][i % 3]
            f.write(json.dumps({"image": f"pics/{i:03d}.png", "caption": f"a {colour} square on the left"}) + "\n")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return {"images": root / "images", "text": root / "books.txt", "captions": captions, "vocab": root / "vocab.txt"}


def make_shards(args: list[str]) -> str:
    proc = subprocess.run([sys.executable, "tools/make_shards.py", *args, "--shard-size", "8"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, tail(proc)
    pattern = next(line.split("shards:", 1)[1].strip() for line in proc.stdout.splitlines()
                   if line.startswith("shards:"))
    assert "{" in pattern, proc.stdout
    return pattern


def run_cli(args: list[str], nproc: int = 1, timeout: int = 900) -> subprocess.CompletedProcess:
    """The deepspeed launcher, as users start the main job."""
    launcher = Path(sys.executable).with_name("deepspeed")
    cmd = [str(launcher) if launcher.exists() else "deepspeed", f"--master_port={free_port()}",
           f"--num_gpus={nproc}", "tools/pretrain.py", "--ds_config", "ds_configs/zero2.json", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env,
                          start_new_session=True)


def test_three_stages_on_real_shards_from_the_cli(tmp_path):
    src = make_sources(tmp_path / "raw")
    image = make_shards(["images", "--root", str(src["images"]), "--out", str(tmp_path / "shards/image")])
    text = make_shards(["texts", str(src["text"]), "--out", str(tmp_path / "shards/text")])
    pair = make_shards(["captions", str(src["captions"]), "--out", str(tmp_path / "shards/pair")])
    out = tmp_path / "run"
    proc = run_cli(["--out", str(out), "--max_steps", "2", "--resume", "--set",
                    f"data.streams.image.shards=[{image}]", f"data.streams.text.shards=[{text}]",
                    f"data.streams.pair.shards=[{pair}]", f"data.tokenizer={src['vocab']}",
                    "data.streams.image.batch_size=4", "data.streams.text.batch_size=4",
                    "data.streams.pair.batch_size=4", "train.warmup_steps=1", "train.log_every=1"])
    log = proc.stdout + proc.stderr
    for n in (1, 2, 3):
        assert (out / f"stage{n}" / "DONE.json").is_file(), f"stage {n} did not finish:\n{tail(proc, 6000)}"
    assert "no checkpoint of stage 1" in log and "starting it from step 0" in log  # --resume on an empty --out
    assert "built-in synthetic dataset is off" in log and "has 18 tokens, 4% of model.vocab_size=512" in log
    assert not (out / "data").exists() and not (out / "eval.json").exists(), "synthetic parts ran on real data"
    assert "evaluation runs on the synthetic data only" in log
    config = (out / "stage3" / "config.yaml").read_text()
    assert "synthetic: false" in config and pair in config

    # The export alone is enough: copy it away from the run, remove the vocab.txt it was trained with.
    meta = json.loads((out / "stage3" / "encoder.json").read_text())
    assert meta["tokenizer"] == "encoder.tokenizer.json" and meta["tokenizer_source"] == str(src["vocab"])
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("encoder.safetensors", "encoder.json", "encoder.tokenizer.json"):
        shutil.copy(out / "stage3" / name, moved / name)
    from momo_ds.data import load_tokenizer
    from momo_ds.eval.encoder import load_encoder

    reference = load_tokenizer(src["vocab"]).encode(["a red square on the left"])
    shutil.rmtree(tmp_path / "raw")
    enc = load_encoder(moved / "encoder.safetensors")
    assert Path(enc.tokenizer) == moved / "encoder.tokenizer.json"
    assert load_tokenizer(enc.tokenizer).encode(["a red square on the left"]) == reference


def _half_broken_shard(path: Path, n: int = 8) -> None:
    """One shard whose odd samples are corrupt: split at sample level over 2 ranks, rank 1 gets only those."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for i in range(n):
            buf = io.BytesIO()
            _image(i, 32).save(buf, format="JPEG")
            sink.write({"__key__": f"s{i:04d}", "jpg": buf.getvalue() if i % 2 == 0 else b"\xff\xd8 not a jpeg",
                        "cls": str(i % 3).encode()})


def test_starved_rank_gives_one_error_line_on_two_ranks(tmp_path):
    shard = tmp_path / "shards" / "train-000000.tar"
    _half_broken_shard(shard)
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    proc = run_cli(["--stage", "1", "--out", str(tmp_path / "run"), "--max_steps", "3", "--set",
                    f"data.streams.image.shards=[{shard}]", f"data.tokenizer={tmp_path / 'vocab.txt'}",
                    "data.streams.image.batch_size=2", "data.num_workers=1", "train.warmup_steps=1"], nproc=2)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, tail(proc)
    errors = [line for line in log.splitlines() if "error:" in line and "exits with return code" not in line]
    assert len(errors) == 1 and "rank 1: stream 'image': rank 1 worker 0 got no usable sample" in errors[0], \
        tail(proc, 6000)
    assert "Traceback" not in log and "DataLoader worker" not in log, tail(proc, 6000)
