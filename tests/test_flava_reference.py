"""benchmarks/flava_reference.py: a --quick run trains FLAVA on a tiny synthetic dataset and reports finite losses
and retrieval in [0, 100]; the FLOP-matched step count follows from the counted step FLOPs; the ITM negatives
and text masks are what FLAVA's forward expects."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import flava_reference as fr  # noqa: E402

RETRIEVAL_KEYS = ("tr_r1", "ir_r1", "tr_r5", "ir_r5", "tr_r10", "ir_r10", "r1", "r10")


@pytest.fixture
def keep_threads():
    """main() sets torch's thread count (common.set_threads): give the rest of the session its own back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_quick_run_reports_finite_losses_and_retrieval(tmp_path, keep_threads):
    out = tmp_path / "flava.json"
    assert fr.main(["--quick", "--out", str(tmp_path / "runs"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "flava_reference" and report["quick"] is True
    assert {"machine", "versions", "config", "results", "summary"} <= set(report)
    losses = report["config"]["losses"]
    assert set(losses) == {"global_contrastive", "itm", "mmm_text", "mlm"}  # no codebook: no MIM / MMM-image
    (row,) = report["results"]
    for when in ("first_losses", "final_losses"):
        assert set(losses) <= set(row[when]), row[when]
        assert all(math.isfinite(row[when][k]) for k in (*losses, "loss"))
    assert row["final_losses"]["loss"] < 2 * row["first_losses"]["loss"]  # 4 steps need not descend, nor blow up
    for k in RETRIEVAL_KEYS:
        assert 0.0 <= row[k] <= 100.0, (k, row[k])
    assert row["eval_pairs"] == 64  # the held-out pair split of 256 samples: max(64, 256 // 8)
    assert 0.0 <= row["itm_random_bacc"] <= 100.0
    # the step count is the counted FLOPs' answer to the target (--quick then trains its own few steps)
    assert row["steps"] == fr.QUICK["steps"]
    assert row["step_flops"] > 0 and row["match_flops"] > 0
    assert row["steps_flop_matched"] == fr.flop_matched_steps(row["match_flops"], row["step_flops"])
    assert row["train_tflop"] == pytest.approx(row["steps"] * row["step_flops"] / 1e12)


def test_flop_matched_steps():
    assert fr.flop_matched_steps(23.1e12, 81.0e9) == 285
    assert fr.flop_matched_steps(10.0, 4.0) == 2  # round(2.5) to even, as Python rounds
    assert fr.flop_matched_steps(1e9, 1e12) == 1  # never zero steps
    with pytest.raises(ValueError):
        fr.flop_matched_steps(1e12, 0.0)


def _texts(b: int, width: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, width + 1, (b,), generator=g)
    mask = torch.arange(width)[None] < lengths[:, None]
    ids = torch.randint(5, 90, (b, width), generator=g).masked_fill(~mask, 0)
    return ids, mask


def test_itm_negatives_swap_captions_without_duplicates():
    ids, mask = _texts(32)
    ids[1] = ids[0]  # a repeated caption: taking it is no mismatch
    mask[1] = mask[0]
    new_ids, new_mask, labels = fr.itm_negatives(ids, mask, 1.0, torch.Generator().manual_seed(0))
    rows = sorted(tuple(r.tolist()) for r in new_ids)
    assert rows == sorted(tuple(r.tolist()) for r in ids)  # a permutation: every caption once
    same = (new_ids == ids).all(dim=1) & (new_mask == mask).all(dim=1)
    assert torch.equal(labels, same.long())
    assert labels.sum() <= 2  # only the repeated caption can land on its twin
    kept, kept_mask, all_match = fr.itm_negatives(ids, mask, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(kept, ids) and torch.equal(kept_mask, mask) and bool((all_match == 1).all())


def test_mlm_targets_mask_real_tokens_only():
    ids, mask = _texts(64)
    text = fr.TextIds(cls=2, mask=4, pad=0, vocab=90, first_word=5)
    masked, labels = fr.mlm_targets(ids, mask, text, torch.Generator().manual_seed(0))
    picked = labels != fr.IGNORE
    assert not (picked & ~mask).any() and bool(picked.any(dim=1).all())  # real tokens, at least one per text
    assert torch.equal(labels[picked], ids[picked])
    assert torch.equal(masked[~picked], ids[~picked])
    share = float((masked[picked] == text.mask).float().mean())
    assert 0.6 < share < 0.95  # 80 % [MASK], the rest random words or unchanged


def test_pair_inputs_without_codebook_ignore_mim():
    ids, mask = _texts(8)
    # the PairBatch fields pair_inputs reads
    batch = SimpleNamespace(image=SimpleNamespace(images=torch.randn(8, 3, 32, 32)),
                            text=SimpleNamespace(full_ids=ids, full_mask=mask), batch_size=8)
    text = fr.TextIds(cls=2, mask=4, pad=0, vocab=90, first_word=5)
    x = fr.pair_inputs(batch, 8, 64, text, torch.Generator().manual_seed(0), 0.5, with_codebook=False)
    assert "codebook_pixel_values" not in x and not x["bool_masked_pos"].any()
    assert bool((x["mim_labels"] == fr.IGNORE).all())
    assert bool((x["input_ids"][:, 0] == text.cls).all()) and bool((x["attention_mask"][:, 0] == 1).all())
    assert x["input_ids"].shape == x["input_ids_masked"].shape == x["mlm_labels"].shape
    assert bool((x["mlm_labels"][:, 0] == fr.IGNORE).all())
