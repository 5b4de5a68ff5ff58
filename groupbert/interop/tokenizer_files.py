"""Tokenizer files for a Hugging Face model directory, built offline from the vocabulary a run used.

- WordPiece (BERT, GroupBERT): ``vocab.txt`` (a byte copy of the run's), and ``tokenizer.json`` +
  ``tokenizer_config.json`` written by ``transformers.BertTokenizer.save_pretrained`` with
  ``do_lower_case`` = the run's ``data.lowercase`` (accents are stripped with lowercasing, as in BERT's uncased
  tokenizer and ours), and ``special_tokens_map.json``. Built from our tokenizer's vocabulary dict:
  ``BertTokenizerFast(vocab_file=...)`` builds a wrong tokenizer in transformers 5.x (see
  ``groupbert/data/tokenizer.py``).
- Byte-level BPE (GPT-2): ``vocab.json`` + ``merges.txt`` (byte copies of the run's ``encoder.json`` /
  ``vocab.bpe``, HF's names for them), ``tokenizer.json`` + ``tokenizer_config.json`` from
  ``transformers.GPT2Tokenizer`` (no prefix space; ``<|endoftext|>`` is bos, eos and unk and there is no pad
  token, as in HF's ``gpt2``), and ``special_tokens_map.json``. One difference stays: our data preparation
  encodes a literal ``<|endoftext|>`` inside a document as ordinary text (tiktoken's ``encode_ordinary``),
  HF's tokenizer as the special token.

Before anything is written, the HF tokenizer must give our tokenizer's ids on a probe text, so a directory
whose tokenizer disagrees with its model's training is never produced.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from groupbert.data.causal_lm import END_OF_TEXT, load_gpt2_bpe
from groupbert.data.tokenizer import CLS, MASK, PAD, SEP, UNK, load_wordpiece
from groupbert.interop.hf import InteropError

PROBE = ("GroupBERT trains on IPUs: 12,345 sequences/s, naïve Café résumé!", "Second segment's text, 'quoted'.")
PROBE_BPE = "GroupBERT trains on IPUs.  Café naïve résumé!\n\nNew paragraph: 12,345 tokens' it's  spaced   out"


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_wordpiece(out_dir: str | Path, vocab_file: str | Path, lowercase: bool, model_max_length: int) -> list[str]:
    """Write the WordPiece files (module docstring) into ``out_dir``; returns their names."""
    import transformers

    out_dir, vocab_file = Path(out_dir), Path(vocab_file)
    ours = load_wordpiece(vocab_file, lowercase=lowercase)
    hf = transformers.BertTokenizer(vocab=ours.get_vocab(), do_lower_case=lowercase, unk_token=UNK, sep_token=SEP,
                                    pad_token=PAD, cls_token=CLS, mask_token=MASK, model_max_length=model_max_length)
    expected, got = ours.encode(*PROBE), hf.backend_tokenizer.encode(*PROBE)   # tokenizer.json's pipeline
    if got.ids != expected.ids or got.type_ids != expected.type_ids:
        raise InteropError(f"transformers' BertTokenizer built from {vocab_file} tokenises differently from ours "
                           f"({got.ids[:12]} vs {expected.ids[:12]}); not exporting a mismatched tokenizer")
    hf.save_pretrained(str(out_dir))
    shutil.copyfile(vocab_file, out_dir / "vocab.txt")
    _write_json(out_dir / "special_tokens_map.json", {"unk_token": UNK, "sep_token": SEP, "pad_token": PAD,
                                                      "cls_token": CLS, "mask_token": MASK})
    return ["vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def bpe_end_of_text_id(vocab_file: str | Path) -> int:
    """The id of ``<|endoftext|>`` in an ``encoder.json`` (GPT-2's bos/eos)."""
    vocab = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
    if END_OF_TEXT not in vocab:
        raise InteropError(f"{vocab_file} has no {END_OF_TEXT} token")
    return int(vocab[END_OF_TEXT])


def write_byte_level_bpe(out_dir: str | Path, vocab_file: str | Path, merges_file: str | Path,
                         model_max_length: int) -> list[str]:
    """Write the GPT-2 tokenizer files (module docstring) into ``out_dir``; returns their names."""
    import transformers

    out_dir, vocab_file, merges_file = Path(out_dir), Path(vocab_file), Path(merges_file)
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    merges = [tuple(line.split(" ")) for line in merges_file.read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#version")]
    hf = transformers.GPT2Tokenizer(vocab=vocab, merges=merges, unk_token=END_OF_TEXT, bos_token=END_OF_TEXT,
                                    eos_token=END_OF_TEXT, add_prefix_space=False, model_max_length=model_max_length)
    expected = load_gpt2_bpe(vocab_file, merges_file).encode(PROBE_BPE).ids
    got = hf.backend_tokenizer.encode(PROBE_BPE).ids
    if got != expected:
        raise InteropError(f"transformers' GPT2Tokenizer built from {vocab_file} and {merges_file} tokenises "
                           f"differently from ours ({got[:12]} vs {expected[:12]}); not exporting it")
    hf.save_pretrained(str(out_dir))
    shutil.copyfile(vocab_file, out_dir / "vocab.json")
    shutil.copyfile(merges_file, out_dir / "merges.txt")
    _write_json(out_dir / "special_tokens_map.json", {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT,
                                                      "unk_token": END_OF_TEXT})
    return ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
