"""momo-ds: DeepSpeed pretraining of MoMo, one transformer encoder shared by images, text and image-text pairs."""
__version__ = "0.1.0"


def build_model(preset_or_config="tiny", **overrides):
    """Build a MoMo model from a preset name (``tiny``/``base``/``large``) or a ModelConfig, with overrides."""
    from momo_ds.model import build_model as _build

    return _build(preset_or_config, **overrides)


__all__ = ["build_model", "__version__"]
