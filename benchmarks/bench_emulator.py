"""Overhead of the IPU emulator over the plain CPU training step, on the application's own code path.

Both sides train GroupBERT mini (H256, L4) on the same micro-batches with GA micro-batches per optimizer
step: the plain side with the CPU stepper (forward/backward per micro-batch, AdamW), the emulated side
through ``poptorch.trainingModel`` with the model pipelined over 4 IPUs (``layers_per_ipu [1,1,1,1]``),
Mean reduction and PopART's AdamW. Medians of interleaved repeats, one process.

    .venv/bin/python benchmarks/bench_emulator.py --repeats 5

Prints the table and writes JSON to ``benchmarks/results/emulator.json``. ``--smoke``: H64 (still 4
layers, one per IPU) with a 2048-token vocabulary, micro-batch 1 of seq 32, the pipeline's smallest GA (9),
one round, no warm-up.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
from common import RESULTS, load_average, median, parse_args, time_rounds, write_results  # noqa: E402

from groupbert.config import load_config  # noqa: E402
from groupbert.ipu import USING_EMULATOR  # noqa: E402
from groupbert.ipu.backend import IPUTrainer  # noqa: E402
from groupbert.models import build_model  # noqa: E402
from groupbert.tasks.masked_lm import MaskedLMTask  # noqa: E402
from groupbert.training.distributed import DistEnv  # noqa: E402
from groupbert.training.optim import build_optimizer  # noqa: E402
from groupbert.training.runtime import Runtime  # noqa: E402
from groupbert.training.steppers import HostStepper, IPUStepper  # noqa: E402
from optimizers import build_schedule  # noqa: E402


SIZES = {"mini": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
         "tiny": dict(hidden_size=64, num_layers=4, num_heads=2, intermediate_size=256, vocab_size=2048)}  # --smoke


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--size", choices=sorted(SIZES), default="mini")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--gradient-accumulation", type=int, default=10)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    # a 4-IPU pipeline of GroupBERT mini has 5 forward stages: at least 2 x 5 - 1 = 9 micro-batches per step
    return parse_args(p, argv, default_output=RESULTS / "emulator.json",
                      smoke=dict(size="tiny", repeats=1, warmup=0, gradient_accumulation=9, micro_batch=1,
                                 seq_len=32))


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
    args = cli()
    sets = [f"model.{k}={v}" for k, v in SIZES[args.size].items()] + [
        f"train.micro_batch_size={args.micro_batch}", f"train.gradient_accumulation={args.gradient_accumulation}",
        f"data.seq_len={args.seq_len}", "train.max_steps=1000", "train.max_grad_norm=0", "schedule.name=constant",
        "schedule.warmup_steps=0"]
    cpu_cfg = load_config(None, sets + ["runtime.backend=cpu"])
    ipu_cfg = load_config(None, sets + ["runtime.backend=ipu-model", "ipu.layers_per_ipu=[1,1,1,1]"])
    torch.manual_seed(0)
    cpu_model = build_model(cpu_cfg.model).train()
    ipu_model = build_model(ipu_cfg.model).train()
    ipu_model.load_state_dict(cpu_model.state_dict())

    task = MaskedLMTask()  # MLM + NSP, unpacked, as both steppers train it
    cpu_opt = build_optimizer(cpu_model, cpu_cfg.optimizer)
    host = Runtime(torch.device("cpu"), contextlib.nullcontext, DistEnv(), on_ipu=False)
    cpu = HostStepper(cpu_model, cpu_opt, cpu_cfg, host, task)
    cpu.start(build_schedule(cpu_opt, name="constant", warmup_steps=0, total_steps=1000))
    trainer = IPUTrainer(ipu_model, ipu_cfg, task.batch_keys, task.sums)  # pipelines the model over 4 IPUs
    ipu = IPUStepper(trainer, ipu_cfg, task, DistEnv())
    ipu.start(build_schedule(trainer.optimizer, name="constant", warmup_steps=0, total_steps=1000))

    T, P = cpu_cfg.data.seq_len, cpu_cfg.data.max_predictions
    data_cpu = _Batches(args.gradient_accumulation, args.micro_batch, T, P, cpu_cfg.model.vocab_size)
    data_ipu = _Batches(args.gradient_accumulation, args.micro_batch, T, P, cpu_cfg.model.vocab_size)
    load_before = load_average()
    times = time_rounds({"cpu": lambda: cpu.run(data_cpu, 0), "emulator": lambda: ipu.run(data_ipu, 0)},
                        args.repeats, args.warmup)
    c, e = median(times["cpu"]), median(times["emulator"])
    print(f"GroupBERT {args.size}, micro {args.micro_batch} x GA {args.gradient_accumulation} x seq {T}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"plain CPU step      {c:.3f} s")
    print(f"emulated IPU step   {e:.3f} s   (4-IPU pipeline; overhead {100 * (e / c - 1):+.1f}%)")
    print(f"load average (1 min) {load_before[0]:.2f} before, {load_average()[0]:.2f} after")
    write_results({"benchmark": "emulator", "using_emulator": USING_EMULATOR, "threads": torch.get_num_threads(),
                   "micro_batch": args.micro_batch, "gradient_accumulation": args.gradient_accumulation,
                   "seq_len": T, "model": f"GroupBERT {args.size}", "model_config": SIZES[args.size],
                   "layers_per_ipu": [1, 1, 1, 1],
                   "repeats": args.repeats, "warmup": args.warmup, "load_average_before": load_before,
                   "times_s": times, "cpu_median_s": c, "emulator_median_s": e, "overhead": e / c - 1},
                  args.output, smoke=args.smoke)


if __name__ == "__main__":
    main()
