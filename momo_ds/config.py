"""Typed configuration: dataclasses, YAML loading and dotted command-line overrides.

A recipe is a YAML file whose top-level keys are the fields of :class:`RecipeConfig`. Every key is checked:
an unknown or mistyped key raises :class:`ConfigError` naming the key and the valid ones.

    cfg = load_recipe("momo_ds/configs/tiny/stage1.yaml", overrides=["train.lr=1e-4", "model.depth=2"])
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from momo_ds.objectives.registry import BATCH_KINDS, DECODERS, decoders_for, objectives_for


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it."""


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


def check_choices(cfg, where: str) -> None:
    """Every ``Literal[...]`` field of a config dataclass holds one of its values (the one place enumerated
    values are checked: dataclasses built in code bypass the YAML loader's type checks)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else ()
        value = getattr(cfg, f.name)
        if choices and (value not in choices or isinstance(value, bool)):  # True == 1 in Python
            raise ConfigError(f"{where}.{f.name}={value!r}; valid: {', '.join(map(str, choices))}")


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


# ------------------------------------------------------------------------------------------------ generic loading
def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, key: str):
    """Check/convert ``value`` to the annotated type ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:  # membership is checked by check_choices, with the valid values in the message
        choices = typing.get_args(tp)
        if value not in choices and isinstance(value, str) and str(value) in map(str, choices):
            return next(c for c in choices if str(c) == value)
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {tp}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        k_tp, v_tp = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(k, k_tp, key): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def from_dict(cls, values: dict, where: str = ""):
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown config key {key!r}; valid keys{' of ' + where if where else ''}: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    """Plain-dict form of a config dataclass (for saving beside checkpoints)."""
    return dataclasses.asdict(cfg)


def _set_dotted(tree: dict, dotted: str, value) -> None:
    """Set ``value`` at ``a.b.0.c`` inside nested dicts/lists. A list is indexed by an integer, or by the
    ``name`` of one of its mappings (``data.streams.pair.shards``)."""
    parts = dotted.split(".")
    node = tree
    for i, p in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            node = node[_list_index(node, p, dotted, ".".join(parts[:i + 1]))]
        else:
            if p not in node or node[p] is None:
                node[p] = [] if nxt.isdigit() else {}
            node = node[p]
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, dotted, dotted)] = value
    else:
        node[last] = value


def _list_index(items: list, part: str, dotted: str, where: str) -> int:
    if part.isdigit() and int(part) < len(items):
        return int(part)
    names = [x.get("name") for x in items if isinstance(x, dict)]
    if not part.isdigit() and part in names:
        return names.index(part)
    valid = f"0..{len(items) - 1}" if items else "none"
    if any(names):
        valid += " or a name: " + ", ".join(str(n) for n in names)
    raise ConfigError(f"override {dotted!r}: {where} is not a valid list index (valid: {valid})")


def split_shard_list(raw: str) -> list[str]:
    """``[a-{000..009}.tar, b.tar]`` (brackets optional) -> ``["a-{000..009}.tar", "b.tar"]``.

    Shard patterns are not parsed as YAML: a brace pattern inside a flow list (``[x-{0..9}.tar]``) is a YAML
    syntax error, and webdataset's own ``{a,b}`` alternatives contain commas. Items are split at commas outside
    braces; surrounding quotes are dropped.
    """
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    items, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    out = [item.strip().strip("'\"").strip() for item in items]
    return [item for item in out if item]


def parse_override(item: str) -> tuple[str, Any]:
    """``key.path=value`` -> (key, value). Values are YAML, except shard lists (see :func:`split_shard_list`)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    if key.split(".")[-1] == "shards":
        return key, split_shard_list(raw)
    if raw == "":
        return key, ""
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as e:
        reason = str(e).splitlines()[0]
        raise ConfigError(f"override {key}={raw}: the value is not valid YAML ({reason}); quote the whole "
                          f"override for the shell, e.g. --set '{key}=...'") from None


def check_repeated_shards(overrides: list[str]) -> None:
    """Several ``shards=`` overrides of one key are an error, not "last wins": it is what the shell makes of an
    unquoted brace pattern (``--set x.shards=[a-{0..9}.tar]`` becomes ten words, one shard each)."""
    seen: dict[str, list[str]] = {}
    for item in overrides:
        key, _, raw = item.partition("=")
        if key.strip().split(".")[-1] == "shards":
            seen.setdefault(key.strip(), []).append(raw)
    for key, values in seen.items():
        if len(values) > 1:
            raise ConfigError(
                f"{key} is given {len(values)} times ({values[0]}, {values[1]}, ...); an unquoted brace pattern "
                f"is expanded by the shell into one override per shard: quote it, e.g. "
                f"--set '{key}=[/data/train-{{000000..000099}}.tar]'")


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` strings to a nested dict; returns a new dict."""
    tree = copy.deepcopy(tree)
    check_repeated_shards(list(overrides or []))
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    return tree


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
