"""Optimizer step time over the GroupBERT Base parameter set, against torch.optim.AdamW (foreach, fused).

"ours" run their default path (the per-tensor loop on CPU, like torch) unless marked foreach. Every
optimizer steps the same parameters with the same fixed gradients (the step only, no forward or
backward), in one process, interleaved round by round; each reports the median. A second table gives
the cost of the update-size metrics (ℓ2 norm, angle, RRC) on a full training step of a smaller model,
per measured step; with ``logging.update_metrics_every: N`` it is paid every N steps.

    .venv/bin/python benchmarks/bench_optimizers.py --repeats 5

Prints tables and writes JSON to ``benchmarks/results/optimizers.json``. ``--smoke``: a one-layer H64
GroupBERT for both tables (batch 2 x 32 for the metrics), one round, no warm-up.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
from common import RESULTS, load_average, median, parse_args, time_rounds, write_results  # noqa: E402

from groupbert.config import ModelConfig  # noqa: E402
from groupbert.models import GroupBertForPreTraining  # noqa: E402
from optimizers import param_groups  # noqa: E402
from optimizers.registry import create_optimizer  # noqa: E402
from optimizers.update_metrics import UpdateMetrics  # noqa: E402

SIZES = {"base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
         "mini": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
         "tiny": dict(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128, vocab_size=1024)}  # --smoke


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--size", choices=sorted(SIZES), default="base", help="parameter set of the optimizer table")
    p.add_argument("--metrics-size", choices=sorted(SIZES), default="mini", help="model of the metrics table")
    p.add_argument("--metrics-batch", type=int, nargs=2, default=[16, 128], metavar=("B", "T"))
    return parse_args(p, argv, default_output=RESULTS / "optimizers.json",
                      smoke=dict(repeats=1, warmup=0, size="tiny", metrics_size="tiny", metrics_batch=[2, 32]))


def optimizer_factories():
    torch_kw = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-6)
    return {
        "torch-adamw": lambda g: torch.optim.AdamW(g, **torch_kw),  # default: per-tensor loop on CPU
        "torch-adamw-foreach": lambda g: torch.optim.AdamW(g, foreach=True, **torch_kw),
        "torch-adamw-fused": lambda g: torch.optim.AdamW(g, fused=True, **torch_kw),
        "ours-adamw": lambda g: create_optimizer("adamw", g, **torch_kw),
        "ours-lamb": lambda g: create_optimizer("lamb", g, **torch_kw),
        "ours-lion": lambda g: create_optimizer("lion", g, lr=1e-5),
        "ours-lion_ar": lambda g: create_optimizer("lion_ar", g, lr=1e-5),
        "ours-adamw-foreach": lambda g: create_optimizer("adamw", g, foreach=True, **torch_kw),
        "ours-lamb-foreach": lambda g: create_optimizer("lamb", g, foreach=True, **torch_kw),
    }


def bench_steps(args) -> dict:
    model = GroupBertForPreTraining(ModelConfig(type="groupbert", **SIZES[args.size]))
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=g) * 1e-3 for p in model.parameters()]
    states = {}
    for name, make in optimizer_factories().items():
        params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
        for p, gr in zip(params, grads):
            p.grad = gr
        opt = make([{"params": params, "weight_decay": 0.01}])
        for _ in range(args.warmup):  # each alone, before any is timed: the state tensors get allocated
            opt.step()
        states[name] = opt
    times = time_rounds({name: opt.step for name, opt in states.items()}, args.repeats)
    ref, foreach, fused = (median(times[k]) for k in ("torch-adamw", "torch-adamw-foreach", "torch-adamw-fused"))
    return {"params": n_params, "size": args.size, "results": {
        name: {"times_s": ts, "median_s": median(ts), "vs_torch_default": median(ts) / ref,
               "vs_torch_foreach": median(ts) / foreach, "vs_torch_fused": median(ts) / fused}
        for name, ts in times.items()}}


def bench_update_metrics(args) -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig(type="groupbert", **SIZES[args.metrics_size])
    model = GroupBertForPreTraining(cfg)
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-4)
    (B, T), P, top = args.metrics_batch, 20, min(30000, cfg.vocab_size)
    batch = dict(input_ids=torch.randint(1000, top, (B, T)), masked_lm_positions=torch.randint(1, T, (B, P)),
                 masked_lm_labels=torch.randint(1000, top, (B, P)), next_sentence_label=torch.randint(0, 2, (B,)))
    metrics = UpdateMetrics(model, every=1)

    def step(measure: bool, i: int):
        opt.zero_grad(set_to_none=True)
        if measure:
            metrics.arm(i)
        model(**batch).loss.backward()
        if measure:
            metrics.before_update()
        opt.step()
        if measure:
            metrics.after_update()
    for i in range(args.warmup):
        step(True, i + 1)
    rounds = iter(range(1, args.repeats + 1))
    times = time_rounds({"plain": lambda: step(False, 0), "measured": lambda: step(True, next(rounds))},
                        args.repeats)
    p, m = median(times["plain"]), median(times["measured"])
    size = SIZES[args.metrics_size]
    return {"model": f"GroupBERT {args.metrics_size} (H{size['hidden_size']} L{size['num_layers']})", "batch": [B, T],
            "plain_step_s": p, "measured_step_s": m, "overhead_per_measured_step": m / p - 1.0}


def main():
    args = cli()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = bench_steps(args)
    overhead = bench_update_metrics(args)
    print(f"\noptimizer step over GroupBERT {args.size} ({steps['params'] / 1e6:.1f}M params), cpu, "
          f"{torch.get_num_threads()} threads, fp32, median of {args.repeats}")
    print(f"{'optimizer':22s} {'s/step':>8s} {'vs torch':>9s} {'vs foreach':>11s} {'vs fused':>9s}")
    for name, r in steps["results"].items():
        print(f"{name:22s} {r['median_s']:8.3f} {r['vs_torch_default']:8.2f}x {r['vs_torch_foreach']:10.2f}x "
              f"{r['vs_torch_fused']:8.2f}x")
    print(f"\nupdate-size metrics on a {overhead['model']} training step: {overhead['plain_step_s']:.3f} s -> "
          f"{overhead['measured_step_s']:.3f} s (+{100 * overhead['overhead_per_measured_step']:.0f}% per "
          f"measured step)")
    write_results({"benchmark": "optimizers", "device": "cpu", "threads": torch.get_num_threads(), "dtype": "float32",
                   "load_average_at_end": load_average(), "optimizer_step": steps, "update_metrics": overhead},
                  args.output, smoke=args.smoke)


if __name__ == "__main__":
    main()
