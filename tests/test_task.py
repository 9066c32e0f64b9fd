"""The task layer (momo_ds.objectives.task) over the network (MoMo): what the model returns, what the registry says
each objective uses, and the parameter names the engine's checkpoints carry."""
import pytest
import torch

from momo_ds.data.collate import mask_images, mask_pairs, mask_text
from momo_ds.model import build_model
from momo_ds.objectives.registry import DECODERS, ENCODER_MODULES, OBJECTIVES
from momo_ds.objectives.task import MODEL_PREFIX, PretrainTask, model_state

TINY = dict(depth=2, decoder_depth=1)


def _batches(model, b: int = 4):
    cfg, g = model.cfg, torch.Generator().manual_seed(0)
    images = torch.randn(b, 3, cfg.img_size, cfg.img_size, generator=g)
    ids = torch.randint(5, cfg.vocab_size, (b, 10), generator=g)
    mask = torch.ones(b, 10, dtype=torch.bool)
    return (mask_images(images, cfg.patch_size, 0.75, g), mask_text(ids, mask, 0.3, generator=g),
            mask_pairs(images, ids, mask, cfg.patch_size, 0.75, 0.3, generator=g))


def test_model_returns_predictions_not_losses():
    model = build_model("tiny", decoders=list(DECODERS), **TINY)
    ib, tb, pb = _batches(model)
    p = model.cfg.patch_size
    out = model(ib, "mim")
    assert out["pixels"].shape == (4, ib.patch_masked.shape[1], p * p * 3)
    assert model(tb, "mlm")["token_logits"].shape == (*tb.masked_ids.shape, model.cfg.vocab_size)
    cmm = model(pb, "cmm")
    assert cmm["features"].shape[:2] == cmm["key_mask"].shape
    assert not any(k.endswith("loss") for k in {**out, **cmm})
    with pytest.raises(TypeError, match="reads a ImageBatch"):
        model(tb, "mim")
    with pytest.raises(ValueError, match="expected one of"):
        model(ib, "mae")


def test_registry_names_modules_the_model_has():
    model = build_model("tiny", decoders=list(DECODERS), **TINY)
    for name in ENCODER_MODULES + tuple(m for o in OBJECTIVES.values() for m in o.modules):
        assert isinstance(getattr(model, name), (torch.nn.Module, torch.nn.Parameter)), name
    for o in OBJECTIVES.values():
        assert o.output in model.OUTPUTS, o.name


@pytest.mark.parametrize("objectives", [{"mim": 1.0}, {"mlm": 1.0}, {"itc": 1.0}, {"cmm": 1.0, "itm": 1.0}])
def test_touch_gives_exactly_the_unused_parameters_a_zero_gradient(objectives):
    """Without the touch the parameters an objective does not use get no gradient; with it they get an exact
    zero, and the used ones the same gradient as without it."""
    torch.manual_seed(0)
    model = build_model("tiny", decoders=list(DECODERS), **TINY)
    batch = dict(zip(("image", "text", "pair"), _batches(model)))[OBJECTIVES[next(iter(objectives))].kind]

    def grads(touch: bool) -> dict:
        model.zero_grad(set_to_none=True)
        PretrainTask(model, touch_unused=touch)(batch, objectives, generator=torch.Generator().manual_seed(1))[
            "loss"].backward()
        return {n: p.grad for n, p in model.named_parameters()}

    plain, touched = grads(False), grads(True)
    unused = [n for n, g in plain.items() if g is None]
    assert unused, "every objective leaves some decoder or head unused"
    assert all(touched[n] is not None and not touched[n].any() for n in unused)
    assert all(torch.equal(touched[n], g) for n, g in plain.items() if g is not None)


def test_checkpoint_names_are_the_models_under_one_prefix():
    model = build_model("tiny", **TINY)
    task_state = PretrainTask(model).state_dict()
    assert all(k.startswith(MODEL_PREFIX) for k in task_state)
    assert list(model_state(task_state)) == list(model.state_dict())
    with pytest.raises(ValueError, match="not a PretrainTask state dict"):
        model_state(model.state_dict())
