"""Optimizer step time over the GroupBERT Base parameter set, against torch.optim.AdamW (foreach, fused).

"ours" run their default path (the per-tensor loop on CPU, like torch) unless marked foreach. Every
optimizer steps the same parameters with the same fixed gradients (the step only, no forward or
backward), in one process, interleaved round by round; each reports the median. A second table gives
the cost of the update-size metrics (ℓ2 norm, angle, RRC) on a full training step of a smaller model,
per measured step; with ``logging.update_metrics_every: N`` it is paid every N steps.

    .venv/bin/python benchmarks/bench_optimizers.py --repeats 5

Prints tables and writes JSON to ``benchmarks/results/optimizers.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from groupbert.config import ModelConfig  # noqa: E402
from groupbert.models import GroupBertForPreTraining  # noqa: E402
from optimizers import param_groups  # noqa: E402
from optimizers.registry import create_optimizer  # noqa: E402
from optimizers.update_metrics import UpdateMetrics  # noqa: E402

BASE = dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)
MINI = dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                     "optimizers.json"))
    return p.parse_args()


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
    model = GroupBertForPreTraining(ModelConfig(type="groupbert", **BASE))
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=g) * 1e-3 for p in model.parameters()]
    states = {}
    for name, make in optimizer_factories().items():
        params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
        for p, gr in zip(params, grads):
            p.grad = gr
        opt = make([{"params": params, "weight_decay": 0.01}])
        for _ in range(args.warmup):
            opt.step()
        states[name] = opt
    times = {name: [] for name in states}
    for _ in range(args.repeats):
        for name, opt in states.items():
            t = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t)
    ref = statistics.median(times["torch-adamw"])
    fused = statistics.median(times["torch-adamw-fused"])
    return {"params": n_params, "results": {
        name: {"times_s": ts, "median_s": statistics.median(ts),
               "vs_torch_default": statistics.median(ts) / ref,
               "vs_torch_foreach": statistics.median(ts) / statistics.median(times["torch-adamw-foreach"]), "vs_torch_fused": statistics.median(ts) / fused}
        for name, ts in times.items()}}


def bench_update_metrics(args) -> dict:
    torch.manual_seed(0)
    model = GroupBertForPreTraining(ModelConfig(type="groupbert", **MINI))
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-4)
    B, T, P = 16, 128, 20
    batch = dict(input_ids=torch.randint(1000, 30000, (B, T)), masked_lm_positions=torch.randint(1, T, (B, P)),
                 masked_lm_labels=torch.randint(1000, 30000, (B, P)), next_sentence_label=torch.randint(0, 2, (B,)))
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
    plain, measured = [], []
    for i in range(args.repeats):
        t = time.perf_counter()
        step(False, i + 1)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        step(True, i + 1)
        measured.append(time.perf_counter() - t)
    p, m = statistics.median(plain), statistics.median(measured)
    return {"model": "GroupBERT mini (H256 L4)", "batch": [B, T], "plain_step_s": p, "measured_step_s": m,
            "overhead_per_measured_step": m / p - 1.0}


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = bench_steps(args)
    overhead = bench_update_metrics(args)
    print(f"\noptimizer step over GroupBERT Base ({steps['params'] / 1e6:.1f}M params), cpu, "
          f"{torch.get_num_threads()} threads, fp32, median of {args.repeats}")
    print(f"{'optimizer':22s} {'s/step':>8s} {'vs torch':>9s} {'vs foreach':>11s} {'vs fused':>9s}")
    for name, r in steps["results"].items():
        print(f"{name:22s} {r['median_s']:8.3f} {r['vs_torch_default']:8.2f}x {r['vs_torch_foreach']:10.2f}x "
              f"{r['vs_torch_fused']:8.2f}x")
    print(f"\nupdate-size metrics on a {overhead['model']} training step: {overhead['plain_step_s']:.3f} s -> "
          f"{overhead['measured_step_s']:.3f} s (+{100 * overhead['overhead_per_measured_step']:.0f}% per "
          f"measured step)")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        commit = None
    out = {"benchmark": "optimizers", "torch": torch.__version__, "python": platform.python_version(),
           "device": "cpu", "threads": torch.get_num_threads(), "dtype": "float32", "git_commit": commit,
           "load_average_at_end": list(os.getloadavg()), "optimizer_step": steps, "update_metrics": overhead}
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
