"""Tokenizers: a tokenizer.json, a BERT vocab.txt, a saved Hugging Face tokenizer (file, folder or local cache),
and the tiny preset's WordPiece.

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


def _wordpiece(vocab: dict[str, int], lowercase: bool):
    """A BERT-style WordPiece ``tokenizers.Tokenizer``: BERT normaliser (lower-casing and accent stripping when
    ``lowercase``) and pre-tokeniser, ``##`` continuation pieces, ``[UNK]`` fallback."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    tok = RustTokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return tok


def _lowercase_vocab(vocab: dict[str, int], folder: Optional[Path]) -> bool:
    """Whether a BERT vocabulary is uncased: ``do_lower_case`` of a tokenizer_config.json beside it, else no
    upper-case letter in any token outside the bracketed special tokens (true of BERT's uncased vocabularies)."""
    config = folder / "tokenizer_config.json" if folder is not None else None
    if config is not None and config.is_file():
        import json

        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("do_lower_case")
        except (ValueError, OSError, AttributeError):
            value = None
        if isinstance(value, bool):
            return value
    return not any(c.isupper() for t in vocab if not (t.startswith("[") and t.endswith("]")) for c in t)


def load_vocab_txt(path: Union[str, Path]) -> Tokenizer:
    """A BERT ``vocab.txt`` (one token per line, line number = id, read by tokenizers' own WordPiece reader) as a
    WordPiece tokenizer."""
    from tokenizers import models

    path = Path(path)
    try:
        vocab = models.WordPiece.read_file(str(path))
    except Exception as e:  # tokenizers raises its own exception types for unreadable or non-UTF-8 files
        raise DataError(f"tokenizer {path}: cannot read the vocabulary ({type(e).__name__}: {e})") from None
    if "[UNK]" not in vocab:
        raise DataError(f"tokenizer {path}: not a BERT vocab.txt (no [UNK] token among its {len(vocab)} tokens)")
    return _from_tokenizers(_wordpiece(vocab, _lowercase_vocab(vocab, path.parent)), str(path))


def _load_file(path: Path, name: str) -> Tokenizer:
    if path.suffix == ".txt":
        return load_vocab_txt(path)
    from tokenizers import Tokenizer as RustTokenizer

    try:
        return _from_tokenizers(RustTokenizer.from_file(str(path)), name)
    except Exception as e:
        raise DataError(f"tokenizer file {name}: cannot be loaded as a tokenizers JSON file "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); {TOKENIZER_HINT}") from None


TOKENIZER_HINT = ("set data.tokenizer (training) or --tokenizer (evaluation) to a tokenizer.json, a BERT vocab.txt, "
                  "or a folder holding either or a saved Hugging Face tokenizer")


def load_tokenizer(name_or_path: Union[str, Path]) -> Tokenizer:
    """A tokenizer from a ``tokenizer.json`` file, a BERT ``vocab.txt``, a folder holding a saved Hugging Face
    tokenizer (or just one of those files), or a name in the local Hugging Face cache.

    Raises DataError (one line) when it cannot be found locally.
    """
    name = str(name_or_path)
    if name == "synthetic":
        raise DataError("tokenizer 'synthetic' is resolved by momo_ds.data.resolve_synthetic (the dataset's "
                        "tokenizer.json); call it before load_tokenizer")
    path = Path(name).expanduser()
    if path.is_file():
        return _load_file(path, name)
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(path) if path.is_dir() else name, local_files_only=True)
    except Exception as e:
        for member in ("tokenizer.json", "vocab.txt"):
            if path.is_dir() and (path / member).is_file():
                return _load_file(path / member, str(path / member))
        where = "folder (no tokenizer.json or vocab.txt in it)" if path.is_dir() else \
            "name (not a local file or folder, and not in the local Hugging Face cache)"
        raise DataError(f"tokenizer {name!r}: cannot load this {where}; nothing is downloaded at run time: "
                        f"{TOKENIZER_HINT} ({type(e).__name__})") from None
    return _from_transformers(hf, name)


def save_tokenizer(tokenizer: Tokenizer, path: Union[str, Path]) -> bool:
    """Write ``tokenizer`` as a self-contained tokenizer.json at ``path`` (atomically); False when its backend
    has no such form (a Python-only transformers tokenizer)."""
    if not tokenizer._fast:
        return False
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tokenizer._backend.save(str(tmp))
    tmp.replace(path)
    return True


def vocab_fill_warning(tokenizer: Tokenizer, vocab_size: int) -> Optional[str]:
    """A warning when the tokenizer uses under half of ``model.vocab_size``'s embedding rows (the rest are
    parameters that never receive a token), else None."""
    if tokenizer.vocab_size * 2 >= vocab_size:
        return None
    return (f"warning: tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens, "
            f"{tokenizer.vocab_size / vocab_size:.0%} of model.vocab_size={vocab_size}: the other embedding rows are "
            f"never used (set model.vocab_size={tokenizer.vocab_size})")


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
    from tokenizers import normalizers, pre_tokenizers

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
    tok = _wordpiece(vocab, lowercase=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tok.save(str(tmp))
    tmp.replace(path)
    return _from_tokenizers(RustTokenizer.from_file(str(path)), str(path))
