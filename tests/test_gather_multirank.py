"""The global contrastive loss through the all-gather (2 CPU ranks) has the single-process full-batch gradient;
ITM hard negatives drawn from the gathered similarities are never the positive, on both ranks."""
import json

import pytest
import torch
from safetensors.torch import load_file

from momo_ds.objectives.contrastive import contrastive_loss
from tests.multirank import launch, tail
from tests.workers.gather_worker import B_LOCAL, global_embeddings


@pytest.fixture(scope="module")
def ranks_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("gather")
    proc = launch("tests/workers/gather_worker.py", [str(out)])
    return out, proc


def test_contrastive_gradient_through_gather_equals_full_batch(ranks_out):
    out, proc = ranks_out
    files = [out / f"itc_rank{r}.safetensors" for r in (0, 1)]
    assert all(f.is_file() for f in files), tail(proc)
    img, txt, scale = global_embeddings()
    img.requires_grad_(True), txt.requires_grad_(True), scale.requires_grad_(True)
    full = contrastive_loss(img, txt, scale)["itc_loss"]  # world 1: all rows vs all columns
    full.backward()
    ranks = [load_file(str(f)) for f in files]
    got_img = torch.cat([r["img_grad"] for r in ranks])
    got_txt = torch.cat([r["txt_grad"] for r in ranks])
    assert torch.allclose(got_img, img.grad, atol=1e-7, rtol=0), (got_img - img.grad).abs().max()
    assert torch.allclose(got_txt, txt.grad, atol=1e-7, rtol=0)
    for r in ranks:
        assert torch.allclose(r["scale_grad"], scale.grad, atol=1e-7, rtol=0)
    # the mean of the ranks' local losses is the full-batch loss
    assert torch.allclose(sum(r["loss"] for r in ranks) / 2, full.detach(), atol=1e-6)
    # and the gradient is not trivially local: the other rank's rows contribute
    assert got_img.abs().sum() > 0 and img.grad[B_LOCAL:].abs().sum() > 0


def test_itm_hard_negatives_never_positive_on_both_ranks(ranks_out):
    out, proc = ranks_out
    for r in (0, 1):
        f = out / f"itm_rank{r}.json"
        assert f.is_file(), tail(proc)
        d = json.loads(f.read_text())
        for key in ("neg_text", "neg_image"):
            draws = torch.tensor(d[key])  # [2000, B_LOCAL] global indices
            positive = r * B_LOCAL + torch.arange(B_LOCAL)
            assert not (draws == positive).any(), f"rank {r} drew a positive {key}"
            assert draws.min() >= 0 and draws.max() < 2 * B_LOCAL
            other = (draws // B_LOCAL) != r
            assert other.any(), "negatives never came from the other rank: mining is not global"
