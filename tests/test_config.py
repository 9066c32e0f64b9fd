"""Typed recipe config: YAML loading, dotted overrides, and one-line errors naming the bad key."""
import pytest

from momo_ds.config import ConfigError, RecipeConfig, load_recipe, model_preset, packaged_recipe


def test_packaged_recipes_load_and_validate():
    for preset in ("tiny", "base", "large"):
        for stage in (1, 2, 3):
            r = load_recipe(packaged_recipe(preset, stage))
            assert isinstance(r, RecipeConfig) and r.stage == stage and r.preset == preset


def test_paper_settings_in_base_and_large_recipes():
    for preset in ("base", "large"):
        s1, s2, s3 = (load_recipe(packaged_recipe(preset, s)) for s in (1, 2, 3))
        assert (s1.train.lr, s2.train.lr, s3.train.lr) == (1.5e-4, 5e-5, 1e-4)
        assert all(st.batch_size == 64 for r in (s1, s2, s3) for st in r.data.streams)
        assert s1.data.streams[0].image_mask_ratio == 0.75
        img, txt = s2.data.streams
        assert img.repeat == 5.0 and txt.text_mask_ratio == 0.15
        text, pair = s3.data.streams
        assert (pair.image_mask_ratio, pair.text_mask_ratio) == (0.75, 0.75) and pair.augment == "randaug"
        assert set(pair.objectives) == {"cmm", "itc", "itm"}


def test_dotted_overrides_apply_and_parse_types(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("stage: 2\ndata:\n  streams:\n    - {name: t, kind: text, objectives: {mlm: 1.0}}\n")
    r = load_recipe(p, ["train.lr=1e-4", "data.streams.0.batch_size=8", "model.depth=2", "train.betas=[0.9, 0.99]"])
    assert r.train.lr == 1e-4 and r.data.streams[0].batch_size == 8 and r.model == {"depth": 2}
    assert r.train.betas == [0.9, 0.99] and r.model_config().depth == 2


@pytest.mark.parametrize("override, needle", [
    ("train.lrr=1", "'train.lrr'"),
    ("train.lr=abc", "train.lr"),
    ("data.streams.0.kind=video", "data.streams.0.kind"),
    ("data.streams.0.image_mask_ratio=1.0", "image_mask_ratio"),
    ("model.depthh=3", "depthh"),
    ("data.streams.5.batch_size=2", "data.streams.5"),
    ("nonsense", "key.path=value"),
])
def test_bad_keys_and_values_are_one_line_errors(override, needle):
    with pytest.raises(ConfigError) as e:
        load_recipe(None, [override]).model_config()
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="valid keys of train: max_steps"):
        load_recipe(None, ["train.bogus=1"])


def test_objective_must_match_stream_kind():
    with pytest.raises(ConfigError, match="not valid for kind 'image'"):
        load_recipe(None, ["data.streams=[{kind: image, objectives: {mlm: 1.0}}]"])


def test_presets():
    assert model_preset("base").embed_dim == 768 and model_preset("large").depth == 24
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        model_preset("huge")
