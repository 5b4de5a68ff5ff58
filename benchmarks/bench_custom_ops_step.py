"""A whole GroupBERT pretraining step (forward, backward, optimizer update) with the C++ ops on and off.

"on": the conv module runs ``custom_ops.grouped_conv1d`` (channels-last C++ kernel) and the optimizer
its fused C++ update; "off": ``nn.Conv1d`` between two transposes and the optimizer's Python path (what
``GROUPBERT_CUSTOM_OPS=off`` gives). Both models start from the same weights and see the same batch;
the two take timed steps in turn (``--repeats`` rounds) and each reports its median. The loss of the
first step is printed for both as a check that they compute the same thing.

    .venv/bin/python benchmarks/bench_custom_ops_step.py --size base --optimizer lamb --repeats 3

Writes JSON to ``benchmarks/results/custom_ops_step.json``.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

import custom_ops  # noqa: E402
from benchmarks.bench_train_step import SIZES, git_commit, make_batch  # noqa: E402
from groupbert.config import ModelConfig  # noqa: E402
from groupbert.models import GroupBertForPreTraining  # noqa: E402
from optimizers import param_groups  # noqa: E402
from optimizers.registry import create_optimizer  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="base")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--masked", type=int, default=20)
    p.add_argument("--optimizer", choices=("lamb", "adamw"), default="lamb")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                     "custom_ops_step.json"))
    return p.parse_args()


class Stepper:
    def __init__(self, name, model, optimizer_name, ops_on, batch):
        self.name, self.model, self.batch, self.ops_on = name, model, batch, ops_on
        for m in model.modules():
            if hasattr(m, "use_custom_op"):
                m.use_custom_op = ops_on
        groups = param_groups(model, 0.01)
        self.opt = create_optimizer(optimizer_name, groups, lr=1e-4, fused=ops_on)
        self.times, self.losses = [], []

    def step(self, record=True):
        b = self.batch
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = self.model(b["input_ids"], b["token_type_ids"], b["attention_mask"], b["positions"], b["labels"],
                          b["nsp"]).loss
        loss.backward()
        self.opt.step()
        elapsed = time.perf_counter() - t0
        self.losses.append(loss.item())
        if record:
            self.times.append(elapsed)


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    status = custom_ops.status()
    if any(v != "c++" for v in status.values()):
        sys.exit(f"custom ops not built: {status}; run `make setup`")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=30522, max_positions=512, type="groupbert", **SIZES[args.size])
    batch = make_batch(args.batch_size, args.seq_len, args.masked, cfg.vocab_size, "cpu")
    model = GroupBertForPreTraining(cfg).train()
    steppers = [Stepper("ops-on", model, args.optimizer, True, batch),
                Stepper("ops-off", copy.deepcopy(model), args.optimizer, False, batch)]
    load_before = os.getloadavg()
    for _ in range(args.warmup):
        for st in steppers:
            st.step(record=False)
    for _ in range(args.repeats):
        for st in steppers:
            st.step()
    results = {st.name: dict(times_s=st.times, median_s=statistics.median(st.times), losses=st.losses,
                             sequences_per_s=args.batch_size / statistics.median(st.times)) for st in steppers}
    speedup = results["ops-off"]["median_s"] / results["ops-on"]["median_s"]
    print(f"\nGroupBERT {args.size}, batch {args.batch_size} x {args.seq_len}, {args.optimizer}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    for name, r in results.items():
        print(f"{name:<10}{r['median_s']:>8.3f} s/step{r['sequences_per_s']:>8.2f} seq/s  "
              f"losses {', '.join(f'{x:.4f}' for x in r['losses'][:3])}")
    print(f"speed-up (off / on): {speedup:.2f}x")
    commit, dirty = git_commit()
    record = dict(benchmark="custom_ops_step", torch=torch.__version__, python=platform.python_version(),
                  cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                  size=args.size, optimizer=args.optimizer, model_config=dataclasses.asdict(cfg),
                  shapes=dict(batch_size=args.batch_size, seq_len=args.seq_len, masked_positions=args.masked),
                  warmup=args.warmup, repeats=args.repeats, git_commit=commit, git_dirty=dirty,
                  load_average_before=load_before, load_average_after=os.getloadavg(),
                  results=results, speedup_off_over_on=speedup)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
