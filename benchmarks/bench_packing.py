"""Packing efficiency of SPFHP (``groupbert/data/packing.py``) on this project's own data.

Real tokens / row tokens, padded (one sequence per row) vs packed, for the MLM+NSP sequences of the bundled
Wikipedia sample as ``configs/groupbert/tiny_phase1.yaml`` and ``tiny_phase2.yaml`` build them (seq 128
and 384) and for the SQuAD features of the shipped SQuAD-format training set at seq 384
(``configs/squad/groupbert_base.yaml``'s length). The training throughput that packing buys is
``benchmarks/bench_packing_speed.py``'s.

    .venv/bin/python benchmarks/bench_packing.py

Prints the table and writes JSON to ``benchmarks/results/packing.json``. ``--smoke``: the first 4 documents
of the sample (prepared into a temporary cache) and SQuAD features of the first 8 training examples.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import RESULTS, parse_args, write_results  # noqa: E402

import numpy as np  # noqa: E402

from groupbert.config import load_config  # noqa: E402
from groupbert.data.packing import padded_efficiency, spfhp  # noqa: E402


def pretraining_lengths(config: str, cache_dir: Path, max_documents: int | None) -> list[int]:
    from groupbert.tasks.pretraining import prepare_data
    cfg = load_config(ROOT / config, [f"data.cache_dir={cache_dir}", "data.packing=false"]
                      + ([f"data.max_documents={max_documents}"] if max_documents else []))
    train, _, _, _ = prepare_data(cfg, show_progress=False)
    return train.sequences(np.arange(len(train)), epoch=0)["attention_mask"].sum(1).tolist()


def squad_lengths(seq_len: int, max_examples: int | None) -> list[int]:
    from groupbert.data import bundled_vocab_file, load_wordpiece
    from groupbert.squad.dataset import load_squad
    from groupbert.squad.features import build_features
    tokenizer = load_wordpiece(bundled_vocab_file(), lowercase=True)
    examples, _ = load_squad(None, "train", max_examples)
    features = build_features(examples, tokenizer, training=True, seq_len=seq_len, doc_stride=128,
                              max_query_length=64)
    return [int(m.sum()) for m in features.model_inputs(True)["attention_mask"]]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--max-per-pack", type=int, default=3)
    p.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "datasets",
                   help="prepared-data cache (--smoke: a temporary one)")
    p.add_argument("--max-documents", type=int, default=None, help="first N documents of the sample (default: all)")
    p.add_argument("--max-examples", type=int, default=None, help="first N SQuAD examples (default: all)")
    args = parse_args(p, default_output=RESULTS / "packing.json",
                      smoke=dict(cache_dir=None, max_documents=4, max_examples=8))
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="bench-packing-"))
    try:
        cases = [("wikipedia MLM+NSP (tiny_phase1.yaml)", 128,
                  pretraining_lengths("configs/groupbert/tiny_phase1.yaml", cache, args.max_documents)),
                 ("wikipedia MLM+NSP (tiny_phase2.yaml)", 384,
                  pretraining_lengths("configs/groupbert/tiny_phase2.yaml", cache, args.max_documents)),
                 ("SQuAD features (shipped train set)", 384, squad_lengths(384, args.max_examples))]
    finally:
        if args.cache_dir is None:
            shutil.rmtree(cache, ignore_errors=True)
    rows = []
    for name, seq_len, lengths in cases:
        t = time.perf_counter()
        plan = spfhp(lengths, seq_len, args.max_per_pack)
        rows.append({"data": name, "seq_len": seq_len, "sequences": len(lengths),
                     "mean_length": sum(lengths) / len(lengths), "padded_efficiency": padded_efficiency(lengths, seq_len),
                     "packed_efficiency": plan.efficiency, "rows": plan.num_rows,
                     "packing_factor": plan.packing_factor, "pack_seconds": time.perf_counter() - t})
    print(f"{'data':<40} {'seq':>4} {'seqs':>6} {'mean len':>8} {'padded':>7} {'packed':>7} {'seq/row':>7}")
    for r in rows:
        print(f"{r['data']:<40} {r['seq_len']:>4} {r['sequences']:>6} {r['mean_length']:>8.1f} "
              f"{r['padded_efficiency']:>7.3f} {r['packed_efficiency']:>7.3f} {r['packing_factor']:>7.2f}")
    write_results({"benchmark": "packing", "algorithm": "SPFHP", "max_per_pack": args.max_per_pack,
                   "max_documents": args.max_documents, "max_examples": args.max_examples, "results": rows},
                  args.output, smoke=args.smoke)


if __name__ == "__main__":
    main()
