"""The parts of a MoMo state dict, named once, and the one function that loads some of them.

  encoder      cls_token, image_embed.*, text_embed.*, type_embed.*, encoder.*   the shared network
  contrastive  image_proj.*, text_proj.*, logit_scale                            zero-shot retrieval
  itm_head     itm_head.*                                                        image-text matching
  lm_head      lm_head.* (its weight is the token embedding, tied; the bias is its own)
  decoders     decoders.*                                                        discarded after pretraining

Who reads which part: an export keeps encoder + contrastive + itm_head (:mod:`momo_ds.model.export`); a stage
hands every part but the decoders to the next one (``shared_fp32.safetensors``), which starts its decoders fresh;
the final export of a stage loads the whole fp32 checkpoint. Tied weights are never stored or loaded twice: they
are re-tied after loading.
"""
from __future__ import annotations

from typing import Iterable

from torch import Tensor, nn

PARTS: dict[str, tuple[str, ...]] = {
    "encoder": ("cls_token", "image_embed.", "text_embed.", "type_embed.", "encoder."),
    "contrastive": ("image_proj.", "text_proj.", "logit_scale"),
    "itm_head": ("itm_head.",),
    "lm_head": ("lm_head.",),
    "decoders": ("decoders.",),
}
TIED = ("lm_head.weight",)  # the token embedding under another name
EXPORT_PARTS = ("encoder", "contrastive", "itm_head")  # encoder.safetensors
NEXT_STAGE_PARTS = ("encoder", "contrastive", "itm_head", "lm_head")  # shared_fp32.safetensors


def part_of(key: str) -> str:
    """The part a state-dict key belongs to (KeyError for a key of no part)."""
    for name, prefixes in PARTS.items():
        if key.startswith(prefixes):
            return name
    raise KeyError(f"{key!r} belongs to no part of a MoMo state dict ({', '.join(PARTS)})")


def has_part(state: dict[str, Tensor], name: str) -> bool:
    return any(_part(k) == name for k in state)


def select(state: dict[str, Tensor], parts: Iterable[str]) -> dict[str, Tensor]:
    """The keys of ``state`` in ``parts``, tied duplicates left out (tensors are not copied)."""
    parts = set(parts)
    return {k: v for k, v in state.items() if k not in TIED and _part(k) in parts}


def load_parts(model: nn.Module, state: dict[str, Tensor], required: Iterable[str], optional: Iterable[str] = (),
               ignore: Iterable[str] = ()) -> None:
    """Load some parts of ``state`` into ``model``; the model keeps its values for everything else.

    required: every model key of these parts must be in ``state``.
    optional: parts loaded when ``state`` has them; all of a part or none of it (a part half there is an error:
              a head half loaded would score nothing).
    ignore:   parts of ``state`` dropped unread (the previous stage's decoders, an export's heads).
    Any other key of ``state`` is an error, so a mismatched config never loads silently. Raises ValueError naming
    the first missing and unexpected keys.
    """
    required, optional, ignore = set(required), set(optional), set(ignore)
    model_keys = [k for k in model.state_dict() if k not in TIED]
    state = {k: v for k, v in state.items() if k not in TIED and _part(k) not in ignore}
    present = {_part(k) for k in state}
    load = required | (optional & present)
    want = {k for k in model_keys if _part(k) in load}
    missing = sorted(want - set(state))
    unexpected = sorted(set(state) - want)
    if missing or unexpected:
        raise ValueError(f"state dict does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def _part(key: str) -> str:
    try:
        return part_of(key)
    except KeyError:
        return "unknown"  # never wanted: reported as unexpected
