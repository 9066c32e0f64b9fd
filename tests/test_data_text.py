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


BERT_VOCAB = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "d", "e", "l", "r", "s",
              "the", "large", "red", "cafe", "circle", "##s", "##e", "##d", ",", "."]


def _vocab(path, tokens):
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("cased", [False, True])
def test_bert_vocab_txt_file_and_folder_match_transformers(tmp_path, cased):
    """A BERT vocab.txt (file, or a folder with nothing else) tokenises as transformers' BertTokenizer does
    from the same folder; cased vocabularies keep case (and accents), uncased ones fold both."""
    from transformers import BertTokenizer

    tokens = BERT_VOCAB + (["Large", "Red", "Café"] if cased else [])
    folder = tmp_path / "bert"
    folder.mkdir()
    vocab = _vocab(folder / "vocab.txt", tokens)
    reference = BertTokenizer.from_pretrained(str(folder), do_lower_case=not cased)
    texts = ["The LARGE red circles, a café.", "Large Red Café", "unknownword reds"]
    for tok in (load_tokenizer(vocab), load_tokenizer(folder)):
        assert tok.vocab_size == len(tokens) and tok.pad_id == 0
        assert tok.encode(texts) == [reference.encode(t, add_special_tokens=False) for t in texts]


def test_bad_tokenizer_paths_name_the_config_key(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text("{not json")
    _vocab(tmp_path / "words.txt", ["hello", "world"])
    for path, needle in ((tmp_path / "empty", "no tokenizer.json or vocab.txt"), (tmp_path / "bad.json", "JSON"),
                         (tmp_path / "words.txt", "no [UNK] token"), ("no-such-name-xyz", "local Hugging Face cache")):
        with pytest.raises(DataError) as e:
            load_tokenizer(path)
        msg = str(e.value)
        assert needle in msg and "\n" not in msg
        if needle != "no [UNK] token":
            assert "data.tokenizer" in msg and "--tokenizer" in msg


def test_saved_tokenizer_is_self_contained(tmp_path):
    from momo_ds.data.text import save_tokenizer

    tok = load_tokenizer(_vocab(tmp_path / "vocab.txt", BERT_VOCAB))
    assert save_tokenizer(tok, tmp_path / "bundle.json")
    (tmp_path / "vocab.txt").unlink()
    again = load_tokenizer(tmp_path / "bundle.json")
    assert again.encode(["the red circles"]) == tok.encode(["the red circles"]) and again.vocab_size == tok.vocab_size


def test_vocab_fill_warning():
    from momo_ds.data.text import vocab_fill_warning

    class Tok:
        name, vocab_size = "t.json", 400

    assert vocab_fill_warning(Tok(), 512) is None and vocab_fill_warning(Tok(), 800) is None
    msg = vocab_fill_warning(Tok(), 30522)
    assert "400 tokens" in msg and "model.vocab_size=30522" in msg and "set model.vocab_size=400" in msg
