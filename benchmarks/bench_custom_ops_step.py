"""A whole GroupBERT pretraining step (forward, backward, optimizer update) with the C++ ops on and off.

"on": the conv module runs ``custom_ops.grouped_conv1d`` (channels-last C++ kernel) and the optimizer
its fused C++ update; "off": ``nn.Conv1d`` between two transposes and the optimizer's Python path (what
``GROUPBERT_CUSTOM_OPS=off`` gives). Both models start from the same weights and see the same batch;
the two take timed steps in turn (``--repeats`` rounds) and each reports its median. The loss of the
first step is printed for both as a check that they compute the same thing.

    .venv/bin/python benchmarks/bench_custom_ops_step.py --size base --optimizer lamb --repeats 3

Writes JSON to ``benchmarks/results/custom_ops_step.json``. ``--smoke``: the tiny size, batch 2 x 32, a
1024-token vocabulary, one round after one warm-up (the first loss of each is compared).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
from common import RESULTS, load_average, median, parse_args, time_rounds, write_results  # noqa: E402

import custom_ops  # noqa: E402
from benchmarks.bench_train_step import SIZES, make_batch  # noqa: E402
from groupbert.config import ModelConfig  # noqa: E402
from groupbert.models import GroupBertForPreTraining  # noqa: E402
from optimizers import param_groups  # noqa: E402
from optimizers.registry import create_optimizer  # noqa: E402


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--size", choices=sorted(SIZES), default="base")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--masked", type=int, default=20)
    p.add_argument("--vocab-size", type=int, default=30522)
    p.add_argument("--optimizer", choices=("lamb", "adamw"), default="lamb")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    return parse_args(p, argv, default_output=RESULTS / "custom_ops_step.json",
                      smoke=dict(size="tiny", batch_size=2, seq_len=32, masked=5, vocab_size=1024, repeats=1,
                                 warmup=1))


class Stepper:
    def __init__(self, name, model, optimizer_name, ops_on, batch):
        self.name, self.model, self.batch, self.ops_on = name, model, batch, ops_on
        for m in model.modules():
            if hasattr(m, "use_custom_op"):
                m.use_custom_op = ops_on
        groups = param_groups(model, 0.01)
        self.opt = create_optimizer(optimizer_name, groups, lr=1e-4, fused=ops_on)
        self.losses = []  # warm-up steps included: the first is the check that both compute the same

    def step(self):
        b = self.batch
        self.opt.zero_grad(set_to_none=True)
        loss = self.model(b["input_ids"], b["token_type_ids"], b["attention_mask"], b["positions"], b["labels"],
                          b["nsp"]).loss
        loss.backward()
        self.opt.step()
        self.losses.append(loss.item())


def main():
    args = cli()
    if args.threads:
        torch.set_num_threads(args.threads)
    status = custom_ops.status()
    if any(v != "c++" for v in status.values()):
        sys.exit(f"custom ops not built: {status}; run `make setup`")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=args.vocab_size, max_positions=512, type="groupbert", **SIZES[args.size])
    batch = make_batch(args.batch_size, args.seq_len, args.masked, cfg.vocab_size, "cpu")
    model = GroupBertForPreTraining(cfg).train()
    steppers = [Stepper("ops-on", model, args.optimizer, True, batch),
                Stepper("ops-off", copy.deepcopy(model), args.optimizer, False, batch)]
    load_before = load_average()
    times = time_rounds({st.name: st.step for st in steppers}, args.repeats, args.warmup)
    results = {st.name: dict(times_s=times[st.name], median_s=median(times[st.name]), losses=st.losses,
                             sequences_per_s=args.batch_size / median(times[st.name])) for st in steppers}
    speedup = results["ops-off"]["median_s"] / results["ops-on"]["median_s"]
    print(f"\nGroupBERT {args.size}, batch {args.batch_size} x {args.seq_len}, {args.optimizer}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    for name, r in results.items():
        print(f"{name:<10}{r['median_s']:>8.3f} s/step{r['sequences_per_s']:>8.2f} seq/s  "
              f"losses {', '.join(f'{x:.4f}' for x in r['losses'][:3])}")
    print(f"speed-up (off / on): {speedup:.2f}x")
    record = dict(benchmark="custom_ops_step", threads=torch.get_num_threads(),
                  size=args.size, optimizer=args.optimizer, model_config=dataclasses.asdict(cfg),
                  shapes=dict(batch_size=args.batch_size, seq_len=args.seq_len, masked_positions=args.masked),
                  warmup=args.warmup, repeats=args.repeats, load_average_before=load_before,
                  load_average_after=load_average(), results=results, speedup_off_over_on=speedup)
    write_results(record, args.output, smoke=args.smoke)


if __name__ == "__main__":
    main()
