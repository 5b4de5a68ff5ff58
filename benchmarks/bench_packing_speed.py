"""Training throughput with and without sequence packing, on this project's own data.

One training step (forward, backward, AdamW) on micro-batches of the same number of rows, one sequence per
row against packed rows (SPFHP, up to 3 sequences per row, ``data.packing``), interleaved in one process.
Throughput is sequences per second: a packed row carries ``packing_factor`` sequences but costs a little
more (block-diagonal attention mask, GroupBERT's conv cut at sequence edges). Cases:

- ``tiny``: tiny GroupBERT (configs/groupbert/tiny_phase1.yaml) on the bundled Wikipedia sample, seq 128,
  32 rows per micro-batch;
- ``base``: GroupBERT Base sizes on the same data, seq 128, 8 rows per micro-batch;
- ``squad-base``: GroupBERT Base span model on the shipped SQuAD-format training features at seq 384
  (configs/squad/groupbert_base.yaml's length), 8 rows per micro-batch.

    .venv/bin/python benchmarks/bench_packing_speed.py --cases tiny,base,squad-base --repeats 3

Prints the table and writes JSON to ``benchmarks/results/packing_speed.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from groupbert.config import load_config  # noqa: E402

BASE = dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)


def pretraining_batches(size: str, rows: int, n: int, seed: int = 0):
    """(model config, unpacked batches, packed batches): ``n`` micro-batches of ``rows`` rows each."""
    from groupbert.training.pretrain import prepare_data
    sets = {}
    for packing in (False, True):
        cfg = load_config(ROOT / "configs/groupbert/tiny_phase1.yaml",
                          [f"data.cache_dir={ROOT / '.cache' / 'datasets'}", f"data.packing={packing}"])
        train, _, _, _ = prepare_data(cfg, show_progress=False)
        sets[packing] = train
    model_cfg = cfg.model if size == "tiny" else dataclasses.replace(cfg.model, **BASE)
    return model_cfg, *[_take(sets[p], rows, n, seed) for p in (False, True)]


def squad_batches(rows: int, n: int, seed: int = 0):
    from groupbert.data import load_wordpiece, special_ids
    from groupbert.squad.dataset import load_squad
    from groupbert.squad.features import build_features, pack_features
    cfg = load_config(ROOT / "configs/squad/groupbert_base.yaml", ["model.init_checkpoint=null"])
    tok = load_wordpiece()
    examples, _ = load_squad(None, "train", None)
    f = build_features(examples, tok, training=True, seq_len=cfg.data.seq_len, doc_stride=cfg.squad.doc_stride,
                       max_query_length=cfg.squad.max_query_length)
    packed, _, _ = pack_features(f, special_ids(tok).pad, 3, seed=seed)
    unpacked = f.model_inputs(True)
    return cfg.model, *[_take_arrays(c, rows, n, seed) for c in (unpacked, packed)]


def _take(dataset, rows, n, seed):
    return _take_arrays(dataset.gather(np.arange(len(dataset)), epoch=0), rows, n, seed)


def _take_arrays(cols, rows, n, seed):
    order = np.random.default_rng(seed).permutation(len(next(iter(cols.values()))))
    return [{k: torch.as_tensor(np.ascontiguousarray(v[order[i * rows:(i + 1) * rows]])).long() for k, v in cols.items()}
            for i in range(n)]


def sequences_in(batch) -> int:
    for key in ("next_sentence_label", "start_positions"):
        if key in batch:
            return int((batch[key] >= 0).sum())
    raise KeyError("no per-sequence label column")


class Stepper:
    def __init__(self, model, batches):
        from optimizers import AdamW
        self.model, self.batches = model.train(), batches
        self.opt = AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
        self.times, self.sequences, self.i = [], [], 0

    def step(self, record=True):
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        self.model(**batch).loss.backward()
        self.opt.step()
        if record:
            self.times.append(time.perf_counter() - t0)
            self.sequences.append(sequences_in(batch))


def run_case(name: str, rows: int, repeats: int, warmup: int):
    from groupbert.models import build_model
    from groupbert.models.qa import BertForQuestionAnswering
    n = repeats + warmup
    if name == "squad-base":
        model_cfg, unpacked, packed = squad_batches(rows, n)
        make = lambda: BertForQuestionAnswering(dataclasses.replace(model_cfg, hidden_dropout=0.0,  # noqa: E731
                                                                    attention_dropout=0.0))
    else:
        model_cfg, unpacked, packed = pretraining_batches(name, rows, n)
        make = lambda: build_model(model_cfg)  # noqa: E731
    torch.manual_seed(0)
    steppers = {"unpacked": Stepper(make(), unpacked), "packed": Stepper(make(), packed)}
    for _ in range(warmup):
        for s in steppers.values():
            s.step(record=False)
    for _ in range(repeats):  # interleaved: both see the same machine load
        for s in steppers.values():
            s.step()
    out = {"case": name, "rows_per_micro_batch": rows, "seq_len": int(unpacked[0]["input_ids"].shape[1])}
    for k, s in steppers.items():
        out[k] = {"median_step_s": statistics.median(s.times), "mean_sequences_per_step": statistics.mean(s.sequences),
                  "sequences_per_s": sum(s.sequences) / sum(s.times)}
    out["step_time_ratio"] = out["packed"]["median_step_s"] / out["unpacked"]["median_step_s"]
    out["speedup_sequences_per_s"] = out["packed"]["sequences_per_s"] / out["unpacked"]["sequences_per_s"]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="tiny,base,squad-base")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "packing_speed.json"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows_for = {"tiny": 32, "base": 8, "squad-base": 8}
    load = [os.getloadavg()[0]]
    results = [run_case(c, rows_for[c], args.repeats, args.warmup) for c in args.cases.split(",")]
    load.append(os.getloadavg()[0])
    print(f"{'case':<12} {'seq':>4} {'rows':>4} {'seqs/row':>8} {'step x':>7} {'unpacked seq/s':>15} "
          f"{'packed seq/s':>13} {'speed-up':>8}")
    for r in results:
        print(f"{r['case']:<12} {r['seq_len']:>4} {r['rows_per_micro_batch']:>4} "
              f"{r['packed']['mean_sequences_per_step'] / r['rows_per_micro_batch']:>8.2f} {r['step_time_ratio']:>7.2f} "
              f"{r['unpacked']['sequences_per_s']:>15.2f} {r['packed']['sequences_per_s']:>13.2f} "
              f"{r['speedup_sequences_per_s']:>8.2f}")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    Path(args.output).write_text(json.dumps({
        "benchmark": "packing_speed", "git_commit": commit, "threads": torch.get_num_threads(),
        "load_average_1min_before_after": load, "repeats": args.repeats, "results": results}, indent=1) + "\n")
    print(f"wrote {os.path.relpath(args.output, ROOT)}")


if __name__ == "__main__":
    main()
