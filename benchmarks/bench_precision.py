"""Training step time in fp32, bf16 autocast and fp16 autocast with dynamic loss scaling (``runtime.precision``).

The application's own pieces (``groupbert.training.precision``: the autocast context and the loss scaler;
our AdamW with fp32 master weights and state), one GroupBERT pretraining step (forward, backward,
unscale + clip, update) per precision, interleaved in one process on the same batch. On CPU, bf16 runs
on AVX-512 BF16 where the processor has it (oneDNN); fp16 autocast on CPU is for checking the code path,
not for speed. On CUDA the same script times the GPU.

    .venv/bin/python benchmarks/bench_precision.py --size mini --repeats 5

Prints a table and writes JSON to ``benchmarks/results/precision.json``. ``--smoke``: every precision on
a one-layer H64 GroupBERT with a 1024-token vocabulary, batch 2 x 32, one round, no warm-up.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import (RESULTS, device_peak, load_average, median, parse_args, time_rounds,  # noqa: E402
                    write_results)

from groupbert.config import ModelConfig  # noqa: E402
from groupbert.models import build_model  # noqa: E402
from groupbert.models.flops import forward_flops  # noqa: E402
from groupbert.training.precision import LossScaler, autocast_context  # noqa: E402

SIZES = {"mini": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
         "base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
         "tiny": dict(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128)}  # --smoke


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
    def __init__(self, precision, cfg, data, device, compile=False):
        from optimizers import AdamW
        torch.manual_seed(0)
        self.precision, self.data = precision, data
        self.model = build_model(cfg).to(device).train()
        if compile:
            self.model.compile()
        self.opt = AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
        self.autocast = autocast_context(precision, device)
        self.scaler = LossScaler(device, enabled=precision == "fp16")
        self.device, self.losses = device, []

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.model(**self.data).loss
        self.scaler.backward(loss)
        self.scaler.step(self.opt, self.model.parameters(), 1.0)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.losses.append(float(loss.detach()))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--size", choices=sorted(SIZES), default="mini")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=30522)
    p.add_argument("--precisions", default="fp32,bf16,fp16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (runtime.compile)")
    args = parse_args(p, default_output=RESULTS / "precision.json",
                      smoke=dict(size="tiny", batch_size=2, seq_len=32, vocab_size=1024, repeats=1, warmup=0))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = ModelConfig(type="groupbert", vocab_size=args.vocab_size, max_positions=512, hidden_dropout=0.0,
                      attention_dropout=0.0, **SIZES[args.size])
    data = batch(args.batch_size, args.seq_len, 20, cfg.vocab_size, device)
    steppers = [Stepper(pr, cfg, data, device, args.compile) for pr in args.precisions.split(",")]
    load = [load_average()[0]]
    times = time_rounds({s.precision: s.step for s in steppers}, args.repeats, args.warmup)
    load.append(load_average()[0])
    base = median(times[steppers[0].precision])
    flops = 3 * forward_flops(cfg, args.batch_size, args.seq_len, 20)
    rows = []
    for s in steppers:
        med = median(times[s.precision])
        peak = device_peak(args.device, s.precision if s.precision == "bf16" else "fp32")  # fp16 on CPU: fp32 rate
        rows.append({"precision": s.precision, "median_step_s": med, "speedup_vs_first": base / med,
                     "tflops": flops / med / 1e12, "mfu": flops / med / peak.flops_per_s if peak.flops_per_s else None,
                     "peak_source": peak.source, "losses": s.losses[args.warmup:]})
    print(f"GroupBERT {args.size}, batch {args.batch_size} x {args.seq_len}, {device}, {torch.get_num_threads()} threads"
          f"{', compiled' if args.compile else ''}")
    for r in rows:
        mfu = f"MFU {100 * r['mfu']:.1f}% of {r['peak_source']}" if r["mfu"] is not None else ""
        print(f"{r['precision']:<5} {r['median_step_s']:.3f} s/step  x{r['speedup_vs_first']:.2f}  "
              f"last loss {r['losses'][-1]:.4f}  {r['tflops']:.3f} TFLOPS  {mfu}")
    write_results({"benchmark": "precision", "device": str(device), "size": args.size,
                   "batch_size": args.batch_size, "seq_len": args.seq_len, "threads": torch.get_num_threads(),
                   "repeats": args.repeats, "warmup": args.warmup, "load_average_1min_before_after": load,
                   "compiled": args.compile, "model_flops_per_step": flops,
                   "results": rows}, args.output, smoke=args.smoke)


if __name__ == "__main__":
    main()
