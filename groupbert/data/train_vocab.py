"""Train a WordPiece vocabulary (BERT/GroupBERT) or a byte-level BPE (GPT-2) on your own corpus (any
source ``data.corpus`` accepts).

    python -m groupbert.data.train_vocab --corpus my_corpus.jsonl --vocab-size 30522 --output vocab.txt
    python -m groupbert.data.train_vocab --bpe --corpus wikipedia --vocab-size 4096 --output bpe4k/

Then pretrain with ``--set data.vocab_file=vocab.txt --set model.vocab_size=<printed size>`` (for a BPE,
``data.vocab_file=bpe4k/encoder.json``; ``vocab.bpe`` beside it is found).
"""
from __future__ import annotations

import argparse
import logging
import sys

from groupbert.data.causal_lm import load_gpt2_bpe, train_bpe
from groupbert.data.corpus import document_sentences, document_text, iter_documents
from groupbert.data.errors import DataError
from groupbert.data.tokenizer import load_wordpiece, train_wordpiece, vocab_size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--corpus", required=True, help="anything data.corpus takes: 'wikipedia', a file, directory or "
                   "glob (.txt, .jsonl, .gz, .bz2, a Wikipedia dump), hf:NAME")
    p.add_argument("--text-field", default="text")
    p.add_argument("--vocab-size", type=int, default=30522)
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--cased", action="store_true", help="keep case (default: lower-case, as uncased BERT)")
    p.add_argument("--bpe", action="store_true", help="byte-level BPE for GPT-2 (--output is a directory)")
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        documents = iter_documents(args.corpus, text_field=args.text_field)   # streamed: any corpus size
        if args.bpe:
            encoder, _ = train_bpe((document_text(d) for d in documents), args.vocab_size, args.output,
                                   min_frequency=args.min_frequency)
            n = load_gpt2_bpe(encoder).get_vocab_size()
            print(f"wrote {encoder} and vocab.bpe with {n} tokens; use --set data.vocab_file={encoder} "
                  f"--set model.vocab_size={n}")
            return 0
        sentences = (s for d in documents for s in document_sentences(d))
        out = train_wordpiece(sentences, args.vocab_size, args.output, lowercase=not args.cased,
                              min_frequency=args.min_frequency)
        n = vocab_size(load_wordpiece(out, lowercase=not args.cased))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} with {n} tokens; use --set data.vocab_file={out} --set model.vocab_size={n}"
          + (" --set data.lowercase=false" if args.cased else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
