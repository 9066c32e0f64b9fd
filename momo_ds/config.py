"""Typed configuration: the config dataclasses, presets and recipe loading (the key rules live in
:mod:`momo_ds.typed`, the dotted command-line overrides in :mod:`momo_ds.overrides`).

A recipe is a YAML file whose top-level keys are the fields of :class:`RecipeConfig`. Every key is checked:
an unknown or mistyped key raises :class:`ConfigError` naming the key and the valid ones.

    cfg = load_recipe("momo_ds/configs/tiny/stage1.yaml", overrides=["train.lr=1e-4", "model.depth=2"])
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from momo_ds.objectives.registry import BATCH_KINDS, DECODERS, decoders_for, objectives_for
from momo_ds.overrides import apply_overrides
from momo_ds.typed import ConfigError, check_choices, from_dict


# ----------------------------------------------------------------------------------------------------------- model
AlignInputs = Literal["full", "masked_image", "masked"]
ItmReadout = Literal["cls", "mean"]
AttnBackend = Literal["sdpa", "math", "flash_varlen"]
BatchKind = Literal["image", "text", "pair"]
Augment = Literal["rrc", "randaug", "none"]
Update = Literal["cmga", "alternating"]
ALIGN_INPUTS = typing.get_args(AlignInputs)
ITM_READOUTS = typing.get_args(ItmReadout)
assert typing.get_args(BatchKind) == BATCH_KINDS, "config and objective registry disagree on batch kinds"


@dataclass
class ModelConfig:
    """Shape and switches of the MoMo model (encoder, decoders, heads)."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-6
    vocab_size: int = 30522
    max_text_len: int = 512  # size of the learned text position table
    pad_token_id: int = 0
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    decoders: list[str] = field(default_factory=lambda: ["mim", "mlm", "cmm"])  # which to build
    shared_decoder: bool = False  # paper's ablation: one decoder for every objective
    norm_pix_loss: bool = True  # MIM target normalised per patch (MAE)
    proj_dim: int = 256  # contrastive embedding size
    init_temperature: float = 0.07
    # what contrastive/ITM see: "full" (unmasked pair), "masked_image" (a masked image with the whole caption:
    # the pair stream's align_mask_ratio of the patches hidden when it sets one, else the CMM-hidden ones) or
    # "masked" (the CMM inputs themselves: visible patches and visible words)
    align_inputs: AlignInputs = "full"
    # ITM negatives: the similarities are scaled by itm_hardness before the sampling softmax (1: as contrastive
    # sees them, 0: uniform, easy negatives); itm_readout: the joint state the ITM head reads ("cls" | "mean" of
    # every real token)
    itm_hardness: float = 1.0
    itm_readout: ItmReadout = "cls"
    # joint negatives per positive: 2 (a negative caption and a negative image for every pair, as VLMo/ALBEF) or
    # 1 (one per pair, sides alternating: even rows get a negative caption, odd rows a negative image)
    itm_negatives: Literal[1, 2] = 2
    attn_backend: AttnBackend = "sdpa"
    grad_checkpointing: bool = False

    def validate(self) -> "ModelConfig":
        check_choices(self, "model")
        if self.img_size % self.patch_size:
            raise ConfigError(f"model.img_size={self.img_size} is not a multiple of model.patch_size={self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"model.embed_dim={self.embed_dim} is not divisible by model.num_heads={self.num_heads}")
        if self.decoder_dim % self.decoder_heads:
            raise ConfigError(
                f"model.decoder_dim={self.decoder_dim} is not divisible by model.decoder_heads={self.decoder_heads}")
        bad = [d for d in self.decoders if d not in DECODERS]
        if bad:
            raise ConfigError(f"model.decoders: unknown decoder(s) {bad}; valid: {', '.join(DECODERS)}")
        if not 0.0 <= self.itm_hardness <= 1.0:
            raise ConfigError(f"model.itm_hardness={self.itm_hardness} is outside [0, 1]")
        return self

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # CPU preset: a training step in well under a second, learns the synthetic data in minutes.
    "tiny": dict(img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4, vocab_size=512, max_text_len=64,
                 decoder_dim=96, decoder_depth=2, decoder_heads=4, proj_dim=64),
    # ViT-B/16 encoder, 8x512 decoders, BERT-uncased vocabulary: 110M exported parameters.
    "base": dict(),
    # ViT-L/16 encoder, same decoders and vocabulary: 335M exported parameters.
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}


def model_preset(name: str, **overrides) -> ModelConfig:
    """The ModelConfig of a preset (``tiny`` | ``base`` | ``large``) with keyword overrides applied."""
    if name not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; valid: {', '.join(MODEL_PRESETS)}")
    values = {**MODEL_PRESETS[name], **overrides}
    return from_dict(ModelConfig, values, "model").validate()


# ------------------------------------------------------------------------------------------------------------ data
@dataclass
class StreamConfig:
    """One data stream of a stage: a source of one kind, the objectives trained on it and their weights."""

    name: str = "image"
    kind: BatchKind = "image"
    shards: list[str] = field(default_factory=list)  # URLs / brace patterns / pipe: commands
    objectives: dict[str, float] = field(default_factory=lambda: {"mim": 1.0})  # mim|mlm|cmm|itc|itm -> weight
    batch_size: int = 64  # per device, per optimizer step
    repeat: float = 1.0  # relative sampling weight / epoch repeat factor (stage 2 images: 5)
    image_mask_ratio: float = 0.75
    text_mask_ratio: float = 0.15
    augment: Augment = "rrc"  # rrc (random-resized-crop + flip) | randaug (rrc + RandAugment) | none
    max_text_len: int = 128
    # pair streams, model.align_inputs=masked_image: the share of patches contrastive and ITM do not see, drawn
    # independently of CMM's mask (FLIP's image masking); None: they see the CMM-visible patches
    align_mask_ratio: Optional[float] = None
    # draw each loader slot's shards with replacement (webdataset's ResampledShards, seeded) instead of epoch
    # windows: no coverage guarantee, never an empty slot; for mixtures of many more shards than are read per run
    resampled: bool = False
    # held-out shards of this stream for evaluation during training (train.eval_every); the built-in synthetic
    # data fills them with its val split
    eval_shards: list[str] = field(default_factory=list)

    def validate(self, where: str) -> "StreamConfig":
        check_choices(self, where)
        allowed = set(objectives_for(self.kind))
        bad = sorted(set(self.objectives) - allowed)
        if bad:
            raise ConfigError(f"{where}.objectives: {bad} not valid for kind {self.kind!r}; valid: {sorted(allowed)}")
        if not self.objectives:
            raise ConfigError(f"{where}.objectives is empty")
        ratios = [(self.image_mask_ratio, "image_mask_ratio"), (self.text_mask_ratio, "text_mask_ratio")]
        if self.align_mask_ratio is not None:
            if self.kind != "pair" or not {"itc", "itm"} & set(self.objectives):
                raise ConfigError(f"{where}.align_mask_ratio applies to pair streams with itc or itm; this stream "
                                  f"is {self.kind!r} with objectives {sorted(self.objectives)}")
            ratios.append((self.align_mask_ratio, "align_mask_ratio"))
        for r, name in ratios:
            if not 0.0 <= r < 1.0:
                raise ConfigError(f"{where}.{name}={r} is outside [0, 1)")
        if self.batch_size < 1:
            raise ConfigError(f"{where}.batch_size={self.batch_size} must be >= 1")
        return self


@dataclass
class DataConfig:
    """Where the data comes from and how it is decoded."""

    streams: list[StreamConfig] = field(default_factory=lambda: [StreamConfig()])
    # tokenizer.json, BERT vocab.txt, saved tokenizer folder or a name in the local HF cache; "synthetic": the
    # built-in dataset's WordPiece (tiny preset)
    tokenizer: str = "bert-base-uncased"
    image_size: int = 224
    num_workers: int = 4
    seed: int = 0
    shuffle_buffer: int = 2000
    synthetic: bool = False  # use the built-in synthetic dataset (generated into <out>/data if absent)
    synthetic_num: int = 4000  # images per split of the synthetic dataset

    def validate(self) -> "DataConfig":
        names = [s.name for s in self.streams]
        if len(set(names)) != len(names):
            raise ConfigError(f"data.streams: duplicate stream names {names}")
        if not self.streams:
            raise ConfigError("data.streams is empty")
        for i, s in enumerate(self.streams):
            s.validate(f"data.streams.{i}")
        if self.tokenizer == "synthetic" and not self.synthetic:
            raise ConfigError("data.tokenizer=synthetic is the vocabulary of the built-in synthetic dataset, which "
                              "is off (shards given or data.synthetic=false): set data.tokenizer to a "
                              "tokenizer.json, a BERT vocab.txt or a saved tokenizer folder")
        return self


# ----------------------------------------------------------------------------------------------------------- train
@dataclass
class TrainConfig:
    """Optimisation of one stage (steps are optimizer steps)."""

    max_steps: int = 1000
    warmup_steps: int = 100
    lr: float = 1.5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    log_every: int = 10
    # held-out evaluation every N steps and at the stage's end, on each stream's eval_shards (0: never): losses of
    # the stream's objectives on eval_batches fixed held-out batches per rank; retrieval and ITM for pair streams
    eval_every: int = 0
    eval_batches: int = 4
    save_every: int = 0  # 0: only at stage end
    keep_last: int = 2
    init_from: str = ""  # "previous" (stage N-1 export in the same --out), a path to encoder.safetensors, or ""
    mae_checkpoint: str = ""  # local timm MAE weights file to initialise the encoder (stage 1)
    seed: int = 0
    update: Update = "cmga"  # cmga: every step sums all streams | alternating: one stream per step (ablation only)
    # FLIP's unmasked tuning: in the last align_full_tail share of the steps contrastive and ITM see the unmasked
    # pair whatever model.align_inputs says (0: never)
    align_full_tail: float = 0.0


@dataclass
class RecipeConfig:
    """A full stage recipe: model, data and optimisation."""

    stage: int = 1
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # overrides applied on top of the preset
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def model_config(self, **settled) -> ModelConfig:
        """The validated ModelConfig: the preset, the recipe's ``model`` overrides, the decoders its objectives
        need, and ``settled`` values known only at run time (the tokenizer's pad id), applied before validation."""
        needed = decoders_for({o for s in self.data.streams for o in s.objectives})
        overrides = {"decoders": needed, **self.model, **settled}
        try:
            return model_preset(self.preset, **overrides)
        except ConfigError as e:
            raise ConfigError(str(e)) from None

    def validate(self) -> "RecipeConfig":
        check_choices(self.train, "train")
        if not 0.0 <= self.train.align_full_tail <= 1.0:
            raise ConfigError(f"train.align_full_tail={self.train.align_full_tail} is outside [0, 1]")
        self.data.validate()
        model = self.model_config()
        masked = [s.name for s in self.data.streams if s.align_mask_ratio is not None]
        if masked and model.align_inputs != "masked_image":
            raise ConfigError(f"data.streams.{masked[0]}.align_mask_ratio needs model.align_inputs=masked_image "
                              f"(it is {model.align_inputs!r})")
        return self


def load_yaml(path: Union[str, Path]) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def recipe_from_dict(tree: dict) -> RecipeConfig:
    """A validated RecipeConfig from a plain nested dict."""
    cfg = from_dict(RecipeConfig, tree)
    return cfg.validate()


def load_recipe(path: Optional[Union[str, Path]] = None, overrides: Optional[list[str]] = None) -> RecipeConfig:
    """Load a recipe YAML (or the defaults when ``path`` is None) and apply dotted overrides."""
    tree = load_yaml(path) if path else {}
    tree = apply_overrides(tree, overrides or [])
    return recipe_from_dict(tree)


PACKAGED_RECIPES = Path(__file__).parent / "configs"


def packaged_recipe(preset: str, stage: int) -> Path:
    """Path of a recipe shipped with the package: ``momo_ds/configs/<preset>/stage<stage>.yaml``."""
    p = PACKAGED_RECIPES / preset / f"stage{stage}.yaml"
    if not p.is_file():
        raise ConfigError(f"no packaged recipe {p}")
    return p
