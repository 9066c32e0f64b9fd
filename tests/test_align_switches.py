"""The stage-3 switches for what contrastive and ITM see: a separate image mask ratio (FLIP's masking), the
unmasked tail, and ITM with one negative per pair."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from momo_ds.config import ConfigError, RecipeConfig, StreamConfig, TrainConfig
from momo_ds.typed import from_dict
from momo_ds.data.collate import collate_pairs
from momo_ds.data.masking import num_masked_patches
from momo_ds.engine.cmga import CMGAStep
from momo_ds.engine.stage import align_full_from
from momo_ds.model import build_model
from momo_ds.objectives.task import PretrainTask

TINY = dict(depth=2, decoder_depth=1)


def _pair_items(b: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8) for _ in range(b)]
    texts = [torch.randint(1, 500, (int(n),), generator=g).tolist() for n in torch.randint(3, 12, (b,), generator=g)]
    return images, texts


def test_align_mask_is_drawn_after_and_apart_from_the_cmm_masks():
    images, texts = _pair_items()
    plain = collate_pairs(images, texts, 4, 0, 0.75, 0.75, torch.Generator().manual_seed(3))
    both = collate_pairs(images, texts, 4, 0, 0.75, 0.75, torch.Generator().manual_seed(3), align_mask_ratio=0.5)
    assert plain.align_keep is None
    for a, b in ((plain.image.patch_keep, both.image.patch_keep), (plain.image.patch_masked, both.image.patch_masked),
                 (plain.text.input_ids, both.text.input_ids), (plain.text.masked_ids, both.text.masked_ids)):
        assert torch.equal(a, b)  # the CMM batch is the one the loader gives without the switch
    keep = both.align_keep
    assert keep.shape == (6, 64 - num_masked_patches(64, 0.5)) and keep.dtype == torch.long
    assert torch.equal(keep, keep.sort(dim=1).values) and int(keep.max()) < 64
    assert all(len(set(row.tolist())) == keep.shape[1] for row in keep)
    assert not torch.equal(keep[:, :16], both.image.patch_keep)  # not the CMM-visible patches


def test_eval_batches_have_no_align_mask(tmp_path):
    from momo_ds.data.stream import StreamSpec, collate_stream

    images, texts = _pair_items(3)
    stream = StreamConfig(name="pair", kind="pair", objectives={"itc": 1.0}, batch_size=3, align_mask_ratio=0.5)
    spec = StreamSpec(stream=stream, urls=[], image_size=32, patch_size=4, train=False)
    assert collate_stream(spec, list(zip(images, texts)), 0, seed=1).align_keep is None
    assert collate_stream(replace(spec, train=True), list(zip(images, texts)), 0, seed=1).align_keep is not None


def _moved(images, idx: torch.Tensor, patch: int = 4, grid: int = 8):
    out = images.clone()
    for i, row in enumerate(idx):
        for j in row.tolist():
            r, c = divmod(j, grid)
            out[i, :, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] += 3.0
    return out


def test_contrastive_sees_exactly_the_align_patches_and_the_tail_sees_all():
    torch.manual_seed(0)
    model = build_model("tiny", align_inputs="masked_image", **TINY).eval()
    images, texts = _pair_items(4)
    pb = collate_pairs(images, texts, 4, 0, 0.75, 0.75, torch.Generator().manual_seed(1), align_mask_ratio=0.5)
    hidden = torch.stack([torch.tensor(sorted(set(range(64)) - set(r.tolist()))) for r in pb.align_keep])

    def itc(batch, align=None) -> torch.Tensor:
        with torch.no_grad():
            return PretrainTask(model)(batch, {"itc": 1.0}, align_inputs=align)["itc_loss"]

    base = itc(pb)
    outside = replace(pb, image=replace(pb.image, images=_moved(pb.image.images, hidden)))
    inside = replace(pb, image=replace(pb.image, images=_moved(pb.image.images, pb.align_keep)))
    torch.testing.assert_close(itc(outside), base)  # the patches it hides do not matter
    assert not torch.allclose(itc(inside), base)
    assert not torch.allclose(itc(outside, "full"), itc(pb, "full"))  # the unmasked tail sees every patch
    with pytest.raises(ValueError, match="align_keep"):
        itc(replace(pb, align_keep=pb.align_keep + 64))


def test_one_negative_encodes_two_joint_sequences_per_pair_not_three():
    torch.manual_seed(0)
    images, texts = _pair_items(4)
    pb = collate_pairs(images, texts, 4, 0, 0.75, 0.75, torch.Generator().manual_seed(1))
    rows = {}
    for negatives in (1, 2):
        model = build_model("tiny", itm_negatives=negatives, **TINY)
        seen = []
        original = model._forward_match
        model._forward_match = lambda j, f=original: seen.append(j.ids.shape[0]) or f(j)
        out = PretrainTask(model)(pb, {"itm": 1.0}, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(out["itm_loss"])
        rows[negatives] = seen
    assert rows == {1: [8], 2: [12]}


def test_switch_values_are_checked():
    with pytest.raises(ConfigError, match="itm_negatives"):
        build_model("tiny", itm_negatives=3)
    with pytest.raises(ConfigError, match="align_mask_ratio applies to pair streams"):
        StreamConfig(name="t", kind="text", objectives={"mlm": 1.0}, align_mask_ratio=0.5).validate("s")
    with pytest.raises(ConfigError, match="align_mask_ratio=1.0"):
        StreamConfig(name="p", kind="pair", objectives={"itc": 1.0}, align_mask_ratio=1.0).validate("s")
    pair = {"name": "p", "kind": "pair", "objectives": {"itc": 1.0}, "align_mask_ratio": 0.5}
    recipe = {"stage": 3, "preset": "tiny", "data": {"streams": [pair]}}
    with pytest.raises(ConfigError, match="needs model.align_inputs=masked_image"):
        from_dict(RecipeConfig, recipe).validate()
    from_dict(RecipeConfig, {**recipe, "model": {"align_inputs": "masked_image"}}).validate()
    with pytest.raises(ConfigError, match="align_full_tail"):
        from_dict(RecipeConfig, {"train": {"align_full_tail": 1.5}}).validate()


@pytest.mark.parametrize("tail, steps, first", [(0.0, 160, None), (0.1, 160, 144), (0.25, 4, 3), (1.0, 10, 0),
                                                (0.01, 10, None)])
def test_unmasked_tail_covers_the_last_share_of_steps(tail, steps, first):
    assert align_full_from(TrainConfig(max_steps=steps, align_full_tail=tail)) == first


class _Engine:
    """Records what CMGAStep asks of the model."""

    def __init__(self):
        self.calls = []

    def set_gradient_accumulation_boundary(self, flag):
        pass

    def __call__(self, batch, objectives, **kwargs):
        self.calls.append(kwargs.get("align_inputs"))
        return {"loss": torch.zeros(())}

    def backward(self, loss):
        pass

    def step(self):
        pass


def test_cmga_step_asks_for_full_inputs_in_the_tail_only_on_alignment_streams():
    images, texts = _pair_items(2)
    pb = collate_pairs(images, texts, 4, 0, 0.75, 0.75, torch.Generator().manual_seed(1))
    streams = [StreamConfig(name="pair", kind="pair", objectives={"cmm": 1.0, "itc": 1.0}),
               StreamConfig(name="cmm", kind="pair", objectives={"cmm": 1.0})]
    engine = _Engine()
    step = CMGAStep(engine, streams, torch.float32, torch.device("cpu"), check_finite=False, align_full_from=3)
    for s in range(5):
        step({"pair": pb, "cmm": pb}, s)
    assert engine.calls == [None, None] * 3 + ["full", None] * 2
