"""Tokenizers: local file / saved directory / cache name, no special tokens, deterministic WordPiece training."""
from __future__ import annotations

import pickle

import pytest

from momo_ds.data import DataError, load_tokenizer, train_wordpiece

CORPUS = ["a large red circle above a small blue square", "two small green triangles below a large circle",
          "there is a large yellow diamond in the middle"] * 5


def test_wordpiece_training_is_deterministic(tmp_path):
    a = train_wordpiece(CORPUS, tmp_path / "a.json", vocab_size=120)
    b = train_wordpiece(CORPUS, tmp_path / "b.json", vocab_size=120)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert a.vocab_size <= 120 and a.pad_id == 0 and b.vocab_size == a.vocab_size


def test_encode_has_no_special_tokens_and_roundtrips(tmp_path):
    tok = train_wordpiece(CORPUS, tmp_path / "t.json", vocab_size=120)
    ids = tok.encode(["A Large RED circle", "square"])
    assert len(ids) == 2 and all(isinstance(i, int) for i in ids[0])
    specials = {tok._backend.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")}
    assert not specials & set(ids[0] + ids[1])
    assert tok.decode(ids[0]) == "a large red circle"
    assert pickle.loads(pickle.dumps(tok)).encode(["red"]) == tok.encode(["red"]), "picklable for workers"
    with pytest.raises(TypeError):
        tok.encode("not a list")


def test_load_from_file_dir_and_missing_name(tmp_path):
    train_wordpiece(CORPUS, tmp_path / "tok.json", vocab_size=120)
    from_file = load_tokenizer(tmp_path / "tok.json")
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tok.json"), pad_token="[PAD]", cls_token="[CLS]",
                                 sep_token="[SEP]", unk_token="[UNK]", mask_token="[MASK]")
    hf.save_pretrained(tmp_path / "saved")
    from_dir = load_tokenizer(str(tmp_path / "saved"))
    text = ["two small green triangles"]
    assert from_dir.encode(text) == from_file.encode(text)
    assert from_dir.pad_id == from_file.pad_id == 0 and from_dir.vocab_size == from_file.vocab_size
    with pytest.raises(DataError, match="nothing is downloaded"):
        load_tokenizer("no-such-org/no-such-tokenizer-xyz")
    with pytest.raises(DataError, match="resolve_synthetic"):
        load_tokenizer("synthetic")
