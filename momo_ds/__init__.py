"""momo-ds: DeepSpeed pretraining of MoMo, one transformer encoder shared by images, text and image-text pairs."""
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from momo_ds.pretrained import Pretrained

__version__ = "0.1.0"


def build_model(preset_or_config="tiny", **overrides):
    """Build a MoMo model from a preset name (``tiny``/``base``/``large``) or a ModelConfig, with overrides."""
    from momo_ds.model import build_model as _build

    return _build(preset_or_config, **overrides)


def load_pretrained(path, device="cpu", **kwargs) -> "Pretrained":
    """A trained encoder ready for images and strings: ``<out>/stageN``, its ``encoder.safetensors`` or a folder
    written by ``momo_ds.model.hf_export.save_pretrained`` (see :mod:`momo_ds.pretrained`)."""
    from momo_ds.pretrained import load_pretrained as _load

    return _load(path, device, **kwargs)


__all__ = ["build_model", "load_pretrained", "__version__"]
