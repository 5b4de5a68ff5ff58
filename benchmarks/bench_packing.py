"""Packing efficiency of SPFHP (``groupbert/data/packing.py``) on this project's own data.

Real tokens / row tokens, padded (one sequence per row) vs packed, for the MLM+NSP sequences of the bundled
Wikipedia sample as ``configs/groupbert/tiny_phase1.yaml`` and ``tiny_phase2.yaml`` build them (seq 128
and 384) and for the SQuAD features of the shipped SQuAD-format training set at seq 384
(``configs/squad/groupbert_base.yaml``'s length). The training throughput that packing buys is
``benchmarks/bench_packing_speed.py``'s.

    .venv/bin/python benchmarks/bench_packing.py

Prints the table and writes JSON to ``benchmarks/results/packing.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from groupbert.config import load_config  # noqa: E402
from groupbert.data.packing import padded_efficiency, spfhp  # noqa: E402


def pretraining_lengths(config: str) -> list[int]:
    from groupbert.training.pretrain import prepare_data
    cfg = load_config(ROOT / config, [f"data.cache_dir={ROOT / '.cache' / 'datasets'}", "data.packing=false"])
    train, _, _, _ = prepare_data(cfg, show_progress=False)
    return train.sequences(np.arange(len(train)), epoch=0)["attention_mask"].sum(1).tolist()


def squad_lengths(seq_len: int) -> list[int]:
    from groupbert.data import bundled_vocab_file, load_wordpiece
    from groupbert.squad.dataset import load_squad
    from groupbert.squad.features import build_features
    tokenizer = load_wordpiece(bundled_vocab_file(), lowercase=True)
    examples, _ = load_squad(None, "train", None)
    features = build_features(examples, tokenizer, training=True, seq_len=seq_len, doc_stride=128,
                              max_query_length=64)
    return [int(m.sum()) for m in features.model_inputs(True)["attention_mask"]]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-per-pack", type=int, default=3)
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "packing.json"))
    args = p.parse_args()
    rows = []
    for name, seq_len, lengths in (
            ("wikipedia MLM+NSP (tiny_phase1.yaml)", 128, pretraining_lengths("configs/groupbert/tiny_phase1.yaml")),
            ("wikipedia MLM+NSP (tiny_phase2.yaml)", 384, pretraining_lengths("configs/groupbert/tiny_phase2.yaml")),
            ("SQuAD features (shipped train set)", 384, squad_lengths(384))):
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
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    Path(args.output).write_text(json.dumps({"benchmark": "packing", "algorithm": "SPFHP",
                                             "max_per_pack": args.max_per_pack, "git_commit": commit,
                                             "results": rows}, indent=1) + "\n")
    print(f"wrote {os.path.relpath(args.output, ROOT)}")


if __name__ == "__main__":
    main()
