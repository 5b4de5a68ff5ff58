"""Training step time in fp32, bf16 autocast and fp16 autocast with dynamic loss scaling (``runtime.precision``).

The application's own pieces (``groupbert.training.precision``: the autocast context and the loss scaler;
our AdamW with fp32 master weights and state), one GroupBERT pretraining step (forward, backward,
unscale + clip, update) per precision, interleaved in one process on the same batch. On CPU, bf16 runs
on AVX-512 BF16 where the processor has it (oneDNN); fp16 autocast on CPU is for checking the code path,
not for speed. On CUDA the same script times the GPU.

    .venv/bin/python benchmarks/bench_precision.py --size mini --repeats 5

Prints a table and writes JSON to ``benchmarks/results/precision.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from groupbert.config import ModelConfig  # noqa: E402
from groupbert.models import build_model  # noqa: E402
from groupbert.training.precision import LossScaler, autocast_context  # noqa: E402

SIZES = {"mini": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
         "base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)}


def batch(B, T, P, vocab, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    positions = torch.stack([torch.randperm(T - 1, generator=g)[:P] + 1 for _ in range(B)])
    b = dict(input_ids=torch.randint(5, vocab, (B, T), generator=g),
             token_type_ids=(torch.arange(T) >= T // 2).long().expand(B, T).contiguous(),
             attention_mask=torch.ones(B, T, dtype=torch.long), masked_lm_positions=positions,
             masked_lm_labels=torch.randint(5, vocab, (B, P), generator=g),
             next_sentence_label=torch.randint(0, 2, (B,), generator=g))
    return {k: v.to(device) for k, v in b.items()}


class Stepper:
    def __init__(self, precision, cfg, data, device):
        from optimizers import AdamW
        torch.manual_seed(0)
        self.precision, self.data = precision, data
        self.model = build_model(cfg).to(device).train()
        self.opt = AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
        self.autocast = autocast_context(precision, device)
        self.scaler = LossScaler(device, enabled=precision == "fp16")
        self.device, self.times, self.losses = device, [], []

    def step(self, record=True):
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.model(**self.data).loss
        self.scaler.backward(loss)
        self.scaler.step(self.opt, self.model.parameters(), 1.0)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        if record:
            self.times.append(time.perf_counter() - t0)
            self.losses.append(float(loss))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="mini")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--precisions", default="fp32,bf16,fp16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "precision.json"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = ModelConfig(type="groupbert", vocab_size=30522, max_positions=512, hidden_dropout=0.0,
                      attention_dropout=0.0, **SIZES[args.size])
    data = batch(args.batch_size, args.seq_len, 20, cfg.vocab_size, device)
    steppers = [Stepper(pr, cfg, data, device) for pr in args.precisions.split(",")]
    load = [os.getloadavg()[0]]
    for _ in range(args.warmup):
        for s in steppers:
            s.step(record=False)
    for _ in range(args.repeats):
        for s in steppers:
            s.step()
    load.append(os.getloadavg()[0])
    base = statistics.median(steppers[0].times)
    rows = [{"precision": s.precision, "median_step_s": statistics.median(s.times),
             "speedup_vs_first": base / statistics.median(s.times), "losses": s.losses} for s in steppers]
    print(f"GroupBERT {args.size}, batch {args.batch_size} x {args.seq_len}, {device}, {torch.get_num_threads()} threads")
    for r in rows:
        print(f"{r['precision']:<5} {r['median_step_s']:.3f} s/step  x{r['speedup_vs_first']:.2f}  "
              f"last loss {r['losses'][-1]:.4f}")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    Path(args.output).write_text(json.dumps({
        "benchmark": "precision", "git_commit": commit, "device": str(device), "size": args.size,
        "batch_size": args.batch_size, "seq_len": args.seq_len, "threads": torch.get_num_threads(),
        "load_average_1min_before_after": load, "results": rows}, indent=1) + "\n")
    print(f"wrote {os.path.relpath(args.output, ROOT)}")


if __name__ == "__main__":
    main()
