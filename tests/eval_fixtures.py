"""Small evaluation fixtures: a COCO-style Karpathy split of synthetic scenes, GLUE files, a random encoder."""
import dataclasses
import json
import random
from pathlib import Path

import torch

from momo_ds.data import train_wordpiece
from momo_ds.data.synthetic import caption, random_scene, render
from momo_ds.engine.checkpoint import export_encoder
from momo_ds.model import build_model


def make_coco(root: Path, n_test: int = 24, n_train: int = 12, seed: int = 0) -> Path:
    """``root/dataset_coco.json`` + ``root/val2014/*.jpg`` (2-4 captions per image), ``root/tokenizer.json``
    trained on the captions, and ``root/encoder.safetensors``: a random-init tiny encoder using it."""
    rng = random.Random(seed)
    entries, texts = [], []
    (root / "val2014").mkdir(parents=True, exist_ok=True)
    for i in range(n_test + n_train):
        scene = random_scene(rng)
        name = f"COCO_val2014_{i:012d}.jpg"
        render(scene, 32, rng).save(root / "val2014" / name, quality=95)
        caps = [caption(scene, rng) for _ in range(rng.randint(2, 4))]
        texts += caps
        entries.append({"filepath": "val2014", "filename": name, "imgid": i, "cocoid": i,
                        "split": "test" if i < n_test else "train",
                        "sentences": [{"raw": c, "tokens": c.split()} for c in caps]})
    (root / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": entries}))
    tok = train_wordpiece(texts + [f"the picture is {w}" for w in ("good", "bad", "great", "awful")],
                          root / "tokenizer.json", vocab_size=512)
    torch.manual_seed(seed)
    model = build_model("tiny", decoders=[], vocab_size=tok.vocab_size)
    export_encoder(model, root / "encoder.safetensors",
                   {"stage": 0, "model": dataclasses.asdict(model.cfg), "tokenizer": str(root / "tokenizer.json")})
    return root


def make_glue(root: Path, n: int = 48, seed: int = 0) -> Path:
    """A GLUE-layout folder with SST-2 (a learnable sentiment rule), MRPC and STS-B in their real TSV columns."""
    rng = random.Random(seed)
    good, bad = ("good", "great"), ("bad", "awful")

    def sst(k):
        rows = []
        for _ in range(k):
            y = rng.randint(0, 1)
            rows.append(f"the picture is {rng.choice(good if y else bad)}\t{y}")
        return "sentence\tlabel\n" + "\n".join(rows) + "\n"

    def mrpc(k):
        rows = [f"{rng.randint(0, 1)}\t{i}\t{i + 1}\ta red circle\ta {rng.choice(['red', 'blue'])} circle"
                for i in range(k)]
        return "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "\n".join(rows) + "\n"

    def stsb(k):
        rows = [f"main\tx\t{i}\t{i}\tx\t{rng.uniform(0, 5):.2f}\ta large square\ta small square"
                for i in range(k)]
        return "index\tgenre\tfilename\tyear\told_index\tscore\tsentence1\tsentence2\n" + "\n".join(rows) + "\n"

    for folder, make in (("SST-2", sst), ("MRPC", mrpc), ("STS-B", stsb)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "train.tsv").write_text(make(n))
        (root / folder / "dev.tsv").write_text(make(n // 2))
    return root
