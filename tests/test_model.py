"""MoMo model: construction, visible-only encoding vs naive references, backends, gradients, input errors."""
from __future__ import annotations

import re
import sys
import types
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from momo_ds.batch import ImageBatch, PairBatch, TextBatch
from momo_ds.config import ALIGN_INPUTS, ConfigError, ModelConfig, model_preset
from momo_ds.data.collate import mask_images, mask_pairs, mask_text
from momo_ds.data.masking import draw_patch_masks, num_masked_tokens
from momo_ds.model import build_model
from momo_ds.model.embeddings import sincos_2d
from momo_ds.objectives.task import PretrainTask

torch.set_num_threads(1)

TINY = dict(depth=2, decoder_depth=1)


def _seed(s: int = 0) -> torch.Generator:
    torch.manual_seed(s)
    return torch.Generator().manual_seed(s)


def _texts(b: int, length: int, vocab: int, gen: torch.Generator, min_len: int = 3):
    """Right-padded random texts (pad id 0): ids [B, L], mask [B, L] with lengths in [min_len, L]."""
    ids = torch.randint(1, vocab, (b, length), generator=gen)
    lengths = torch.randint(min_len, length + 1, (b,), generator=gen)
    mask = torch.arange(length)[None] < lengths[:, None]
    return ids.masked_fill(~mask, 0), mask


def _batches(b: int = 4, seed: int = 0, cfg: ModelConfig | None = None):
    cfg = cfg or model_preset("tiny")
    gen = _seed(seed)
    images = torch.randn(b, 3, cfg.img_size, cfg.img_size, generator=gen)
    ids, mask = _texts(b, 12, cfg.vocab_size, gen)
    return (mask_images(images, cfg.patch_size, 0.75, generator=gen), mask_text(ids, mask, 0.15, generator=gen),
            mask_pairs(images, ids, mask, cfg.patch_size, 0.75, 0.75, generator=gen))


ALL_PAIR = {"cmm": 1.0, "itc": 0.5, "itm": 0.25}


# ------------------------------------------------------------------------------------------------ construction
def test_build_from_preset_config_and_overrides():
    m = build_model("tiny", depth=3)
    assert len(m.encoder.blocks) == 3 and isinstance(m.encoder.blocks, torch.nn.ModuleList)
    cfg = model_preset("tiny")
    m2 = build_model(cfg, decoders=["mim"], shared_decoder=False)
    assert set(m2.decoders) == {"mim"} and m2.lm_head is None
    assert cfg.decoders == ["mim", "mlm", "cmm"]  # the caller's config is not mutated
    assert set(build_model("tiny", shared_decoder=True, **TINY).decoders) == {"shared"}
    with pytest.raises(ConfigError, match="no_such_key"):
        build_model("tiny", no_such_key=1)
    with pytest.raises(ConfigError, match="attn_backend"):
        build_model("tiny", attn_backend="xformers")


def test_timm_style_block_names():
    names = {n for n, _ in build_model("tiny", **TINY).named_parameters()}
    for suffix in ("norm1.weight", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "norm2.bias",
                   "mlp.fc1.weight", "mlp.fc2.bias"):
        assert f"encoder.blocks.0.{suffix}" in names
    assert "image_embed.patch_embed.proj.weight" in names and "encoder.norm.weight" in names
    m = build_model("tiny", **TINY)
    assert isinstance(m.encoder.blocks[0].mlp.act, torch.nn.GELU) and m.encoder.blocks[0].mlp.act.approximate == "none"
    assert m.encoder.norm.eps == m.cfg.ln_eps


@pytest.mark.parametrize("preset,paper", [("base", 110e6), ("large", 335e6)])
def test_exported_parameter_count_matches_paper(preset, paper):
    with torch.device("meta"):  # no memory, no init time
        model = build_model(preset)
    for heads in (False, True):
        n = sum(v.numel() for v in model.export_state_dict(heads=heads).values())
        assert abs(n - paper) / paper < 0.02, (preset, heads, n)
    # the count is meaningful: encoder blocks + token/position/type embeddings dominate it
    enc = sum(v.numel() for k, v in model.export_state_dict().items() if k.startswith(("encoder.", "text_embed.")))
    assert enc > 0.95 * paper


def test_sincos_matches_mae_formula():
    dim, grid = 16, 3
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows = []
    for r in range(grid):
        for c in range(grid):  # MAE: first half encodes the column (w) coordinate, second half the row (h)
            rows.append(torch.cat([torch.sin(c * omega), torch.cos(c * omega), torch.sin(r * omega),
                                   torch.cos(r * omega)]))
    torch.testing.assert_close(sincos_2d(grid, dim), torch.stack(rows).float(), atol=1e-6, rtol=0)


# -------------------------------------------------------------------------------------------- visible-only encoding
def test_first_block_sees_only_visible_image_tokens():
    model = build_model("base", depth=1, decoder_depth=1, decoders=["mim"])
    keep, masked = draw_patch_masks(2, 196, 0.75, _seed())
    assert keep.shape == (2, 49) and masked.shape == (2, 147)
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    batch = ImageBatch(images=torch.randn(2, 3, 224, 224), patch_keep=keep, patch_masked=masked)
    with torch.no_grad():
        PretrainTask(model)(batch, {"mim": 1.0})
    assert seen == [(2, 1 + 49, 768)]


def test_first_block_sees_only_visible_text_tokens():
    model = build_model("tiny", **TINY)
    gen = _seed()
    ids, mask = _texts(4, 20, 512, gen, min_len=6)
    tb = mask_text(ids, mask, 0.3, generator=gen)
    visible = mask.sum(1) - num_masked_tokens(mask.sum(1), 0.3)
    assert torch.equal(tb.attention_mask.sum(1), visible)
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        PretrainTask(model)(tb, {"mlm": 1.0})
    assert seen == [(4, 1 + int(visible.max()), 128)]  # padded only up to the longest visible text


def _naive_encode(model, tokens: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """[CLS] + every token, masked tokens hidden from attention as keys (they still exist as queries)."""
    x = torch.cat([model.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    key_mask = torch.cat([torch.ones(tokens.shape[0], 1, dtype=torch.bool), key_mask], dim=1)
    for blk in model.encoder.blocks:
        x = blk(x, key_mask)
    return model.encoder.norm(x)


def _visible_in_full_order(tb: TextBatch) -> torch.Tensor:
    """[B, L] bool over the full text: True where the token is visible (not masked, not padding)."""
    vis = torch.zeros_like(tb.full_mask)
    for i in range(vis.shape[0]):
        for j in range(tb.input_ids.shape[1]):
            if tb.attention_mask[i, j]:
                vis[i, tb.positions[i, j]] = True
    return vis


def test_visible_only_encoding_equals_naive_masked_attention():
    model = build_model("tiny", **TINY).eval()
    ib, tb, pb = _batches(3)
    types = model.type_embed.weight
    with torch.no_grad():
        # image: all N patches embedded, masked ones hidden
        all_patches = model.image_embed(ib.images) + types[0]
        n = all_patches.shape[1]
        visible = torch.zeros(3, n, dtype=torch.bool).scatter(1, ib.patch_keep, True)
        ref = _naive_encode(model, all_patches, visible)
        ref_vis = torch.cat([ref[:, :1], torch.gather(ref[:, 1:], 1, ib.patch_keep[..., None].expand(-1, -1, 128))], 1)
        torch.testing.assert_close(model.encode_image(ib.images, ib.patch_keep), ref_vis, atol=1e-5, rtol=1e-5)

        # text: every token of the full text at its position, masked + padding hidden
        full_pos = torch.arange(tb.full_ids.shape[1]).expand_as(tb.full_ids)
        tokens = model.text_embed(tb.full_ids, full_pos) + types[1]
        ref = _naive_encode(model, tokens, _visible_in_full_order(tb))
        h, key_mask = model.encode_text(tb.input_ids, tb.positions, tb.attention_mask)
        for i in range(3):
            for j in range(tb.input_ids.shape[1]):
                if tb.attention_mask[i, j]:
                    torch.testing.assert_close(h[i, 1 + j], ref[i, 1 + tb.positions[i, j]], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h[:, 0], ref[:, 0], atol=1e-5, rtol=1e-5)
        assert torch.equal(key_mask[:, 1:], tb.attention_mask) and key_mask[:, 0].all()

        # joint: [CLS, all patches, full text], masked patches/tokens hidden
        im, tx = pb.image, pb.text
        vis_img = torch.zeros(3, n, dtype=torch.bool).scatter(1, im.patch_keep, True)
        vis_txt = _visible_in_full_order(tx)
        tokens = torch.cat([model.image_embed(im.images) + types[0],
                            model.text_embed(tx.full_ids, full_pos) + types[1]], dim=1)
        ref = _naive_encode(model, tokens, torch.cat([vis_img, vis_txt], 1))
        h, _ = model.encode_pair(im.images, tx.input_ids, tx.positions, tx.attention_mask, patch_keep=im.patch_keep)
        nk = im.patch_keep.shape[1]
        for i in range(3):
            torch.testing.assert_close(h[i, 1:1 + nk], ref[i, 1 + im.patch_keep[i]], atol=1e-5, rtol=1e-5)
            for j in range(tx.input_ids.shape[1]):
                if tx.attention_mask[i, j]:
                    torch.testing.assert_close(h[i, 1 + nk + j], ref[i, 1 + n + tx.positions[i, j]], atol=1e-5,
                                               rtol=1e-5)


def test_sdpa_equals_math_backend():
    model = build_model("tiny", **TINY).eval()
    _, _, pb = _batches(3)
    args = (pb.image.images, pb.text.input_ids, pb.text.positions, pb.text.attention_mask)
    with torch.no_grad():
        h_sdpa, mask = model.encode_pair(*args, patch_keep=pb.image.patch_keep)
        out_sdpa = PretrainTask(model)(pb, {"cmm": 1.0})
        model.set_attn_backend("math")
        h_math, _ = model.encode_pair(*args, patch_keep=pb.image.patch_keep)
        out_math = PretrainTask(model)(pb, {"cmm": 1.0})
    torch.testing.assert_close(h_sdpa[mask], h_math[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_sdpa["loss"], out_math["loss"], atol=1e-5, rtol=1e-5)


def test_extra_text_padding_changes_nothing():
    model = build_model("tiny", **TINY).eval()
    _, tb, _ = _batches(3)

    def pad(t: torch.Tensor, n: int, value) -> torch.Tensor:
        return torch.cat([t, torch.full((t.shape[0], n), value, dtype=t.dtype)], dim=1)

    padded = TextBatch(input_ids=pad(tb.input_ids, 5, 0), positions=pad(tb.positions, 5, 0),
                       attention_mask=pad(tb.attention_mask, 5, False), masked_positions=pad(tb.masked_positions, 3, 0),
                       masked_ids=pad(tb.masked_ids, 3, 0), masked_valid=pad(tb.masked_valid, 3, False),
                       full_ids=pad(tb.full_ids, 4, 0), full_mask=pad(tb.full_mask, 4, False))
    with torch.no_grad():
        h, m = model.encode_text(tb.input_ids, tb.positions, tb.attention_mask)
        hp, mp = model.encode_text(padded.input_ids, padded.positions, padded.attention_mask)
        torch.testing.assert_close(hp[:, :h.shape[1]][m], h[m], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(PretrainTask(model)(padded, {"mlm": 1.0})["loss"], PretrainTask(model)(tb, {"mlm": 1.0})["loss"])
        torch.testing.assert_close(model.text_features(padded.full_ids, padded.full_mask),
                                   model.text_features(tb.full_ids, tb.full_mask), atol=1e-5, rtol=1e-5)


def test_decoder_equals_mae_unshuffle_reference():
    """Appending mask tokens (ours) == MAE's un-shuffle into full order + full positions."""
    model = build_model("tiny", **TINY).eval()
    ib, _, _ = _batches(3)
    dec = model.decoders["mim"]
    with torch.no_grad():
        h = model.encode_image(ib.images, ib.patch_keep)
        pixels, _ = dec(h, None, patch_keep=ib.patch_keep, patch_masked=ib.patch_masked)
        x = dec.embed(h)
        b, n, d = 3, model.cfg.num_patches, x.shape[-1]
        full = dec.mask_token.weight.expand(b, n, d).clone()
        full.scatter_(1, ib.patch_keep[..., None].expand(-1, -1, d), x[:, 1:])
        seq = torch.cat([x[:, :1], full + dec.image_pos], dim=1)
        for blk in dec.blocks:
            seq = blk(seq)
        ref = dec.pixel_head(dec.norm(seq))[:, 1:]
        ref = torch.gather(ref, 1, ib.patch_masked[..., None].expand(-1, -1, ref.shape[-1]))
    torch.testing.assert_close(pixels, ref, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------- gradients
def test_lm_head_is_tied_to_token_embedding():
    model = build_model("tiny", **TINY)
    emb = model.text_embed.token_embed.weight
    assert model.lm_head.weight is emb and model.lm_head.weight.data_ptr() == emb.data_ptr()
    assert sum(p is emb for p in model.parameters()) == 1  # the optimizer sees it once
    model.text_embed.token_embed.weight = torch.nn.Parameter(emb.detach().clone())
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.text_embed.token_embed.weight.data_ptr()


def _grad_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.grad is not None}


USED = {  # parameter-name prefixes each objective must reach (besides cls_token, type_embed, encoder)
    "mim": ("image_embed.", "decoders.mim."),
    "mlm": ("text_embed.", "decoders.mlm.", "lm_head."),
    "cmm": ("image_embed.", "text_embed.", "decoders.cmm.", "lm_head."),
    "itc": ("image_embed.", "text_embed.", "image_proj.", "text_proj.", "logit_scale"),
    "itm": ("image_embed.", "text_embed.", "itm_head."),
}


@pytest.mark.parametrize("objective", list(USED))
def test_every_parameter_an_objective_uses_gets_a_gradient(objective):
    model = build_model("tiny", **TINY)
    ib, tb, pb = _batches(4)
    batch = {"mim": ib, "mlm": tb}.get(objective, pb)
    PretrainTask(model)(batch, {objective: 1.0})["loss"].backward()
    names = {n for n, _ in model.named_parameters()}
    prefixes = USED[objective] + ("cls_token", "type_embed.", "encoder.")
    expected = {n for n in names if n.startswith(prefixes)}
    assert expected <= _grad_names(model), sorted(expected - _grad_names(model))[:5]
    assert not (_grad_names(model) - expected), sorted(_grad_names(model) - expected)[:5]


@pytest.mark.parametrize("shared", [False, True])
def test_touch_unused_gives_every_parameter_a_gradient(shared):
    model = build_model("tiny", shared_decoder=shared, **TINY)
    ib, tb, pb = _batches(4)
    for batch, objectives in ((ib, {"mim": 1.0}), (tb, {"mlm": 1.0}), (pb, {"itm": 1.0}), (pb, {"cmm": 1.0})):
        model.zero_grad(set_to_none=True)
        out = PretrainTask(model, touch_unused=True)(batch, objectives)
        ref = PretrainTask(model)(batch, objectives, generator=torch.Generator().manual_seed(0)) if "itm" not in objectives else None
        out["loss"].backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, (objectives, missing[:5])
        if ref is not None:  # the touch adds exactly zero
            assert torch.equal(out["loss"].detach(), ref["loss"].detach())


def test_loss_is_weighted_sum_of_terms():
    model = build_model("tiny", **TINY)
    _, _, pb = _batches(4)
    out = PretrainTask(model)(pb, ALL_PAIR, generator=torch.Generator().manual_seed(1))
    assert out["loss"].dim() == 0 and not out["itm_acc"].requires_grad
    want = (out["cmm_image_loss"] + out["cmm_text_loss"]) + 0.5 * out["itc_loss"] + 0.25 * out["itm_loss"]
    torch.testing.assert_close(out["loss"], want)


@pytest.mark.parametrize("align", ALIGN_INPUTS)
def test_activation_checkpointing_keeps_outputs_and_gradients(align):
    ref = build_model("tiny", align_inputs=align, **TINY)
    ckpt = build_model("tiny", align_inputs=align, grad_checkpointing=True, **TINY)
    ckpt.load_state_dict(ref.state_dict())
    _, _, pb = _batches(4)
    outs = []
    for m in (ref, ckpt):
        out = PretrainTask(m)(pb, ALL_PAIR, generator=torch.Generator().manual_seed(3))
        out["loss"].backward()
        outs.append(out)
    torch.testing.assert_close(outs[0]["loss"], outs[1]["loss"], atol=1e-6, rtol=1e-6)
    for (n, p), q in zip(ref.named_parameters(), ckpt.parameters()):
        assert (p.grad is None) == (q.grad is None), n
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.parametrize("align", ALIGN_INPUTS)
def test_align_inputs_decide_what_contrastive_sees(align):
    """full: masked patches and masked words both matter; masked_image: only the words; masked: neither."""
    model = build_model("tiny", align_inputs=align, **TINY).eval()
    _, _, pb = _batches(4)
    p, grid = model.cfg.patch_size, model.cfg.img_size // model.cfg.patch_size
    images = pb.image.images.clone()
    for i, row in enumerate(pb.image.patch_masked):
        for j in row.tolist():
            r, c = divmod(j, grid)
            images[i, :, r * p:(r + 1) * p, c * p:(c + 1) * p] += 3.0
    full_ids = pb.text.full_ids.clone()
    for i in range(full_ids.shape[0]):
        pos = pb.text.masked_positions[i][pb.text.masked_valid[i]]
        full_ids[i, pos] = (full_ids[i, pos] % (model.cfg.vocab_size - 1)) + 1  # another real token id
    assert not torch.equal(full_ids, pb.text.full_ids)

    def itc(batch) -> torch.Tensor:
        with torch.no_grad():
            return PretrainTask(model)(batch, {"itc": 1.0})["itc_loss"]

    base = itc(pb)
    image_moved = itc(replace(pb, image=replace(pb.image, images=images)))
    words_moved = itc(replace(pb, text=replace(pb.text, full_ids=full_ids)))
    assert (not torch.allclose(base, image_moved)) == (align == "full")
    assert (not torch.allclose(base, words_moved)) == (align != "masked")


@pytest.mark.parametrize("mode", ["autocast", "bf16_weights"])
def test_bf16_forward_is_finite(mode):
    """bf16 autocast (torch AMP), and bf16 weights without autocast (what a DeepSpeed bf16 engine runs)."""
    model = build_model("tiny", **TINY)
    if mode == "bf16_weights":
        model = model.to(torch.bfloat16)
    ib, tb, pb = _batches(4)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "autocast" else nullcontext()
    for batch, obj in ((ib, {"mim": 1.0}), (tb, {"mlm": 1.0}), (pb, ALL_PAIR)):
        with ctx:
            out = PretrainTask(model, touch_unused=True)(batch, obj)
        assert all(torch.isfinite(v).all() for v in out.values()), obj
        out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_features():
    model = build_model("tiny", **TINY).eval()
    _, _, pb = _batches(3)
    with torch.no_grad():
        img = model.image_features(pb.image.images)
        txt = model.text_features(pb.text.full_ids, pb.text.full_mask)
        cls = model.cls_features(pb.image.images)
    assert img.shape == (3, 64) and txt.shape == (3, 64) and cls.shape == (3, 128)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))


@pytest.mark.parametrize("readout", ["cls", "mean"])
def test_joint_state_reads_the_text(readout):
    """The ITM head's input depends on every real text token and on its position, never on padding: a joint
    encoding that ignored the text (a wrong key mask, text dropped from the sequence) would fail this."""
    model = build_model("tiny", **TINY, itm_readout=readout).eval()
    _, _, pb = _batches(3)
    images, ids, mask = pb.image.images, pb.text.full_ids, pb.text.full_mask
    with torch.no_grad():
        base = model.match_state(*model.encode_pair(images, ids, None, mask))
        for row in range(3):
            last = int(mask[row].sum()) - 1
            changed = ids.clone()
            changed[row, last] = changed[row, last] % (model.cfg.vocab_size - 1) + 1  # another real token
            out = model.match_state(*model.encode_pair(images, changed, None, mask))
            assert not torch.allclose(out[row], base[row]), f"row {row}: the text token was ignored"
            torch.testing.assert_close(out[[r for r in range(3) if r != row]], base[[r for r in range(3) if r != row]])
        swapped = ids.clone()
        swapped[:, [0, 1]] = swapped[:, [1, 0]]  # same tokens, other positions
        assert not torch.allclose(model.match_state(*model.encode_pair(images, swapped, None, mask)), base)
        padded = ids.masked_fill(~mask, 7)  # other values under padding
        torch.testing.assert_close(model.match_state(*model.encode_pair(images, padded, None, mask)), base)
        if readout == "mean":
            h, key_mask = model.encode_pair(images, ids, None, mask)
            naive = torch.stack([h[r][key_mask[r]].mean(dim=0) for r in range(3)])
            torch.testing.assert_close(base, naive)
        torch.testing.assert_close(model.match_logits(images, ids, mask), model.itm_head(base))


# ----------------------------------------------------------------------------------------------- input errors
def _one_line_error(fn, *match: str) -> None:
    with pytest.raises(ValueError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    for m in match:
        assert m in msg, msg


def test_bad_inputs_raise_one_line_value_errors():
    model = build_model("tiny", **TINY)
    ib, tb, pb = _batches(2)
    _one_line_error(lambda: model.encode_image(torch.randn(2, 3, 48, 48)), "image size", "32x32", "48x48")
    _one_line_error(lambda: model.encode_image(torch.randn(2, 1, 32, 32)), "channels", "3", "1")
    _one_line_error(lambda: model.encode_image(torch.randn(3, 32, 32)), "images", "shape")
    bad_keep = ib.patch_keep.clone()
    bad_keep[0, 0] = 64
    _one_line_error(lambda: model.encode_image(ib.images, bad_keep), "patch_keep", "out of range")
    _one_line_error(lambda: PretrainTask(model)(ImageBatch(ib.images, bad_keep, ib.patch_masked), {"mim": 1.0}), "patch_keep")
    ids = tb.input_ids.clone()
    ids[0, 0] = 512
    _one_line_error(lambda: model.encode_text(ids, tb.positions, tb.attention_mask), "outside the vocabulary", "512")
    ids[0, 0] = -1
    _one_line_error(lambda: model.text_features(ids), "outside the vocabulary")
    empty = tb.attention_mask.clone()
    empty[1] = False
    _one_line_error(lambda: model.encode_text(tb.input_ids, tb.positions, empty), "empty text")
    bad_tb = TextBatch(**{**tb.__dict__, "attention_mask": empty})
    _one_line_error(lambda: PretrainTask(model)(bad_tb, {"mlm": 1.0}), "empty text")
    _one_line_error(lambda: model.text_features(torch.zeros(2, 0, dtype=torch.long)), "empty text")
    _one_line_error(lambda: model.encode_text(torch.ones(1, 65, dtype=torch.long)), "max_text_len")
    for ratio in (-0.1, 1.0, 1.5):
        _one_line_error(lambda: draw_patch_masks(2, 64, ratio), "outside [0, 1)", str(ratio))
        _one_line_error(lambda: mask_text(tb.full_ids, tb.full_mask, ratio), "outside [0, 1)")
    _one_line_error(lambda: PretrainTask(model)(ib, {"mlm": 1.0}), "not valid for image batches")
    _one_line_error(lambda: PretrainTask(model)(pb, {}), "empty")
    _one_line_error(lambda: PretrainTask(build_model("tiny", decoders=["mim"], **TINY))(tb, {"mlm": 1.0}), "decoder")
    one = PairBatch(ImageBatch(pb.image.images[:1], pb.image.patch_keep[:1], pb.image.patch_masked[:1]),
                    TextBatch(**{k: v[:1] for k, v in pb.text.__dict__.items()}))
    _one_line_error(lambda: PretrainTask(model)(one, {"itm": 1.0}), "at least 2 pairs")


def test_flash_varlen_without_flash_attn_is_a_build_error():
    try:
        import flash_attn  # noqa: F401
    except Exception:
        _one_line_error(lambda: build_model("tiny", attn_backend="flash_varlen"), "flash_attn")
    else:
        pytest.skip("flash_attn is installed")


def test_flash_varlen_packing_with_a_reference_kernel(monkeypatch):
    """The unpad / cu_seqlens / re-pad logic of the flash_varlen backend, with a plain per-sequence kernel in
    place of flash-attn (padding sits mid-row in decoders: [CLS, patches, text+pad, masked patches, masked text])."""
    from momo_ds.model import attention

    def varlen_reference(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, causal=False):
        outs = []
        for s, e in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
            assert e - s <= max_seqlen
            q, k, v = qkv[s:e].permute(1, 2, 0, 3)  # [H, n, d] each
            outs.append(attention.math_attention(q[None], k[None], v[None], None)[0].transpose(0, 1))
        return torch.cat(outs)

    monkeypatch.setattr(attention, "_flash_varlen_fn", lambda: (varlen_reference, None))
    model = build_model("tiny", **TINY)
    _, _, pb = _batches(3)
    with torch.no_grad():
        ref = PretrainTask(model)(pb, {"cmm": 1.0})
        model.set_attn_backend("flash_varlen")
        got = PretrainTask(model)(pb, {"cmm": 1.0})
        model.set_attn_backend("sdpa")
    for k in ("cmm_image_loss", "cmm_text_loss"):
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-5)


def test_apex_detection_ignores_unrelated_apex(monkeypatch):
    from momo_ds.model import norm

    monkeypatch.setitem(sys.modules, "apex", types.ModuleType("apex"))  # PyPI's apex: no normalization module
    monkeypatch.delitem(sys.modules, "apex.normalization", raising=False)
    assert norm._detect_fused_layer_norm() is None
    fake = types.ModuleType("apex.normalization")
    fake.FusedLayerNorm = torch.nn.LayerNorm
    monkeypatch.setitem(sys.modules, "apex.normalization", fake)
    sys.modules["apex"].normalization = fake
    assert norm._detect_fused_layer_norm() is torch.nn.LayerNorm


def test_masking_helpers_follow_the_batch_contract():
    gen = _seed()
    ids, mask = _texts(5, 16, 100, gen)
    tb = mask_text(ids, mask, 0.4, generator=gen)
    for i in range(5):
        vis = tb.positions[i][tb.attention_mask[i]].tolist()
        msk = tb.masked_positions[i][tb.masked_valid[i]].tolist()
        assert vis == sorted(vis) and vis and sorted(vis + msk) == list(range(int(mask[i].sum())))
        assert tb.input_ids[i][tb.attention_mask[i]].tolist() == ids[i, vis].tolist()
        assert tb.masked_ids[i][tb.masked_valid[i]].tolist() == ids[i, msk].tolist()
    assert (tb.input_ids[~tb.attention_mask] == 0).all() and (tb.positions[~tb.attention_mask] == 0).all()
    keep, masked = draw_patch_masks(3, 64, 0.75, gen)
    assert torch.equal(torch.cat([keep, masked], 1).sort(1).values, torch.arange(64).expand(3, 64))
    zero = mask_text(ids, mask, 0.0)
    assert zero.masked_ids.shape == (5, 0) and torch.equal(zero.attention_mask, mask)


def test_model_and_objectives_never_import_distributed_or_deepspeed():
    root = Path(__file__).resolve().parents[1] / "momo_ds"
    pattern = re.compile(r"^\s*(import|from)\s+(torch\.distributed|deepspeed)\b", re.M)
    files = sorted((root / "model").glob("*.py")) + sorted((root / "objectives").glob("*.py"))
    assert files and not [f.name for f in files if pattern.search(f.read_text())]


def test_objective_registry_describes_what_the_model_computes():
    """The registry's kinds, terms and decoders are what the model builds and returns; the loss is the weighted
    sum of exactly the registered terms."""
    from momo_ds.objectives.registry import DECODERS, OBJECTIVES, objectives_for

    model = build_model("tiny", decoders=list(DECODERS), **TINY)
    assert list(model.decoders) == list(DECODERS)
    batches = dict(zip(("image", "text", "pair"), _batches(4)))
    for kind, batch in batches.items():
        names = objectives_for(kind)
        assert names and all(OBJECTIVES[n].kind == kind for n in names)
        weights = {n: float(i + 2) for i, n in enumerate(names)}
        with torch.no_grad():
            out = PretrainTask(model)(batch, weights, generator=torch.Generator().manual_seed(0))
        expected = sum(w * out[t] for n, w in weights.items() for t in OBJECTIVES[n].terms)
        torch.testing.assert_close(out["loss"], expected)
        for other in set(OBJECTIVES) - set(names):
            with pytest.raises(ValueError, match="not valid"):
                PretrainTask(model)(batch, {other: 1.0})
