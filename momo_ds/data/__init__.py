"""Data side of momo-ds: webdataset streams of images, text and image-text pairs → masked micro-batches.

Public API::

    from momo_ds.data import build_stage_loader, build_eval_loader, load_tokenizer, SkipStats, DataError
    tok = load_tokenizer("bert-base-uncased" | "/path/tokenizer.json" | "/path/saved_dir")
    loader = build_stage_loader(data_cfg, tokenizer=tok, patch_size=16, rank=r, world_size=w)
    batches = loader.next()   # {stream name: ImageBatch | TextBatch | PairBatch}

Modules: shards (URLs, epochs, rank/worker split, webdataset pipelines), decode (bytes → RGB / text / label),
transforms (augmentation), text (tokenizers), masking (patch / token masks), collate (batch dataclasses),
stream (per-slot sample → batch iterator), loader (stage/eval loaders, resumable state), synthetic (built-in
dataset), errors (DataError, SkipStats), rng (derived seeds).
"""
from .errors import DataError, SampleError, SkipStats
from .loader import EvalLoader, StageLoader, build_eval_loader, build_stage_loader, check_streams
from .synthetic import SyntheticInfo, make_synthetic, resolve_synthetic
from .text import Tokenizer, load_tokenizer, train_wordpiece

__all__ = ["DataError", "SampleError", "SkipStats", "EvalLoader", "StageLoader", "build_eval_loader",
           "build_stage_loader", "check_streams", "SyntheticInfo", "make_synthetic", "resolve_synthetic", "Tokenizer",
           "load_tokenizer", "train_wordpiece"]
