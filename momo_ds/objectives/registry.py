"""The pretraining objectives and their properties, written once.

Config validation (which objectives a stream may train, which decoders a recipe builds), model building (the
decoders), the task layer (the model output each objective reads, which terms its weight multiplies, which
modules it uses: the zero-gradient touch gives the others a zero gradient) and the tests read this table.
Pure data: no torch import.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Objective:
    """name: the recipe key; kind: the batch kind it trains on (image | text | pair); terms: the unweighted loss
    terms its weight multiplies; output: the ``MoMo.forward`` output it reads; modules: the model attributes
    (modules, or the ``logit_scale`` parameter) it uses besides :data:`ENCODER_MODULES` and its decoder;
    decoder: the decoder it needs, reconstructing patches (``image``) and/or tokens (``text``), or None for a head
    on the encoder's states."""

    name: str
    kind: str
    terms: tuple[str, ...]
    output: str
    modules: tuple[str, ...]
    decoder: Optional[str] = None
    image: bool = False
    text: bool = False


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("mim", "image", ("mim_loss",), "mim", ("image_embed",), decoder="mim", image=True),
    Objective("mlm", "text", ("mlm_loss",), "mlm", ("text_embed", "lm_head"), decoder="mlm", text=True),
    Objective("cmm", "pair", ("cmm_image_loss", "cmm_text_loss"), "cmm", ("image_embed", "text_embed", "lm_head"),
              decoder="cmm", image=True, text=True),
    Objective("itc", "pair", ("itc_loss",), "embed",
              ("image_embed", "text_embed", "image_proj", "text_proj", "logit_scale")),
    Objective("itm", "pair", ("itm_loss",), "match", ("image_embed", "text_embed", "itm_head")),
)}
#: what every forward uses: the [CLS] token, the type embeddings and the shared encoder
ENCODER_MODULES = ("cls_token", "type_embed", "encoder")
BATCH_KINDS = ("image", "text", "pair")
DECODERS = tuple(o.decoder for o in OBJECTIVES.values() if o.decoder)


def objectives_for(kind: str) -> tuple[str, ...]:
    """The objectives a batch of ``kind`` can train."""
    return tuple(name for name, o in OBJECTIVES.items() if o.kind == kind)


def decoders_for(objectives) -> list[str]:
    """The decoders a set of objective names needs, in registry order."""
    needed = {OBJECTIVES[o].decoder for o in objectives if o in OBJECTIVES}
    return [d for d in DECODERS if d in needed]
