"""Overhead of the IPU emulator over the plain CPU training step, on the application's own code path.

Both sides train GroupBERT mini (H256, L4) on the same micro-batches with GA micro-batches per optimizer
step: the plain side with the CPU stepper (forward/backward per micro-batch, AdamW), the emulated side
through ``poptorch.trainingModel`` with the model pipelined over 4 IPUs (``layers_per_ipu [1,1,1,1]``),
Mean reduction and PopART's AdamW. Medians of interleaved repeats, one process.

    .venv/bin/python benchmarks/bench_emulator.py --repeats 5

Prints the table and writes JSON to ``benchmarks/results/emulator.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from groupbert.config import load_config  # noqa: E402
from groupbert.ipu import USING_EMULATOR, poptorch  # noqa: E402
from groupbert.ipu.options import build_ipu_optimizer, build_options  # noqa: E402
from groupbert.ipu.pipeline import parallelize  # noqa: E402
from groupbert.models import build_model  # noqa: E402
from groupbert.training.optim import build_optimizer  # noqa: E402
from groupbert.training.steppers import HostStepper, IPUStepper  # noqa: E402
from optimizers import build_schedule  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--gradient-accumulation", type=int, default=10)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                     "emulator.json"))
    return p.parse_args()


class _Batches:
    """An endless stream of the same random micro-batches (data loading is not what is timed)."""

    def __init__(self, n, B, T, P, vocab):
        g = torch.Generator().manual_seed(0)
        self.items = [dict(input_ids=torch.randint(1000, vocab, (B, T), generator=g),
                           token_type_ids=torch.zeros(B, T, dtype=torch.long),
                           attention_mask=torch.ones(B, T, dtype=torch.long),
                           masked_lm_positions=torch.randint(1, T, (B, P), generator=g),
                           masked_lm_labels=torch.randint(1000, vocab, (B, P), generator=g),
                           next_sentence_label=torch.randint(0, 2, (B,), generator=g)) for _ in range(n)]
        self.i = 0

    def __next__(self):
        self.i = (self.i + 1) % len(self.items)
        return self.items[self.i]


def main():
    args = parse_args()
    sets = ["model.hidden_size=256", "model.num_layers=4", "model.num_heads=4", "model.intermediate_size=1024",
            f"train.micro_batch_size={args.micro_batch}", f"train.gradient_accumulation={args.gradient_accumulation}",
            "train.max_steps=1000", "train.max_grad_norm=0", "schedule.name=constant", "schedule.warmup=0"]
    cpu_cfg = load_config(None, sets + ["runtime.backend=cpu"])
    ipu_cfg = load_config(None, sets + ["runtime.backend=ipu-model", "ipu.layers_per_ipu=[1,1,1,1]"])
    torch.manual_seed(0)
    cpu_model = build_model(cpu_cfg.model).train()
    ipu_model = build_model(ipu_cfg.model).train()
    ipu_model.load_state_dict(cpu_model.state_dict())

    cpu_opt = build_optimizer(cpu_model, cpu_cfg.optimizer)
    cpu_sched = build_schedule(cpu_opt, name="constant", warmup_steps=0, total_steps=1000)
    cpu = HostStepper(cpu_model, cpu_opt, cpu_sched, cpu_cfg, torch.device("cpu"), contextlib.nullcontext)
    parallelize(ipu_model, ipu_cfg.ipu.layers_per_ipu)
    ipu_opt = build_ipu_optimizer(ipu_model, ipu_cfg)
    ipu_sched = build_schedule(ipu_opt, name="constant", warmup_steps=0, total_steps=1000)
    ipu = IPUStepper(ipu_model, ipu_cfg, poptorch, ipu_opt, ipu_sched, build_options(ipu_cfg))

    T, P = cpu_cfg.data.seq_len, cpu_cfg.data.max_predictions
    data_cpu = _Batches(args.gradient_accumulation, args.micro_batch, T, P, cpu_cfg.model.vocab_size)
    data_ipu = _Batches(args.gradient_accumulation, args.micro_batch, T, P, cpu_cfg.model.vocab_size)
    for _ in range(args.warmup):
        cpu.run(data_cpu, 0)
        ipu.run(data_ipu, 0)
    times = {"cpu": [], "emulator": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        cpu.run(data_cpu, 0)
        times["cpu"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ipu.run(data_ipu, 0)
        times["emulator"].append(time.perf_counter() - t)
    c, e = statistics.median(times["cpu"]), statistics.median(times["emulator"])
    print(f"GroupBERT mini, micro {args.micro_batch} x GA {args.gradient_accumulation} x seq {T}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"plain CPU step      {c:.3f} s")
    print(f"emulated IPU step   {e:.3f} s   (4-IPU pipeline; overhead {100 * (e / c - 1):+.1f}%)")
    out = {"benchmark": "emulator", "torch": torch.__version__, "python": platform.python_version(),
           "using_emulator": USING_EMULATOR, "threads": torch.get_num_threads(), "micro_batch": args.micro_batch,
           "gradient_accumulation": args.gradient_accumulation, "seq_len": T, "times_s": times,
           "cpu_median_s": c, "emulator_median_s": e, "overhead": e / c - 1}
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
