"""VQAv2 fine-tuning: the joint encoder over [image, question] with a classifier over the answer vocabulary.

The encoder reads ``[CLS] + patches + question tokens`` (:meth:`MoMo.encode_pair`); a head on the final joint
[CLS] state, Linear(D, 2D) -> LayerNorm -> GELU -> Linear(2D, A) (ViLT / VLMo), scores the A answers of the train
vocabulary (:func:`momo_ds.eval.vqa_data.answer_vocab`). The loss is binary cross-entropy with logits against the
soft scores min(1, humans / 3), summed over answers and averaged over the batch (ViLT's scaling: BCE's mean times
A). AdamW with weight decay on weight matrices only, linear warm-up then linear (or cosine) decay to 0, the head at
``head_lr_mult`` times the encoder's learning rate (a fresh head must move much further than pretrained weights).
Images are resized whole to ``image_size`` squared (no crop: a crop could cut away what a question asks about; no
flip: questions say left and right). Single process, seeded: the same inputs give the same numbers (on CPU
exactly). The metric is the official VQA accuracy (:func:`vqa_accuracy`), in percent.

``model`` is fine-tuned IN PLACE (and re-gridded when ``image_size`` differs from its own): pass
``copy.deepcopy(model)`` to keep the encoder. A test-dev submission: ``vocab = answer_vocab(train.questions)``,
``vqa, _ = train_vqa(model, tok, train, vocab, ...)``, then ``results_json(test, predict_vqa(vqa, tok, test,
vocab, max_len=40))`` written as JSON.

Recipes (``RECIPES``; keyword arguments of :func:`finetune_vqa`):

    base / large  VLMo / ViLT: 10 epochs, batch 256 (global), lr 3e-5 (large 2e-5), head x10 (ViLT; VLMo uses
                  a single lr), weight decay 0.01, 10 % warm-up then linear decay, 384 px (the fixed sin-cos
                  positions of MoMo are recomputed for the 24 x 24 grid), 40 question tokens, 3129 answers.
    tiny          the built-in synthetic set (:func:`synthetic_vqa_splits`, 32 px, 3000 training questions on
                  500 images): 1 epoch, batch 8, lr 3e-4, head x30, weight decay 0.01, 10 % warm-up then linear
                  decay; about 18 s on one CPU thread. One short epoch of small batches is where pretraining shows
                  most: the stage-3 export of the default run scores ~58 %, a random-init tiny encoder ~47 % (the
                  answer priors per question kind), always answering the top train answer ~22 %. More epochs or
                  images let the random-init encoder learn the scenes too and narrow the gap.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from momo_ds.data.transforms import normalize_images
from momo_ds.eval.text_cls import encode_examples
from momo_ds.eval.vqa_data import DEFAULT_NUM_ANSWERS, VqaSplit, answer_vocab, load_vqa_split, soft_scores

DEFAULT_MAX_LEN = 40  # ViLT's question length
RECIPES: dict[str, dict[str, Any]] = {
    "tiny": dict(epochs=1, lr=3e-4, batch_size=8, head_lr_mult=30.0, weight_decay=0.01, warmup_ratio=0.1),
    "base": dict(epochs=10, lr=3e-5, batch_size=256, head_lr_mult=10.0, weight_decay=0.01, warmup_ratio=0.1,
                 image_size=384),
    "large": dict(epochs=10, lr=2e-5, batch_size=256, head_lr_mult=10.0, weight_decay=0.01, warmup_ratio=0.1,
                  image_size=384),
}


class VqaHead(nn.Module):
    """Joint [CLS] state [B, D] -> answer logits [B, A]."""

    def __init__(self, dim: int, num_answers: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(),
                                 nn.Linear(2 * dim, num_answers))
        for m in self.net:
            if isinstance(m, nn.Linear):  # BERT / ViLT initialisation
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, cls: Tensor) -> Tensor:
        return self.net(cls)


class VqaModel(nn.Module):
    """Encoder (a MoMo) + VQA head."""

    def __init__(self, encoder: nn.Module, num_answers: int):
        super().__init__()
        self.encoder = encoder
        self.head = VqaHead(encoder.cfg.embed_dim, num_answers)

    def forward(self, images: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """images: [B, 3, S, S] normalised; ids, mask: [B, L] right-padded question -> logits [B, A] float32."""
        h, _ = self.encoder.encode_pair(images, ids, None, mask)
        return self.head(h[:, 0]).float()


def vqa_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """logits, targets: [B, A] -> BCE-with-logits summed over answers, mean over the batch (ViLT)."""
    return F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]


def vqa_accuracy(pred: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction in [0, 1]: the mean, over leaving each human out, of
    min(1, matches among the others / 3). Both sides must already be normalised.

    Closed form: leaving out one of the ``m`` matching humans leaves m - 1 matches, leaving out another one m.
    """
    n, m = len(answers), sum(a == pred for a in answers)
    if n == 0:
        raise ValueError("vqa_accuracy: the question has no human answers (unannotated split)")
    return (m * min(1.0, (m - 1) / 3.0) + (n - m) * min(1.0, m / 3.0)) / n


def set_image_size(model: nn.Module, image_size: int) -> None:
    """Re-grid a MoMo for ``image_size`` px in place: its image positions are the fixed 2-D sin-cos table of the
    patch grid, so a new grid needs no interpolation, only the table of the new size."""
    from momo_ds.model.embeddings import sincos_2d

    cfg = model.cfg
    if image_size == cfg.img_size:
        return
    if image_size % cfg.patch_size:
        raise ValueError(f"vqa: image_size {image_size} is not a multiple of the patch size {cfg.patch_size}")
    embed = model.image_embed
    embed.grid_size = image_size // cfg.patch_size
    embed.pos_embed = sincos_2d(embed.grid_size, cfg.embed_dim)[None].to(embed.pos_embed.device)
    model.cfg = replace(cfg, img_size=image_size)


class _Pixels:
    """uint8 [3, S, S] per image id, decoded once and kept while the cache holds less than ``cache_bytes``."""

    def __init__(self, split: VqaSplit, image_size: int, cache_bytes: int = 2 << 30):
        self.split = split
        self.transform = T.Compose([T.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC,
                                             antialias=True), T.PILToTensor()])
        self.cache: dict[int, Tensor] = {}
        self.room = cache_bytes // (3 * image_size * image_size)

    def __call__(self, image_ids: Sequence[int]) -> Tensor:
        """-> uint8 [B, 3, S, S]."""
        out = []
        for i in image_ids:
            x = self.cache.get(i)
            if x is None:
                x = self.transform(self.split.images.load(i))
                if len(self.cache) < self.room:
                    self.cache[i] = x
            out.append(x)
        return torch.stack(out)


def _param_groups(model: VqaModel, lr: float, head_lr_mult: float, weight_decay: float) -> list[dict]:
    """Decay on weight matrices only (not norms, biases, embeddings, [CLS]); the head at lr x head_lr_mult."""
    exempt = {f"encoder.{n}" for n in model.encoder.no_weight_decay()}
    groups: dict[tuple[bool, bool], list] = defaultdict(list)
    for name, p in model.named_parameters():
        if p.requires_grad:
            decay = p.ndim > 1 and name not in exempt and not name.endswith("embed.weight")
            groups[(name.startswith("head."), decay)].append(p)
    return [{"params": ps, "lr": lr * (head_lr_mult if head else 1.0), "weight_decay": weight_decay if decay else 0.0}
            for (head, decay), ps in sorted(groups.items())]


def _schedule(step: int, warmup: int, total: int, kind: str) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then linear or cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_vqa(model: nn.Module, tokenizer, train: VqaSplit, vocab: Sequence[str], *, epochs: int, lr: float,
              batch_size: int, max_len: int, head_lr_mult: float = 30.0, weight_decay: float = 0.01,
              warmup_ratio: float = 0.1, schedule: str = "linear", seed: int = 0,
              device: torch.device = torch.device("cpu")) -> tuple[VqaModel, float]:
    """Fine-tune ``model`` (in place) + a fresh head on ``train`` -> (VqaModel in eval mode, last epoch's loss)."""
    if schedule not in ("linear", "cosine"):
        raise ValueError(f"vqa: schedule {schedule!r}; valid: linear, cosine")
    ids, mask = encode_examples(tokenizer, [q.question for q in train.questions], [None] * len(train), max_len)
    pixels = _Pixels(train, model.cfg.img_size)
    with torch.random.fork_rng(devices=[]):  # the head's init is seeded without moving the caller's generator
        torch.manual_seed(seed)
        vqa = VqaModel(model, len(vocab)).to(device).train()
    opt = torch.optim.AdamW(_param_groups(vqa, lr, head_lr_mult, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-8)
    total = epochs * math.ceil(len(train) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _schedule(s, max(1, round(warmup_ratio * total)), total, schedule))
    g, epoch_loss = torch.Generator().manual_seed(seed), float("nan")
    for _ in range(epochs):
        losses = []
        for idx in torch.randperm(len(train), generator=g).split(batch_size):
            rows = [train.questions[i] for i in idx.tolist()]
            images = normalize_images(pixels([q.image_id for q in rows])).to(device)
            with _autocast(device):
                logits = vqa(images, ids[idx].to(device), mask[idx].to(device))
            loss = vqa_loss(logits, soft_scores(rows, vocab).to(device))  # per batch: N x 3129 would be GiBs
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach())
        epoch_loss = float(torch.stack(losses).mean())
    return vqa.eval(), epoch_loss


@torch.no_grad()
def predict_vqa(vqa: VqaModel, tokenizer, split: VqaSplit, vocab: Sequence[str], *, max_len: int,
                batch_size: int = 256, device: torch.device = torch.device("cpu")) -> list[str]:
    """The highest-scoring vocabulary answer of every question of ``split`` (annotated or not), in order."""
    ids, mask = encode_examples(tokenizer, [q.question for q in split.questions], [None] * len(split), max_len)
    pixels, out = _Pixels(split, vqa.encoder.cfg.img_size), []
    for s in range(0, len(split), batch_size):
        rows = split.questions[s:s + batch_size]
        images = normalize_images(pixels([q.image_id for q in rows])).to(device)
        with _autocast(device):
            best = vqa(images, ids[s:s + batch_size].to(device), mask[s:s + batch_size].to(device)).argmax(1)
        out += [vocab[i] for i in best.tolist()]
    return out


def results_json(split: VqaSplit, answers: Sequence[str]) -> list[dict]:
    """The official results format (test-dev / test submissions): [{"question_id", "answer"}]."""
    return [{"question_id": q.question_id, "answer": a} for q, a in zip(split.questions, answers)]


def score_vqa(split: VqaSplit, predictions: Sequence[str], vocab: Sequence[str]) -> dict[str, float]:
    """VQA accuracy (%) of ``predictions``, of the majority baseline (always ``vocab[0]``, the most frequent
    train answer) and of the vocabulary's oracle (its best answer per question: the ceiling), overall and per
    answer type (``vqa_score/<answer_type>``, e.g. ``vqa_score/yes/no``)."""
    if not split.scored:
        raise ValueError(f"vqa: {split.source} has no annotations: it can be predicted (predict_vqa) but not scored")
    if len(predictions) != len(split):
        raise ValueError(f"vqa: {len(predictions)} predictions for the {len(split)} questions of {split.source}")
    known = set(vocab)
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])  # model, majority, oracle, count
    for q, pred in zip(split.questions, predictions):
        scores = (vqa_accuracy(pred, q.answers), vqa_accuracy(vocab[0], q.answers),
                  max((vqa_accuracy(a, q.answers) for a in set(q.answers) if a in known), default=0.0))
        for key in ("", "/" + q.answer_type):
            row = sums[key]
            for k, v in enumerate(scores):
                row[k] += v
            row[3] += 1
    out = {}
    for key, (model, majority, oracle, n) in sorted(sums.items()):
        out.update({f"vqa_score{key}": 100 * model / n, f"majority_score{key}": 100 * majority / n})
        if not key:
            out["oracle_score"] = 100 * oracle / n
    return out


def finetune_vqa(model: nn.Module, tokenizer, train: VqaSplit, val: VqaSplit, *, epochs: int = 1,
                 lr: float = 3e-4, batch_size: int = 8, max_len: Optional[int] = None,
                 image_size: Optional[int] = None, head_lr_mult: float = 30.0, weight_decay: float = 0.01,
                 warmup_ratio: float = 0.1, schedule: str = "linear", max_answers: int = DEFAULT_NUM_ANSWERS,
                 seed: int = 0, device: torch.device = torch.device("cpu")) -> dict[str, float]:
    """Fine-tune ``model`` (a MoMo, IN PLACE) on ``train`` and score ``val``: see the module docstring. The
    defaults are ``RECIPES["tiny"]``.

    max_len: question tokens (default min(40, the encoder's position table)); image_size: default the encoder's.
    -> {vqa_score, majority_score, oracle_score, vqa_score/<type>, majority_score/<type>, train_loss, train_n,
    val_n, answers}, scores in percent.
    """
    if not val.scored:
        raise ValueError(f"vqa: {val.source} has no annotations: it can be predicted (predict_vqa) but not scored")
    vocab = answer_vocab(train.questions, max_answers)
    max_len = max_len or min(DEFAULT_MAX_LEN, model.cfg.max_text_len)
    if max_len > model.cfg.max_text_len:
        raise ValueError(f"vqa: max_len {max_len} exceeds the encoder's max_text_len {model.cfg.max_text_len}")
    set_image_size(model, image_size or model.cfg.img_size)
    vqa, loss = train_vqa(model, tokenizer, train, vocab, epochs=epochs, lr=lr, batch_size=batch_size,
                          max_len=max_len, head_lr_mult=head_lr_mult, weight_decay=weight_decay,
                          warmup_ratio=warmup_ratio, schedule=schedule, seed=seed, device=device)
    out = score_vqa(val, predict_vqa(vqa, tokenizer, val, vocab, max_len=max_len, device=device), vocab)
    out.update(train_loss=loss, train_n=float(len(train)), val_n=float(len(val)), answers=float(len(vocab)))
    return out


def synthetic_vqa_splits(data_root: Union[str, Path], image_size: int = 32, seed: int = 0,
                         **sizes: int) -> tuple[VqaSplit, VqaSplit]:
    """(train, val) of the built-in synthetic VQA set, built (or reused) in ``<data_root>/vqa`` next to the
    synthetic pretraining data (e.g. a default run's ``<out>/data``); ``sizes``: make_synthetic_vqa's counts.
    Fine-tune with ``finetune_vqa(model, tokenizer, train, val, **RECIPES["tiny"], seed=...)``."""
    from momo_ds.data.synthetic_vqa import make_synthetic_vqa

    info = make_synthetic_vqa(Path(data_root) / "vqa", image_size=image_size, seed=seed, **sizes)
    return (load_vqa_split(info.root, info.subtypes["train"]), load_vqa_split(info.root, info.subtypes["val"]))
