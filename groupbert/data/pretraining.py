"""BERT pretraining instances: next-sentence pairs with masked-LM targets, cached as Arrow.

The algorithm follows BERT (Devlin et al., 2018, https://arxiv.org/abs/1810.04805, section 3.1 and
appendix A.1) as implemented in google-research/bert ``create_pretraining_data.py``
(``create_instances_from_document``, ``truncate_seq_pair``, ``create_masked_lm_predictions``):

1. Every sentence is tokenised once (WordPiece, no special tokens).
2. For each document, sentences are accumulated into a chunk until it reaches the target length
   ``seq_len - 3`` (with probability ``short_seq_prob`` a shorter target drawn from
   ``[2, seq_len - 3]``, so the model also sees short sequences). The chunk is cut at a random
   sentence boundary into segment A and segment B.
3. With probability 0.5 (always when the chunk holds one sentence) B is replaced by text from a
   random *other* document, and the unused sentences go back to the queue: ``next_sentence_label``
   1 = "B is random", 0 = "B is the actual continuation" (Hugging Face's convention).
4. The pair is truncated to ``seq_len - 3`` tokens by removing, one token at a time, from the longer
   side, at its front or back with equal probability.
5. ``[CLS] A [SEP] B [SEP]``; token types 0 for ``[CLS] A [SEP]`` and 1 for ``B [SEP]``.
6. Masked LM: ``round(mask_prob * n)`` of the n non-special tokens (at least 1, at most
   ``max_predictions``) are chosen at random; each is replaced by ``[MASK]`` 80% of the time, by a
   random token 10% and kept 10%. ``dupe_factor`` repeats the whole pass with different masks.

Deviations from create_pretraining_data.py (none changes the distribution's intent):

- The shorter target length is drawn per instance; Google draws it once per document, so a 10%
  probability there makes whole documents short rather than 10% of the instances.
- The masking budget counts the non-special tokens (Google counts ``[CLS]``/``[SEP]`` too).
- Random replacement tokens are drawn from the vocabulary without its five special tokens.
- The random document is drawn among the *other* documents directly (Google retries 10 times and
  may fall back to the same document). With a single document there is no random next: chunks of
  one sentence are skipped and all labels are 0 (a warning is logged).
- Each (dupe, document) pair has its own ``random.Random`` seeded from ``seed``, so the output does
  not depend on ``num_proc``; the final instance order is a seeded shuffle, as in Google's script.

The result is a ``datasets.Dataset`` with fixed-length int32 columns (see :data:`COLUMNS`),
returned with ``with_format("torch")``: indexing gives int64 tensors, and the default
``DataLoader`` collate stacks them. ``ds.with_format("numpy")`` gives numpy arrays instead.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from groupbert.data.corpus import Document
from groupbert.data.errors import DataError
from groupbert.data.tokenizer import SpecialIds, _as_tokenizer, special_ids, tokenizer_fingerprint

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "COLUMNS",
    "IGNORE_INDEX",
    "build_pretraining_dataset",
    "pretraining_cache_key",
]

# Bump when the instance algorithm or the on-disk columns change: it invalidates every cache entry.
FORMAT_VERSION = 1
IGNORE_INDEX = -100   # masked_lm_labels padding; torch.nn.CrossEntropyLoss's default ignore_index
# Column -> shape per instance (seq = seq_len, P = max_predictions); all int32 on disk.
COLUMNS = {
    "input_ids": "[seq] token ids, [PAD]-padded",
    "token_type_ids": "[seq] 0 for [CLS] A [SEP], 1 for B [SEP], 0 for padding",
    "attention_mask": "[seq] 1 for real tokens, 0 for padding",
    "masked_lm_positions": "[P] positions of the masked tokens, ascending, padded with 0",
    "masked_lm_labels": f"[P] original token ids at those positions, padded with {IGNORE_INDEX}",
    "next_sentence_label": "scalar: 0 = B continues A, 1 = B is from a random document",
}
_CACHE_META = "groupbert_pretraining.json"
_TOKENIZE_BATCH = 20_000   # sentences per encode_batch call (bounds the Encoding objects alive)


class _Context:
    """Everything instance creation needs; shared with forked worker processes."""

    def __init__(
        self,
        documents: list[list[list[int]]],
        special: SpecialIds,
        vocab_size: int,
        continuation: Optional[np.ndarray],
        seq_len: int,
        max_predictions: int,
        mask_prob: float,
        short_seq_prob: float,
        seed: int,
    ) -> None:
        self.documents = documents
        self.special = special
        self.special_set = special.as_set()
        self.vocab_size = vocab_size
        self.continuation = continuation   # bool per id: "##" piece (whole-word masking), or None
        self.seq_len = seq_len
        self.max_predictions = max_predictions
        self.mask_prob = mask_prob
        self.short_seq_prob = short_seq_prob
        self.seed = seed


_WORKER_CONTEXT: Optional[_Context] = None   # set in the parent just before forking workers


# --------------------------------------------------------------------------------------------------
# The algorithm
# --------------------------------------------------------------------------------------------------

def _truncate_seq_pair(a: list[int], b: list[int], max_num_tokens: int, rng: random.Random):
    """Google's truncate_seq_pair: drop tokens one at a time from the longer side, front or back.

    Same random draws and result as the reference loop, computed with counters and one slice per
    side so that a pathological 100k-token "sentence" costs O(n), not O(n^2).
    """
    a_front = a_back = b_front = b_back = 0
    len_a, len_b = len(a), len(b)
    while len_a + len_b > max_num_tokens:
        if len_a > len_b:
            if rng.random() < 0.5:
                a_front += 1
            else:
                a_back += 1
            len_a -= 1
        else:
            if rng.random() < 0.5:
                b_front += 1
            else:
                b_back += 1
            len_b -= 1
    return a[a_front:len(a) - a_back], b[b_front:len(b) - b_back]


def _instances_from_document(
    ctx: _Context, doc_index: int, rng: random.Random
) -> list[tuple[list[int], list[int], bool]]:
    """(tokens_a, tokens_b, is_random_next) pairs from one document (create_instances_from_document)."""
    documents = ctx.documents
    document = documents[doc_index]
    max_num_tokens = ctx.seq_len - 3   # [CLS], [SEP], [SEP]

    def draw_target() -> int:
        if rng.random() < ctx.short_seq_prob:
            return rng.randint(2, max_num_tokens)
        return max_num_tokens

    pairs = []
    target = draw_target()
    chunk: list[list[int]] = []
    chunk_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        chunk.append(segment)
        chunk_length += len(segment)
        if i == len(document) - 1 or chunk_length >= target:
            # A gets the first a_end sentences of the chunk.
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            tokens_a = [t for s in chunk[:a_end] for t in s]
            tokens_b: list[int] = []
            if len(documents) > 1 and (len(chunk) == 1 or rng.random() < 0.5):
                is_random_next = True
                target_b_length = target - len(tokens_a)
                other = rng.randint(0, len(documents) - 2)
                other += other >= doc_index              # any document but this one
                random_document = documents[other]
                start = rng.randint(0, len(random_document) - 1)
                for j in range(start, len(random_document)):
                    tokens_b.extend(random_document[j])
                    if len(tokens_b) >= target_b_length:
                        break
                # The sentences of the chunk after A were not used: put them back.
                i -= len(chunk) - a_end
            else:
                is_random_next = False
                tokens_b = [t for s in chunk[a_end:] for t in s]
            if tokens_b:   # empty only for a one-sentence chunk of a single-document corpus
                tokens_a, tokens_b = _truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
                pairs.append((tokens_a, tokens_b, is_random_next))
            chunk, chunk_length = [], 0
            target = draw_target()
        i += 1
    return pairs


def _mask_tokens(ctx: _Context, tokens: list[int], rng: random.Random) -> tuple[list[int], list[int]]:
    """Google's create_masked_lm_predictions, in place on ``tokens``; returns (positions, labels)."""
    special = ctx.special
    candidates = [i for i, t in enumerate(tokens) if t != special.cls and t != special.sep]
    if ctx.continuation is not None:
        # Whole-word masking: a "##" piece joins the word of the token just before it.
        groups: list[list[int]] = []
        for i in candidates:
            if groups and groups[-1][-1] == i - 1 and ctx.continuation[tokens[i]]:
                groups[-1].append(i)
            else:
                groups.append([i])
    else:
        groups = [[i] for i in candidates]
    num_to_predict = min(ctx.max_predictions, max(1, int(round(len(candidates) * ctx.mask_prob))))
    rng.shuffle(groups)
    chosen: list[int] = []
    for group in groups:
        if len(chosen) >= num_to_predict:
            break
        if len(chosen) + len(group) > num_to_predict:
            continue   # a whole word that would overshoot the budget is skipped (as Google)
        chosen.extend(group)
    chosen.sort()
    labels = []
    for position in chosen:
        original = tokens[position]
        labels.append(original)
        if rng.random() < 0.8:
            tokens[position] = special.mask
        elif rng.random() < 0.5:
            pass   # 10%: keep the original token
        else:
            replacement = rng.randrange(ctx.vocab_size)
            while replacement in ctx.special_set:
                replacement = rng.randrange(ctx.vocab_size)
            tokens[position] = replacement
    return chosen, labels


def _build_rows(work: Sequence[tuple[int, int]], ctx: Optional[_Context] = None) -> dict[str, np.ndarray]:
    """Instances for a list of (dupe, document index) as int32 column arrays."""
    ctx = ctx if ctx is not None else _WORKER_CONTEXT
    assert ctx is not None
    rows = []
    for dupe, doc_index in work:
        rng = random.Random(f"{ctx.seed}:{dupe}:{doc_index}")
        for tokens_a, tokens_b, is_random_next in _instances_from_document(ctx, doc_index, rng):
            tokens = [ctx.special.cls, *tokens_a, ctx.special.sep, *tokens_b, ctx.special.sep]
            positions, labels = _mask_tokens(ctx, tokens, rng)
            rows.append((tokens, len(tokens_a) + 2, positions, labels, int(is_random_next)))
    n, seq_len, p = len(rows), ctx.seq_len, ctx.max_predictions
    out = {
        "input_ids": np.full((n, seq_len), ctx.special.pad, dtype=np.int32),
        "token_type_ids": np.zeros((n, seq_len), dtype=np.int32),
        "attention_mask": np.zeros((n, seq_len), dtype=np.int32),
        "masked_lm_positions": np.zeros((n, p), dtype=np.int32),
        "masked_lm_labels": np.full((n, p), IGNORE_INDEX, dtype=np.int32),
        "next_sentence_label": np.zeros((n,), dtype=np.int32),
    }
    for r, (tokens, b_start, positions, labels, nsp) in enumerate(rows):
        length = len(tokens)
        out["input_ids"][r, :length] = tokens
        out["token_type_ids"][r, b_start:length] = 1
        out["attention_mask"][r, :length] = 1
        out["masked_lm_positions"][r, : len(positions)] = positions
        out["masked_lm_labels"][r, : len(labels)] = labels
        out["next_sentence_label"][r] = nsp
    return out


# --------------------------------------------------------------------------------------------------
# Tokenisation, caching, the public entry point
# --------------------------------------------------------------------------------------------------

def _tokenize_documents(documents: Sequence[Document], tokenizer) -> list[list[list[int]]]:
    """Token ids per sentence per document, one batched encode; empty sentences/documents dropped."""
    tok = _as_tokenizer(tokenizer)
    if tok.truncation is not None or tok.padding is not None:
        # Padding or truncation would corrupt sentence lengths: work on a plain copy.
        tok = type(tok).from_str(tok.to_str())
        tok.no_truncation()
        tok.no_padding()
    sentences = [s for d in documents for s in d.sentences]
    ids: list[list[int]] = []
    for start in range(0, len(sentences), _TOKENIZE_BATCH):
        batch = tok.encode_batch(sentences[start:start + _TOKENIZE_BATCH], add_special_tokens=False)
        ids.extend(e.ids for e in batch)
    tokenized, k = [], 0
    for d in documents:
        doc = [s for s in ids[k:k + len(d.sentences)] if s]
        k += len(d.sentences)
        if doc:
            tokenized.append(doc)
    return tokenized


def _documents_hash(documents: Sequence[Document]) -> str:
    h = hashlib.sha256()
    for d in documents:
        h.update(b"\x1d")                       # document separator
        for s in d.sentences:
            h.update(s.encode("utf-8"))
            h.update(b"\x1e")                   # sentence separator
    return h.hexdigest()


def pretraining_cache_key(documents: Sequence[Document], tokenizer, **settings) -> str:
    """sha256 over the document texts, the tokenizer (vocabulary and normalisation), every setting
    that changes the output, and :data:`FORMAT_VERSION`."""
    payload = {
        "format_version": FORMAT_VERSION,
        "documents": _documents_hash(documents),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def _continuation_table(tokenizer) -> np.ndarray:
    tok = _as_tokenizer(tokenizer)
    table = np.zeros(tok.get_vocab_size(with_added_tokens=True), dtype=bool)
    for token, index in tok.get_vocab(with_added_tokens=True).items():
        if token.startswith("##") and index < len(table):
            table[index] = True
    return table


def _features(seq_len: int, max_predictions: int):
    import datasets

    def fixed(length: int):
        return datasets.List(datasets.Value("int32"), length=length)

    return datasets.Features({
        "input_ids": fixed(seq_len),
        "token_type_ids": fixed(seq_len),
        "attention_mask": fixed(seq_len),
        "masked_lm_positions": fixed(max_predictions),
        "masked_lm_labels": fixed(max_predictions),
        "next_sentence_label": datasets.Value("int32"),
    })


def _load_cached(path: Path, key: str):
    import datasets

    meta_file = path / _CACHE_META
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("key") != key:
            logger.warning("cache entry %s has a different key; rebuilding", path)
            return None
        return datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        logger.warning("cannot read cached dataset at %s (%s); rebuilding", path, exc)
        return None


def _validate(seq_len, max_predictions, mask_prob, short_seq_prob, dupe_factor, num_proc) -> None:
    if seq_len < 8:
        raise DataError(f"seq_len must be >= 8 for [CLS] A [SEP] B [SEP], got {seq_len}")
    if not 1 <= max_predictions <= seq_len:
        raise DataError(f"max_predictions must be in [1, seq_len={seq_len}], got {max_predictions}")
    if not 0.0 < mask_prob <= 1.0:
        raise DataError(f"mask_prob must be in (0, 1], got {mask_prob}")
    if not 0.0 <= short_seq_prob <= 1.0:
        raise DataError(f"short_seq_prob must be in [0, 1], got {short_seq_prob}")
    if dupe_factor < 1:
        raise DataError(f"dupe_factor must be >= 1, got {dupe_factor}")
    if num_proc < 1:
        raise DataError(f"num_proc must be >= 1, got {num_proc}")


def _run(ctx: _Context, work: list[tuple[int, int]], num_proc: int, show_progress: bool):
    from tqdm.auto import tqdm

    chunk_size = max(1, min(256, len(work) // (num_proc * 8) or 1))
    chunks = [work[i:i + chunk_size] for i in range(0, len(work), chunk_size)]
    parts = []
    with tqdm(total=len(work), desc="pretraining instances", unit="doc",
              disable=not show_progress) as bar:
        can_fork = "fork" in multiprocessing.get_all_start_methods()
        if num_proc > 1 and len(chunks) > 1 and can_fork:
            global _WORKER_CONTEXT
            _WORKER_CONTEXT = ctx   # inherited by the forked workers, never pickled
            try:
                with multiprocessing.get_context("fork").Pool(num_proc) as pool:
                    for chunk, part in zip(chunks, pool.imap(_build_rows, chunks)):
                        parts.append(part)
                        bar.update(len(chunk))
            finally:
                _WORKER_CONTEXT = None
        else:
            if num_proc > 1 and not can_fork:
                logger.warning("num_proc=%d needs the 'fork' start method; using 1 process", num_proc)
            for chunk in chunks:
                parts.append(_build_rows(chunk, ctx))
                bar.update(len(chunk))
    return {name: np.concatenate([p[name] for p in parts]) for name in COLUMNS}


def build_pretraining_dataset(
    documents: Sequence[Document],
    tokenizer,
    *,
    seq_len: int,
    max_predictions: int,
    mask_prob: float = 0.15,
    short_seq_prob: float = 0.1,
    dupe_factor: int = 1,
    seed: int = 0,
    whole_word_masking: bool = False,
    cache_dir: Optional[Union[str, Path]] = None,
    num_proc: int = 1,
    show_progress: bool = True,
):
    """BERT MLM + NSP instances from documents, as a ``datasets.Dataset`` in torch format.

    Args:
        documents: the corpus (:class:`~groupbert.data.corpus.Document` list); at least two
            documents for random-next pairs.
        tokenizer: a WordPiece ``tokenizers.Tokenizer`` (:func:`~groupbert.data.tokenizer.load_wordpiece`)
            or a transformers fast tokenizer wrapping one.
        seq_len: sequence length of every instance (``[CLS] A [SEP] B [SEP]`` plus padding).
        max_predictions: masked positions per instance, the size of the masked-LM columns.
        mask_prob: fraction of non-special tokens masked (BERT: 0.15).
        short_seq_prob: probability of a shorter target length (BERT: 0.1).
        dupe_factor: passes over the corpus, each with different masks (Google's default is 10).
        seed: seeds every random choice; the same inputs and seed give the same dataset.
        whole_word_masking: mask all pieces of a word together (Google's ``do_whole_word_mask``).
        cache_dir: if set, the dataset is saved there (Arrow, ``save_to_disk``) under a key of the
            texts, tokenizer and settings, and a later call with the same inputs loads it.
        num_proc: worker processes for instance creation (needs the ``fork`` start method);
            the output does not depend on it.
        show_progress: tqdm progress bar over documents.

    Returns:
        ``datasets.Dataset`` with the :data:`COLUMNS` (int32 on disk), ``with_format("torch")``.

    Raises:
        DataError: invalid settings, or a corpus that yields no instance.
    """
    import datasets

    _validate(seq_len, max_predictions, mask_prob, short_seq_prob, dupe_factor, num_proc)
    settings = dict(seq_len=seq_len, max_predictions=max_predictions, mask_prob=mask_prob,
                    short_seq_prob=short_seq_prob, dupe_factor=dupe_factor, seed=seed,
                    whole_word_masking=whole_word_masking)
    final_path = None
    if cache_dir is not None:
        key = pretraining_cache_key(documents, tokenizer, **settings)
        cache_root = Path(cache_dir)
        final_path = cache_root / f"pretraining-{key[:32]}"
        if final_path.is_dir():
            cached = _load_cached(final_path, key)
            if cached is not None:
                logger.info("reusing cached dataset at %s (%d instances)", final_path, len(cached))
                return cached.with_format("torch")

    start = time.perf_counter()
    tokenized = _tokenize_documents(documents, tokenizer)
    n_tokens = sum(len(s) for d in tokenized for s in d)
    logger.info("tokenised %d documents (%d tokens) in %.1fs",
                len(tokenized), n_tokens, time.perf_counter() - start)
    if not tokenized:
        raise DataError("the corpus has no text to make pretraining instances from")
    if len(tokenized) == 1:
        logger.warning("only one document: no random-next pairs, every next_sentence_label is 0")
    tok = _as_tokenizer(tokenizer)
    ctx = _Context(
        documents=tokenized,
        special=special_ids(tok),
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        continuation=_continuation_table(tok) if whole_word_masking else None,
        seq_len=seq_len,
        max_predictions=max_predictions,
        mask_prob=mask_prob,
        short_seq_prob=short_seq_prob,
        seed=seed,
    )
    work = [(dupe, d) for dupe in range(dupe_factor) for d in range(len(tokenized))]
    columns = _run(ctx, work, num_proc, show_progress)
    n = len(columns["next_sentence_label"])
    if n == 0:
        raise DataError(
            f"the corpus ({len(tokenized)} document(s), {n_tokens} tokens) yields no pretraining "
            "instance: it needs two documents, or one document with at least two sentences"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)   # as Google's script shuffles its instances
    columns = {name: array[order] for name, array in columns.items()}
    logger.info("built %d pretraining instances (seq_len %d, %.1f%% random next) in %.1fs",
                n, seq_len, 100.0 * columns["next_sentence_label"].mean(), time.perf_counter() - start)

    dataset = datasets.Dataset.from_dict(columns, features=_features(seq_len, max_predictions))
    if final_path is not None:
        dataset = _save_atomically(dataset, final_path, key, settings, show_progress)
    return dataset.with_format("torch")


def _save_atomically(dataset, final_path: Path, key: str, settings: dict, show_progress: bool):
    """save_to_disk into a temporary folder, then rename: a crash never leaves a half cache entry."""
    import datasets

    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = final_path.parent / f".tmp-{final_path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    # datasets' own "Saving the dataset" bar follows show_progress (its switch is global: restore it).
    bars_were_enabled = datasets.is_progress_bar_enabled()
    if not show_progress:
        datasets.disable_progress_bars()
    try:
        dataset.save_to_disk(str(tmp))
        meta = {"key": key, "format_version": FORMAT_VERSION, "settings": settings,
                "num_instances": len(dataset)}
        (tmp / _CACHE_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        try:
            os.rename(tmp, final_path)
        except OSError:
            if not final_path.is_dir():   # not a concurrent writer that won the race
                raise
            logger.info("another process cached %s first; using its copy", final_path)
    finally:
        if bars_were_enabled and not show_progress:
            datasets.enable_progress_bars()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("cached pretraining dataset at %s", final_path)
    return datasets.load_from_disk(str(final_path))
