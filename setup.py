"""momo-ds: DeepSpeed pretraining of MoMo (one encoder for images, text and image-text pairs)."""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="momo-ds",
    version="0.1.0",
    description="Scale-out DeepSpeed pretraining of MoMo, a single transformer encoder shared by images and text",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["momo_ds", "momo_ds.*"]),
    package_data={"momo_ds": ["configs/*/*.yaml"]},
    install_requires=[
        "torch>=2.4,<2.15",
        "deepspeed>=0.16,<0.20",
        "timm>=1.0.9,<2",
        "transformers>=4.44,<6",
        "tokenizers>=0.19,<0.24",
        "webdataset>=0.2.86,<2",
        "safetensors>=0.4,<1",
        "pyyaml>=6,<7",
        "rich>=13,<16",
        "pillow>=10",
        "numpy>=1.24",
        "tensorboard>=2.14,<3",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.3"],
        # Optional GPU kernels: flash-attn varlen attention. NVIDIA apex (FusedLayerNorm) is auto-detected when
        # built from NVIDIA's sources; it is deliberately not listed (the PyPI package of that name is unrelated).
        "gpu": ["flash-attn>=2.5"],
    },
    entry_points={"console_scripts": []},
    classifiers=["Programming Language :: Python :: 3", "Topic :: Scientific/Engineering :: Artificial Intelligence"],
)
