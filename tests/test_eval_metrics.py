"""Evaluation metrics against naive references on small fixed inputs."""
import pytest
import torch

from momo_ds.eval.metrics import accuracy, binary_f1, matthews_corr, pearson, retrieval_recall, spearman


def naive_recall(sim, txt_image, k):
    ni, nt = sim.shape
    tr = 0
    for i in range(ni):
        order = sorted(range(nt), key=lambda j: -sim[i, j])[:k]
        tr += any(txt_image[j] == i for j in order)
    ir = 0
    for j in range(nt):
        order = sorted(range(ni), key=lambda i: -sim[i, j])[:k]
        ir += txt_image[j] in order
    return 100 * tr / ni, 100 * ir / nt


def test_recall_on_hand_built_similarity():
    # 3 images, 3 texts: image 0 <-> text 0 best; image 1's text ranks 2nd; image 2's text ranks 3rd.
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.4, 0.1], [0.6, 0.5, 0.2]])
    img = torch.eye(3)
    r = retrieval_recall(img, sim.T.contiguous(), ks=(1, 2, 3))  # img @ txt.T == sim
    assert r["tr@1_pct"] == pytest.approx(100 / 3) and r["tr@2_pct"] == pytest.approx(200 / 3) and r["tr@3_pct"] == 100
    # IR: text 0 -> image 0 is best (0.9); text 1 -> column [0.1,0.4,0.5]: image 1 2nd; text 2 -> [0,0.1,0.2]: 1st
    assert r["ir@1_pct"] == pytest.approx(200 / 3) and r["ir@2_pct"] == 100


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_recall_matches_naive_with_several_texts_per_image(chunk):
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(7, 5, generator=g), dim=1)
    txt_image = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5, 6, 6, 6])
    txt = torch.nn.functional.normalize(img[txt_image] + 0.8 * torch.randn(11, 5, generator=g), dim=1)
    sim = img @ txt.T
    got = retrieval_recall(img, txt, txt_image, ks=(1, 2, 5), chunk=chunk)
    for k in (1, 2, 5):
        tr, ir = naive_recall(sim, txt_image.tolist(), k)
        assert got[f"tr@{k}_pct"] == pytest.approx(tr) and got[f"ir@{k}_pct"] == pytest.approx(ir)


def test_recall_rejects_empty_and_mismatched():
    with pytest.raises(ValueError, match="at least one image"):
        retrieval_recall(torch.zeros(0, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="pass txt_image"):
        retrieval_recall(torch.zeros(2, 4), torch.zeros(3, 4))


def test_classification_and_correlation_metrics_match_naive():
    pred = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
    tgt = torch.tensor([1, 0, 0, 1, 0, 1, 1, 1])
    tp, tn, fp, fn = 3, 2, 1, 2
    assert accuracy(pred, tgt) == pytest.approx(100 * 5 / 8)
    assert binary_f1(pred, tgt) == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn))
    mcc = (tp * tn - fp * fn) / ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    assert matthews_corr(pred, tgt) == pytest.approx(100 * mcc)
    x = torch.tensor([1.0, 2.0, 2.0, 4.0, 7.0])
    y = torch.tensor([2.0, 1.0, 3.0, 5.0, 4.0])
    mx, my = x.mean(), y.mean()
    r = float(((x - mx) * (y - my)).sum() / (((x - mx) ** 2).sum() * ((y - my) ** 2).sum()) ** 0.5)
    assert pearson(x, y) == pytest.approx(100 * r)
    rx, ry = torch.tensor([1.0, 2.5, 2.5, 4.0, 5.0]), torch.tensor([2.0, 1.0, 3.0, 5.0, 4.0])  # average ranks
    assert spearman(x, y) == pytest.approx(pearson(rx, ry))
