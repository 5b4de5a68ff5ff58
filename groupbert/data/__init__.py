"""Data pipeline: corpora -> WordPiece tokens -> BERT MLM/NSP pretraining instances (cached Arrow).

Typical use::

    docs = load_corpus("wikipedia")                       # or a path, or "hf:NAME[:CONFIG[:SPLIT]]"
    train_docs, val_docs = split_documents(docs, 0.05, seed=0)
    tok = load_wordpiece()                                # bert-base-uncased vocab.txt
    ds = build_pretraining_dataset(train_docs, tok, seq_len=128, max_predictions=20,
                                   cache_dir=".cache/data")
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
from groupbert.data.pretraining import (
    COLUMNS,
    FORMAT_VERSION,
    IGNORE_INDEX,
    build_pretraining_dataset,
    pretraining_cache_key,
)
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
    "FORMAT_VERSION",
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
    "pretraining_cache_key",
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
