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

Prints the table and writes JSON to ``benchmarks/results/packing_speed.json``. ``--smoke``: the ``tiny``
and ``squad-base`` cases (the two data paths) with one-layer H64 models, 2 rows per micro-batch, the first 4
documents of the sample (prepared into a temporary cache) and the first 8 SQuAD examples, one round, no
warm-up.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import RESULTS, load_average, median, parse_args, time_rounds, write_results  # noqa: E402

from groupbert.config import load_config  # noqa: E402

BASE = dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)
TINY = dict(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128)  # --smoke


def pretraining_batches(size: str, rows: int, n: int, cache_dir: Path, max_documents: int | None, seed: int = 0):
    """(model config, unpacked batches, packed batches): ``n`` micro-batches of ``rows`` rows each."""
    from groupbert.tasks.pretraining import prepare_data
    sets = {}
    for packing in (False, True):
        cfg = load_config(ROOT / "configs/groupbert/tiny_phase1.yaml",
                          [f"data.cache_dir={cache_dir}", f"data.packing={packing}"]
                          + ([f"data.max_documents={max_documents}"] if max_documents else []))
        train, _, _, _ = prepare_data(cfg, show_progress=False)
        sets[packing] = train
    model_cfg = cfg.model if size == "tiny" else dataclasses.replace(cfg.model, **BASE)
    return model_cfg, *[_take(sets[p], rows, n, seed) for p in (False, True)]


def squad_batches(rows: int, n: int, max_examples: int | None, seed: int = 0):
    from groupbert.data import load_wordpiece, special_ids
    from groupbert.squad.dataset import load_squad
    from groupbert.squad.features import build_features, pack_features
    cfg = load_config(ROOT / "configs/squad/groupbert_base.yaml", ["train.init_checkpoint=null"])
    tok = load_wordpiece()
    examples, _ = load_squad(None, "train", max_examples)
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
        self.sequences, self.i = [], 0  # per step, warm-up included

    def step(self):
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        self.opt.zero_grad(set_to_none=True)
        self.model(**batch).loss.backward()
        self.opt.step()
        self.sequences.append(sequences_in(batch))


def run_case(name: str, rows: int, repeats: int, warmup: int, args):
    from groupbert.models import build_model
    from groupbert.models.qa import BertForQuestionAnswering
    n = repeats + warmup
    if name == "squad-base":
        model_cfg, unpacked, packed = squad_batches(rows, n, args.max_examples)
    else:
        model_cfg, unpacked, packed = pretraining_batches(name, rows, n, args.cache, args.max_documents)
    if args.tiny_models:
        model_cfg = dataclasses.replace(model_cfg, **TINY)
    if name == "squad-base":
        make = lambda: BertForQuestionAnswering(dataclasses.replace(model_cfg, hidden_dropout=0.0,  # noqa: E731
                                                                    attention_dropout=0.0))
    else:
        make = lambda: build_model(model_cfg)  # noqa: E731
    torch.manual_seed(0)
    steppers = {"unpacked": Stepper(make(), unpacked), "packed": Stepper(make(), packed)}
    # interleaved: both see the same machine load
    times = time_rounds({k: s.step for k, s in steppers.items()}, repeats, warmup)
    out = {"case": name, "rows_per_micro_batch": rows, "seq_len": int(unpacked[0]["input_ids"].shape[1])}
    for k, s in steppers.items():
        sequences = s.sequences[warmup:]
        out[k] = {"median_step_s": median(times[k]), "mean_sequences_per_step": statistics.mean(sequences),
                  "sequences_per_s": sum(sequences) / sum(times[k])}
    out["step_time_ratio"] = out["packed"]["median_step_s"] / out["unpacked"]["median_step_s"]
    out["speedup_sequences_per_s"] = out["packed"]["sequences_per_s"] / out["unpacked"]["sequences_per_s"]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--cases", default="tiny,base,squad-base")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rows", type=int, default=None, help="rows per micro-batch (default: tiny 32, the others 8)")
    p.add_argument("--tiny-models", action="store_true", help="one-layer H64 models instead of each case's")
    p.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "datasets",
                   help="prepared-data cache (--smoke: a temporary one)")
    p.add_argument("--max-documents", type=int, default=None, help="first N documents of the sample (default: all)")
    p.add_argument("--max-examples", type=int, default=None, help="first N SQuAD examples (default: all)")
    args = parse_args(p, default_output=RESULTS / "packing_speed.json",
                      smoke=dict(cases="tiny,squad-base", repeats=1, warmup=0, rows=2, tiny_models=True,
                                 cache_dir=None, max_documents=4, max_examples=8))
    if args.threads:
        torch.set_num_threads(args.threads)
    rows_for = {"tiny": 32, "base": 8, "squad-base": 8}
    args.cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="bench-packing-speed-"))
    load = [load_average()[0]]
    try:
        results = [run_case(c, args.rows or rows_for[c], args.repeats, args.warmup, args)
                   for c in args.cases.split(",")]
    finally:
        if args.cache_dir is None:
            shutil.rmtree(args.cache, ignore_errors=True)
    load.append(load_average()[0])
    print(f"{'case':<12} {'seq':>4} {'rows':>4} {'seqs/row':>8} {'step x':>7} {'unpacked seq/s':>15} "
          f"{'packed seq/s':>13} {'speed-up':>8}")
    for r in results:
        print(f"{r['case']:<12} {r['seq_len']:>4} {r['rows_per_micro_batch']:>4} "
              f"{r['packed']['mean_sequences_per_step'] / r['rows_per_micro_batch']:>8.2f} {r['step_time_ratio']:>7.2f} "
              f"{r['unpacked']['sequences_per_s']:>15.2f} {r['packed']['sequences_per_s']:>13.2f} "
              f"{r['speedup_sequences_per_s']:>8.2f}")
    write_results({"benchmark": "packing_speed", "threads": torch.get_num_threads(),
                   "load_average_1min_before_after": load, "repeats": args.repeats, "warmup": args.warmup,
                   "tiny_models": args.tiny_models, "results": results}, args.output, smoke=args.smoke)


if __name__ == "__main__":
    main()
