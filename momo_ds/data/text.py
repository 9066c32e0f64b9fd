"""Tokenizers: any Hugging Face tokenizer from a local file/dir/cache, and the tiny preset's WordPiece.

Token ids never carry the tokenizer's special tokens ([CLS]/[SEP]): the model adds its own [CLS]. Nothing is
downloaded: names resolve only through the local Hugging Face cache.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from .errors import DataError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_PAD_CANDIDATES = ("[PAD]", "<pad>", "<|pad|>", "<PAD>")


class Tokenizer:
    """A thin, picklable wrapper: ``encode(list[str]) -> list[list[int]]`` without special tokens.

    backend: a ``tokenizers.Tokenizer`` (fast path) or a transformers tokenizer without a Rust backend.
    """

    def __init__(self, backend, name: str, pad_id: int, vocab_size: int):
        self._backend = backend
        self._fast = backend.__class__.__module__.startswith("tokenizers")
        self.name = name
        self.pad_id = int(pad_id)
        self.vocab_size = int(vocab_size)

    def encode_one(self, text: str) -> list[int]:
        if self._fast:
            return self._backend.encode(text, add_special_tokens=False).ids
        return list(self._backend.encode(text, add_special_tokens=False))

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        # One call per text: encode_batch would start the Rust thread pool, after which forked loader workers
        # print a warning and run single-threaded anyway.
        if isinstance(texts, str):
            raise TypeError("Tokenizer.encode takes a list of strings; use encode_one for a single string")
        return [self.encode_one(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        return self._backend.decode(ids, skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, pad_id={self.pad_id})"


def _from_tokenizers(tok, name: str) -> Tokenizer:
    tok.no_truncation()
    tok.no_padding()
    pad_id: Optional[int] = None
    for t in _PAD_CANDIDATES:
        pad_id = tok.token_to_id(t)
        if pad_id is not None:
            break
    return Tokenizer(tok, name, 0 if pad_id is None else pad_id, tok.get_vocab_size(with_added_tokens=True))


def _from_transformers(hf, name: str) -> Tokenizer:
    pad_id = hf.pad_token_id if hf.pad_token_id is not None else 0
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is not None:
        import copy

        backend = copy.deepcopy(backend)
        backend.no_truncation()
        backend.no_padding()
        return Tokenizer(backend, name, pad_id, len(hf))
    return Tokenizer(hf, name, pad_id, len(hf))


def load_tokenizer(name_or_path: Union[str, Path]) -> Tokenizer:
    """A tokenizer from a ``tokenizer.json`` file, a saved tokenizer directory, or a name in the local HF cache.

    Raises DataError (one line) when it cannot be found locally.
    """
    name = str(name_or_path)
    if name == "synthetic":
        raise DataError("tokenizer 'synthetic' is resolved by momo_ds.data.resolve_synthetic (the dataset's "
                        "tokenizer.json); call it before load_tokenizer")
    path = Path(name).expanduser()
    if path.is_file():
        from tokenizers import Tokenizer as RustTokenizer

        try:
            return _from_tokenizers(RustTokenizer.from_file(str(path)), name)
        except Exception as e:
            raise DataError(f"tokenizer file {name}: cannot be loaded ({type(e).__name__}: {e})") from None
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(path) if path.is_dir() else name, local_files_only=True)
    except Exception as e:
        if path.is_dir() and (path / "tokenizer.json").is_file():
            return load_tokenizer(path / "tokenizer.json")
        where = "directory" if path.is_dir() else "name (not a local file/dir and not in the local HF cache)"
        raise DataError(f"tokenizer {name!r}: cannot load {where}; nothing is downloaded at run time — pass a "
                        f"tokenizer.json or a saved tokenizer directory ({type(e).__name__})") from None
    return _from_transformers(hf, name)


def train_wordpiece(texts: Iterable[str], path: Union[str, Path], vocab_size: int = 512) -> Tokenizer:
    """Build a lower-casing BERT-style WordPiece tokenizer for ``texts`` and save it as ``path`` (tokenizer.json).

    Vocabulary: the special tokens, the corpus alphabet (as word-initial and ``##`` continuation pieces), then the
    most frequent words (ties alphabetical) up to ``vocab_size``; words outside it fall back to pieces by
    WordPiece's greedy longest match. Normalisation and pre-tokenisation are tokenizers' BERT components. This is
    exactly deterministic (byte-identical file), unlike tokenizers' WordPieceTrainer, whose merge ties depend on
    hash-map order — and a closed, small-vocabulary corpus such as the synthetic one is covered by whole words.
    """
    from collections import Counter

    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for text in texts:
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    alphabet = sorted({c for w in counts for c in w})
    base = SPECIAL_TOKENS + alphabet + ["##" + c for c in alphabet]
    if len(base) > vocab_size:
        raise ValueError(f"vocab_size={vocab_size} is smaller than the special tokens + alphabet ({len(base)})")
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1]
    vocab = {t: i for i, t in enumerate(base + sorted(words[: vocab_size - len(base)]))}
    tok = RustTokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tok.save(str(tmp))
    tmp.replace(path)
    return _from_tokenizers(RustTokenizer.from_file(str(path)), str(path))
