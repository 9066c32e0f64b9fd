"""Losses against plain reference implementations (loops where clearer): forward values and gradients."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from momo_ds.objectives import (LOCAL, DistContext, JointInputs, LocalDist, cmm_loss, contrastive_loss, itm_loss,
                                mim_loss, mlm_loss, patchify, sample_hard_negatives, unpatchify)

torch.set_num_threads(1)


class SimDist:
    """Rank ``rank`` of a simulated group in one process.

    The i-th gather call returns the concatenation of every rank's i-th tensor (``calls[i]``, in rank order); the
    with-grad gather keeps every part's graph, so backward of the summed rank losses delivers to each rank's
    tensor the sum over ranks — what the all-gather's all-reduce backward does.
    """

    def __init__(self, rank: int, calls: list[list[torch.Tensor]]):
        self.rank, self.world_size, self.calls = rank, len(calls[0]), list(calls)

    def _parts(self, x: torch.Tensor, same_object: bool = False) -> list[torch.Tensor]:
        parts = self.calls.pop(0)
        ok = parts[self.rank] is x if same_object else torch.equal(parts[self.rank], x)
        assert ok, "simulated gather called out of order"
        return parts

    def gather_with_grad(self, x):
        return torch.cat(self._parts(x, same_object=True))

    def gather(self, x):
        return torch.cat([p.detach() for p in self._parts(x)])

    def gather_padded(self, x, pad_value=0):
        parts = [p.detach() for p in self._parts(x)]
        longest = max(p.shape[1] for p in parts)
        return torch.cat([torch.cat([p, p.new_full((p.shape[0], longest - p.shape[1], *p.shape[2:]), pad_value)], 1)
                          for p in parts])


def test_dist_contexts_satisfy_protocol():
    from momo_ds.distributed import TorchDist

    assert isinstance(LOCAL, DistContext) and isinstance(TorchDist.current(), DistContext)
    x = torch.randn(3, 2, requires_grad=True)
    assert LocalDist().gather_with_grad(x) is x and LOCAL.rank == 0 and LOCAL.world_size == 1


# ------------------------------------------------------------------------------------------------------- MIM
def test_patchify_matches_loops_and_roundtrips():
    images = torch.randn(2, 3, 8, 8)
    p = 4
    patches = patchify(images, p)
    assert patches.shape == (2, 4, 48)
    for b in range(2):
        for gi in range(2):
            for gj in range(2):
                want = [images[b, c, gi * p + r, gj * p + q] for r in range(p) for q in range(p) for c in range(3)]
                torch.testing.assert_close(patches[b, gi * 2 + gj], torch.stack(want))
    torch.testing.assert_close(unpatchify(patches, p), images)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mim_loss_matches_naive(norm_pix):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 16, 16, generator=gen)
    masked = torch.stack([torch.randperm(16, generator=gen)[:12].sort().values for _ in range(3)])
    pred = torch.randn(3, 12, 48, generator=gen, requires_grad=True)
    loss = mim_loss(pred, images, masked, 4, norm_pix)["mim_loss"]
    loss.backward()

    pred_ref = pred.detach().clone().requires_grad_(True)
    total, count = 0.0, 0
    for b in range(3):
        for k in range(12):
            idx = int(masked[b, k])
            r, c = divmod(idx, 4)
            patch = images[b, :, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4].permute(1, 2, 0).reshape(-1)
            if norm_pix:
                mean = patch.mean()
                var = ((patch - mean) ** 2).sum() / (patch.numel() - 1)
                patch = (patch - mean) / math.sqrt(var + 1e-6)
            total = total + ((pred_ref[b, k] - patch) ** 2).mean()
            count += 1
    ref = total / count
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(pred.grad, pred_ref.grad)


# ------------------------------------------------------------------------------------------------------- MLM
def _naive_ce(logits: torch.Tensor, target: int) -> torch.Tensor:
    return torch.log(torch.exp(logits).sum()) - logits[target]


def test_mlm_loss_matches_naive():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 11, generator=gen, requires_grad=True)
    targets = torch.randint(0, 11, (3, 4), generator=gen)
    valid = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    loss = mlm_loss(logits, targets, valid)["mlm_loss"]
    loss.backward()
    ref_logits = logits.detach().clone().requires_grad_(True)
    terms = [_naive_ce(ref_logits[b, m], int(targets[b, m])) for b in range(3) for m in range(4) if valid[b, m]]
    ref = sum(terms) / len(terms)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(logits.grad, ref_logits.grad)
    empty = mlm_loss(torch.zeros(2, 0, 11, requires_grad=True), torch.zeros(2, 0, dtype=torch.long),
                     torch.zeros(2, 0, dtype=torch.bool))["mlm_loss"]
    assert empty.item() == 0.0 and empty.requires_grad


def test_cmm_loss_is_pixel_plus_token_terms():
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(2, 3, 8, 8, generator=gen)
    masked = torch.tensor([[0, 3], [1, 2]])
    pixels = torch.randn(2, 2, 48, generator=gen)
    logits = torch.randn(2, 3, 7, generator=gen)
    ids = torch.randint(0, 7, (2, 3), generator=gen)
    valid = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    out = cmm_loss(pixels, images, masked, 4, True, logits, ids, valid)
    torch.testing.assert_close(out["cmm_image_loss"], mim_loss(pixels, images, masked, 4, True)["mim_loss"])
    torch.testing.assert_close(out["cmm_text_loss"], mlm_loss(logits, ids, valid)["mlm_loss"])


# ----------------------------------------------------------------------------------------------- contrastive
def _embeddings(b: int, p: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, p, generator=gen), dim=-1).requires_grad_(True)
    txt = F.normalize(torch.randn(b, p, generator=gen), dim=-1).requires_grad_(True)
    scale = torch.tensor([math.log(1 / 0.07)], requires_grad=True)
    return img, txt, scale


def test_contrastive_matches_naive():
    img, txt, scale = _embeddings(5, 8, 0)
    loss = contrastive_loss(img, txt, scale)["itc_loss"]
    loss.backward()
    img2, txt2, scale2 = (t.detach().clone().requires_grad_(True) for t in (img, txt, scale))
    s = scale2.exp()
    total = 0.0
    for i in range(5):
        row_i2t = torch.stack([s[0] * (img2[i] * txt2[j]).sum() for j in range(5)])
        row_t2i = torch.stack([s[0] * (txt2[i] * img2[j]).sum() for j in range(5)])
        total = total + 0.5 * (_naive_ce(row_i2t, i) + _naive_ce(row_t2i, i))
    ref = total / 5
    ref.backward()
    torch.testing.assert_close(loss, ref)
    for a, b in ((img, img2), (txt, txt2), (scale, scale2)):
        torch.testing.assert_close(a.grad, b.grad)


def test_contrastive_temperature_is_clamped_at_100():
    img, txt, _ = _embeddings(4, 8, 1)
    big = torch.tensor([10.0], requires_grad=True)  # exp(10) > 100
    at_cap = torch.tensor([math.log(100.0)])
    capped = contrastive_loss(img, txt, at_cap)["itc_loss"]
    torch.testing.assert_close(contrastive_loss(img, txt, big)["itc_loss"], capped)
    contrastive_loss(img, txt, big)["itc_loss"].backward()
    assert big.grad.item() == 0.0


def test_contrastive_two_simulated_ranks_equal_single_process_gradient():
    img, txt, scale = _embeddings(8, 6, 3)
    single = contrastive_loss(img, txt, scale)["itc_loss"]
    single_grads = torch.autograd.grad(single, (img, txt, scale))
    halves_i, halves_t = list(img.split(4)), list(txt.split(4))
    losses = [contrastive_loss(halves_i[r], halves_t[r], scale, SimDist(r, [halves_i, halves_t]))["itc_loss"]
              for r in range(2)]
    total = (losses[0] + losses[1]) / 2  # DeepSpeed averages gradients over ranks
    sim_grads = torch.autograd.grad(total, (img, txt, scale))
    torch.testing.assert_close(total, single)
    for a, b in zip(sim_grads, single_grads):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


# ------------------------------------------------------------------------------------------------------ ITM
def test_hard_negatives_never_the_positive_and_follow_softmax():
    gen = torch.Generator().manual_seed(0)
    sim = torch.randn(3, 6, generator=gen) * 2
    sim[0, 3] = sim[1, 4] = sim[2, 5] = 1e4  # rank 1 of 2 (B=3): the positives are columns 3, 4, 5
    counts = torch.zeros(3, 6)
    draws = 3000
    for _ in range(draws):
        t, i = sample_hard_negatives(sim, sim, rank=1, generator=gen)
        counts[torch.arange(3), t] += 1
        assert not torch.any(t == torch.arange(3, 6)) and not torch.any(i == torch.arange(3, 6))
    for r in range(3):
        logits = sim[r].clone()
        logits[3 + r] = float("-inf")
        torch.testing.assert_close(counts[r] / draws, logits.softmax(0), atol=0.035, rtol=0)
    # similarities so extreme that a softmax over all columns underflows every negative to 0
    extreme = torch.full((2, 2), -1e4)
    extreme.fill_diagonal_(1e4)
    t, i = sample_hard_negatives(extreme, extreme, rank=0, generator=gen)
    assert t.tolist() == [1, 0] and i.tolist() == [1, 0]


def test_negative_hardness_scales_the_sampling_softmax():
    """hardness h draws from softmax(h * sim) without the positive: 0 is uniform over the other pairs."""
    gen = torch.Generator().manual_seed(1)
    sim = torch.tensor([[9.0, 0.0, 3.0, -2.0]])
    for hardness in (0.0, 0.5):
        counts = torch.zeros(4)
        for _ in range(4000):
            t, _ = sample_hard_negatives(sim, sim, rank=0, generator=gen, hardness=hardness)
            counts[t] += 1
        logits = hardness * sim[0]
        logits[0] = float("-inf")
        torch.testing.assert_close(counts / 4000, logits.softmax(0), atol=0.03, rtol=0)


def test_excluded_negatives_are_never_drawn_unless_nothing_else_is_left():
    gen = torch.Generator().manual_seed(2)
    sim = torch.zeros(3, 3)
    excluded = torch.tensor([[False, True, False], [True, False, True], [False, False, False]])
    for _ in range(300):
        t, i = sample_hard_negatives(sim, sim, rank=0, generator=gen, excluded=excluded)
        assert t[0] == 2 and i[0] == 2  # row 0: column 1 excluded, 0 is the positive
        assert t[1] in (0, 2) and i[1] in (0, 2)  # row 1: everything excluded -> only the positive stays out
        assert t[2] != 2


def test_same_caption_compares_real_tokens_only():
    from momo_ds.objectives.itm import same_caption

    def joint(ids, lengths):
        ids = torch.tensor(ids)
        mask = torch.arange(ids.shape[1])[None] < torch.tensor(lengths)[:, None]
        return JointInputs(torch.zeros(len(lengths), 3, 4, 4), None, ids.masked_fill(~mask, 0), ids, mask)

    local = joint([[5, 6, 0], [5, 6, 7]], [2, 3])
    pool = joint([[5, 6, 0, 0], [5, 6, 7, 0], [5, 6, 7, 8], [6, 5, 0, 0]], [2, 3, 4, 2])
    assert same_caption(local, pool).tolist() == [[True, False, False, False], [False, True, False, False]]


def test_hard_negatives_need_two_pairs():
    with pytest.raises(ValueError, match="at least 2 pairs"):
        sample_hard_negatives(torch.zeros(1, 1), torch.zeros(1, 1), rank=0)


class _ToyJoint(torch.nn.Module):
    """A differentiable stand-in for the joint encoder: mean pixel and mean real-token embedding -> [n, D]."""

    def __init__(self, dim: int = 6):
        super().__init__()
        self.emb = torch.nn.Embedding(20, dim)
        self.img = torch.nn.Linear(3, dim)

    def forward(self, j: JointInputs) -> torch.Tensor:
        tok = (self.emb(j.ids) * j.mask[..., None]).sum(1) / j.mask.sum(1, keepdim=True)
        return torch.tanh(self.img(j.images.mean(dim=(2, 3))) + tok)


def _pairs(b: int, length: int, seed: int) -> JointInputs:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (b,), generator=gen)
    mask = torch.arange(length)[None] < lengths[:, None]
    ids = torch.randint(1, 20, (b, length), generator=gen).masked_fill(~mask, 0)
    return JointInputs(torch.randn(b, 3, 4, 4, generator=gen), None, ids, torch.arange(length).expand(b, -1), mask)


@pytest.mark.parametrize("negatives", [2, 1])
def test_itm_loss_matches_naive(negatives):
    """negatives=2: every pair's image with a negative caption and a negative image with its caption;
    negatives=1: only the first for even rows, only the second for odd rows (balanced 1:1 classes)."""
    torch.manual_seed(0)
    enc, head = _ToyJoint(), torch.nn.Linear(6, 2)
    inputs = _pairs(4, 5, 1)
    img, txt, scale = _embeddings(4, 8, 2)
    out = itm_loss(img, txt, scale, inputs, enc, head, generator=torch.Generator().manual_seed(7),
                   negatives=negatives)
    out["itm_loss"].backward()
    got = [p.grad.clone() for p in (*enc.parameters(), *head.parameters())]
    assert img.grad is None and scale.grad is None  # similarities only pick negatives

    # reference: same draws, then one pair at a time
    enc.zero_grad(), head.zero_grad()
    s = scale.detach().exp()
    sim_i2t, sim_t2i = s * img.detach() @ txt.detach().t(), s * txt.detach() @ img.detach().t()
    neg_t, neg_i = sample_hard_negatives(sim_i2t, sim_t2i, 0, torch.Generator().manual_seed(7))
    triples = [(i, i, 1) for i in range(4)]
    if negatives == 2:
        triples += [(i, int(neg_t[i]), 0) for i in range(4)] + [(int(neg_i[i]), i, 0) for i in range(4)]
    else:
        triples += [(i, int(neg_t[i]), 0) if i % 2 == 0 else (int(neg_i[i]), i, 0) for i in range(4)]
    terms, correct = [], 0
    for im, tx, label in triples:
        j = inputs.select(torch.tensor([im]), torch.tensor([tx]))
        logits = head(enc(j))[0]
        terms.append(_naive_ce(logits, label))
        correct += int(int(logits.argmax()) == label)
    ref = sum(terms) / len(terms)
    ref.backward()
    torch.testing.assert_close(out["itm_loss"], ref)
    torch.testing.assert_close(out["itm_acc"], torch.tensor(correct / len(triples)))
    for a, p in zip(got, (*enc.parameters(), *head.parameters())):
        torch.testing.assert_close(a, p.grad)


def test_itm_two_simulated_ranks_use_global_candidates():
    torch.manual_seed(0)
    enc, head = _ToyJoint(), torch.nn.Linear(6, 2)
    local = [_pairs(3, 4, 1), _pairs(3, 6, 2)]  # different text lengths per rank -> padded gather
    img, txt, scale = _embeddings(6, 8, 3)
    img_parts, txt_parts = list(img.detach().split(3)), list(txt.detach().split(3))
    rank = 1
    packed_text = [torch.stack([p.ids, p.positions, p.mask.long()], dim=2) for p in local]  # one text gather
    calls = [img_parts, txt_parts, [p.images for p in local], packed_text]
    seen = []
    out = itm_loss(img_parts[rank], txt_parts[rank], scale, local[rank], lambda j: seen.append(j) or enc(j), head,
                   dist=SimDist(rank, calls), generator=torch.Generator().manual_seed(5))
    (pairs,) = seen
    assert pairs.ids.shape == (9, 6)  # 3 positives + 3 + 3 negatives, text padded to the longest rank
    own = local[rank]
    torch.testing.assert_close(pairs.images[:3], own.images)
    torch.testing.assert_close(pairs.ids[:3], own.ids)
    # the negatives come from the global pool and are never the pair's own partner
    pool_ids = torch.cat([F.pad(local[0].ids, (0, 2)), local[1].ids])
    pool_img = torch.cat([p.images for p in local])
    for k in range(3):
        t = [r for r in range(6) if torch.equal(pool_ids[r], pairs.ids[3 + k])]
        i = [r for r in range(6) if torch.equal(pool_img[r], pairs.images[6 + k])]
        assert t and 3 + k not in t and i and 3 + k not in i
    assert torch.isfinite(out["itm_loss"])


def test_joint_inputs_gather_pads_text_as_the_loader_does():
    local = [_pairs(2, 3, 1), _pairs(2, 5, 2)]
    packed = [torch.stack([p.ids, p.positions, p.mask.long()], dim=2) for p in local]
    got = local[0].gather(SimDist(0, [[p.images for p in local], packed]), pad_id=7)
    assert got.ids.shape == got.positions.shape == got.mask.shape == (4, 5) and got.mask.dtype == torch.bool
    for field, pad in (("ids", 7), ("positions", 0), ("mask", False)):
        whole = getattr(got, field)
        torch.testing.assert_close(whole[:2, :3], getattr(local[0], field))  # rank 0, its own columns
        assert (whole[:2, 3:] == pad).all()  # rank 0's padding to rank 1's length
        torch.testing.assert_close(whole[2:], getattr(local[1], field))
    torch.testing.assert_close(got.images, torch.cat([p.images for p in local]))
