"""Data pipeline: streamed corpora -> prepared shards (MLM + NSP instances, GPT-2 token streams) -> batches.

- ``sources``: inputs (files, globs, dumps, datasets) cut into pieces, read as a stream of documents;
- ``corpus``: wiki markup, sentences, and small in-memory corpora (``load_corpus``);
- ``masked_lm`` / ``masking``: BERT's instances and masks, vectorised; ``causal_lm``: GPT-2's BPE;
- ``prepare``: the parallel, restartable preparation (``python -m groupbert.data.prepare``) into ``shards``;
- ``cache``: what a run derives for itself under ``data.cache_dir``, keyed by content;
- ``prepared`` / ``packing`` / ``loader``: training reads the shards, packs rows, shuffles and deals batches;
- ``columns``: the batch layouts every task and model agree on.

In memory, for tests and notebooks::

    docs = load_corpus("wikipedia")                       # or a path, or "hf:NAME[:CONFIG[:SPLIT]]"
    ds = build_pretraining_dataset(docs, load_wordpiece(), seq_len=128, max_predictions=20)
"""
from groupbert.data.corpus import (
    Document,
    load_corpus,
    load_hf_dataset,
    load_text_files,
    load_wikipedia_sample,
    split_documents,
    split_sentences,
    strip_wiki_markup,
    text_to_sentences,
    wikipedia_sample_path,
)
from groupbert.data.errors import DataError
from groupbert.data.masked_lm import COLUMNS, IGNORE_INDEX, build_pretraining_dataset
from groupbert.data.tokenizer import (
    SPECIAL_TOKENS,
    SpecialIds,
    bundled_vocab_file,
    load_wordpiece,
    special_ids,
    tokenizer_fingerprint,
    train_wordpiece,
    vocab_fingerprint,
    vocab_size,
)

__all__ = [
    "COLUMNS",
    "DataError",
    "Document",
    "IGNORE_INDEX",
    "SPECIAL_TOKENS",
    "SpecialIds",
    "build_pretraining_dataset",
    "bundled_vocab_file",
    "load_corpus",
    "load_hf_dataset",
    "load_text_files",
    "load_wikipedia_sample",
    "load_wordpiece",
    "special_ids",
    "split_documents",
    "split_sentences",
    "strip_wiki_markup",
    "text_to_sentences",
    "tokenizer_fingerprint",
    "train_wordpiece",
    "vocab_fingerprint",
    "vocab_size",
    "wikipedia_sample_path",
]
