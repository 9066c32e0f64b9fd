"""The pretraining objectives and their properties, written once.

Config validation (which objectives a stream may train, which decoders a recipe builds), model building (the
decoders), the model's loss sum (which terms an objective's weight multiplies) and the tests read this table.
Pure data: no torch import.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Objective:
    """name: the recipe key; kind: the batch kind it trains on (image | text | pair); terms: the unweighted loss
    terms its weight multiplies; decoder: the decoder it needs, reconstructing patches (``image``) and/or tokens
    (``text``), or None for a head on the encoder's states."""

    name: str
    kind: str
    terms: tuple[str, ...]
    decoder: Optional[str] = None
    image: bool = False
    text: bool = False


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("mim", "image", ("mim_loss",), decoder="mim", image=True),
    Objective("mlm", "text", ("mlm_loss",), decoder="mlm", text=True),
    Objective("cmm", "pair", ("cmm_image_loss", "cmm_text_loss"), decoder="cmm", image=True, text=True),
    Objective("itc", "pair", ("itc_loss",)),
    Objective("itm", "pair", ("itm_loss",)),
)}
BATCH_KINDS = ("image", "text", "pair")
DECODERS = tuple(o.decoder for o in OBJECTIVES.values() if o.decoder)


def objectives_for(kind: str) -> tuple[str, ...]:
    """The objectives a batch of ``kind`` can train."""
    return tuple(name for name, o in OBJECTIVES.items() if o.kind == kind)


def decoders_for(objectives) -> list[str]:
    """The decoders a set of objective names needs, in registry order."""
    needed = {OBJECTIVES[o].decoder for o in objectives if o in OBJECTIVES}
    return [d for d in DECODERS if d in needed]
