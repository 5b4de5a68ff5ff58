"""Fused C++ AdamW / LAMB step (custom_ops.fused_optim) over the GroupBERT Base parameter set, against
torch.optim.AdamW (fused and default) and our Python paths, with the memory bandwidth each achieves.

Every optimizer steps its own copy of the same parameters with the same fixed gradients (the step only,
no forward or backward), over the ``optimizers.param_groups`` groups (matrices, embeddings, vectors), in
one process. The fast ones (the fused kernels and a plain ``dst.copy_(src)`` of the same element count)
run interleaved round by round; then the Python / per-tensor ones likewise, apart, because their
full-size temporaries fault in fresh pages every step and disturb whatever runs next. Each reports the
median (and min) of its rounds. Bytes per step count the words each kernel reads and writes per element,
4 bytes each (float32):

    copy                    read src, write dst                                     2 words
    AdamW                   read θ, g, m, v; write θ, m, v                          7 words
    LAMB, trust-ratio group pass 1: read θ, g, m, v, write m, v; pass 2: read
                            m, v, θ (or u kept in cache), write θ                  10 words
    LAMB, excluded group    one pass, as AdamW                                      7 words
    LAMB clipping           + one read of g for the global norm                     +1 word

(LAMB's pass 2 finds most tensors' data still in L2/L3, so its DRAM traffic is lower than counted; the
GB/s column is the counted bytes over the median time.) Optimizers that run the same equations must
agree: fresh pairs take ``--check-steps`` steps each and the max |Δθ| is reported, absolute and relative
to max |θ|. For LAMB, the gradient norm G of each path is also compared with a float64 one: torch's
float32 ``vector_norm`` of a multi-million-element tensor (used by the Python path, per tensor) is off
by ~1e-5 relative, the fused kernel's blocked sums by ~1e-7, and that difference reaches the
parameters through the clip divisor and the trust ratios.

    .venv/bin/python benchmarks/bench_fused_optim.py --repeats 15

Prints a table and writes JSON to ``benchmarks/results/fused_optim.json``. The machine should be otherwise
idle: with another process on a core, every fork/join waits for a time slice, and torch's fused AdamW
(one per tensor) slows down by up to 30x. ``--smoke``: the parameter set of a one-layer H64 GroupBERT, one
round of each optimizer after one warm-up, one agreement step.
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
from common import RESULTS, load_average, median, parse_args, time_rounds, write_results  # noqa: E402

from custom_ops import _build, fused_optim  # noqa: E402
from groupbert.config import ModelConfig  # noqa: E402
from groupbert.models import GroupBertForPreTraining  # noqa: E402
from optimizers import param_groups  # noqa: E402
from optimizers.adamw import AdamW  # noqa: E402
from optimizers.lamb import LAMB, PRESETS  # noqa: E402

SIZES = {"base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
         "tiny": dict(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128, vocab_size=1024)}  # --smoke
ADAM_KW = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-6)


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--size", choices=sorted(SIZES), default="base", help="the GroupBERT whose parameters step")
    p.add_argument("--repeats", type=int, default=15, help="rounds of the fused optimizers and the copy")
    p.add_argument("--slow-repeats", type=int, default=5, help="rounds of the Python / per-tensor ones")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--check-steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", nargs="*", default=None, help="run only these optimizers (and the copy)")
    return parse_args(p, argv, default_output=RESULTS / "fused_optim.json",
                      smoke=dict(size="tiny", repeats=1, slow_repeats=1, warmup=1, check_steps=1))


def optimizer_factories() -> dict:
    nvidia = dict(PRESETS["lamb_nvidia"])
    no_clip = dict(nvidia, max_grad_norm=None)
    return {
        "torch-adamw-fused": lambda g: torch.optim.AdamW(g, fused=True, **ADAM_KW),
        "ours-adamw-fused": lambda g: AdamW(g, fused=True, **ADAM_KW),
        "ours-lamb-fused": lambda g: LAMB(g, fused=True, lr=1e-4, **nvidia),
        "ours-lamb-fused-noclip": lambda g: LAMB(g, fused=True, lr=1e-4, **no_clip),
        # the slow set
        "torch-adamw": lambda g: torch.optim.AdamW(g, **ADAM_KW),  # default: per-tensor loop on CPU
        "ours-adamw-python": lambda g: AdamW(g, fused=False, foreach=False, **ADAM_KW),
        "ours-lamb-python": lambda g: LAMB(g, fused=False, foreach=False, lr=1e-4, **nvidia),
    }


SLOW = ("torch-adamw", "ours-adamw-python", "ours-lamb-python")
# (a, b): a and b run the same equations, so their parameters must agree
AGREE = [("ours-adamw-fused", "ours-adamw-python"), ("ours-adamw-fused", "torch-adamw-fused"),
         ("ours-adamw-python", "torch-adamw"), ("ours-lamb-fused", "ours-lamb-python")]


def words_per_element(name: str, groups: list[dict]) -> float:
    """Counted words moved per parameter element (module docstring)."""
    if name == "copy":
        return 2.0
    if "adamw" in name:
        return 7.0
    n = sum(p.numel() for g in groups for p in g["params"])
    ratio = sum(p.numel() for g in groups if g.get("trust_ratio", True) for p in g["params"])
    words = (10 * ratio + 7 * (n - ratio)) / n
    return words + (0.0 if name.endswith("noclip") else 1.0)


class Setup:
    """The model's parameter groups, one fixed gradient per parameter, and fresh optimizers over copies."""

    def __init__(self, size: str):
        model = GroupBertForPreTraining(ModelConfig(type="groupbert", **SIZES[size]))
        self.groups = param_groups(model, 0.01)
        self.base = [p.detach() for g in self.groups for p in g["params"]]
        self.index = {id(p): i for i, p in enumerate(p for g in self.groups for p in g["params"])}
        self.n_params = sum(p.numel() for p in self.base)
        gen = torch.Generator().manual_seed(0)
        self.grads = [torch.randn(p.shape, generator=gen) * 1e-3 for p in self.base]

    def make(self, name: str):
        params = [p.clone().requires_grad_(True) for p in self.base]
        for p, gr in zip(params, self.grads):
            p.grad = gr
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [params[self.index[id(p)]] for p in g["params"]]} for g in self.groups]
        return params, optimizer_factories()[name](groups)


def bench(args, setup: Setup) -> dict:
    names = [n for n in optimizer_factories() if not args.only or n in args.only]
    times = {}
    for subset, repeats in (([n for n in names if n not in SLOW], args.repeats),
                            ([n for n in names if n in SLOW], args.slow_repeats)):
        if not subset:
            continue
        steps = {name: setup.make(name)[1].step for name in subset}
        if subset[0] not in SLOW:
            src, dst = torch.randn(setup.n_params), torch.empty(setup.n_params)
            steps = {"copy": lambda src=src, dst=dst: dst.copy_(src), **steps}
            del src, dst
        times.update(time_rounds(steps, repeats, args.warmup))
        del steps
        gc.collect()  # free this set's optimizers before the next
    ref = median(times["torch-adamw-fused"]) if "torch-adamw-fused" in times else None
    results = {}
    for name, ts in times.items():
        med = median(ts)
        words = words_per_element(name, setup.groups)
        results[name] = {"times_s": ts, "median_s": med, "min_s": min(ts),
                         "vs_torch_fused": med / ref if ref else None,
                         "words_per_element": words, "bytes_per_step": words * 4 * setup.n_params,
                         "gb_per_s": words * 4 * setup.n_params / med / 1e9}
    return {"params": setup.n_params, "tensors": len(setup.base), "groups": [g["group"] for g in setup.groups],
            "results": results}


def agreement(args, setup: Setup) -> dict:
    """Max |Δθ| between optimizers that run the same equations, after ``--check-steps`` steps each."""
    out = {}
    for a, b in AGREE:
        if args.only and not (a in args.only and b in args.only):
            continue
        runs = []
        for name in (a, b):
            params, opt = setup.make(name)
            for _ in range(args.check_steps):
                opt.step()
            runs.append((params, opt))
        (pa, oa), (pb, ob) = runs
        diff = max(float((x - y).abs().max()) for x, y in zip(pa, pb))
        scale = max(float(y.abs().max()) for y in pb)
        entry = {"steps": args.check_steps, "max_abs_diff": diff, "max_abs_diff_over_max_abs_param": diff / scale}
        if "lamb" in a:
            exact = math.sqrt(sum(float(g.double().pow(2).sum()) for g in setup.grads))
            entry["grad_norm_rel_error"] = {a: abs(oa.last_grad_norm - exact) / exact,
                                            b: abs(ob.last_grad_norm - exact) / exact}
        out[f"{a} vs {b}"] = entry
        del runs, pa, pb, oa, ob
        gc.collect()
    return out


def main():
    args = cli()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not fused_optim.ops_ready():
        sys.exit(f"fused_optim C++ library unavailable: {_build.errors().get('fused_optim')}")
    setup = Setup(args.size)
    out = bench(args, setup)
    out["agreement"] = agreement(args, setup)
    copy = out["results"].get("copy")
    print(f"\noptimizer step over GroupBERT {args.size} ({out['params'] / 1e6:.1f}M params, {out['tensors']} tensors, "
          f"groups {out['groups']}), cpu, {torch.get_num_threads()} threads, fp32, median of {args.repeats} "
          f"(Python / per-tensor ones: {args.slow_repeats})")
    print(f"{'':24s} {'s/step':>8s} {'min':>8s} {'vs torch fused':>15s} {'words/elem':>11s} {'GB/s':>7s} "
          f"{'of copy GB/s':>13s}")
    for name, r in out["results"].items():
        vs = f"{r['vs_torch_fused']:.2f}x" if r["vs_torch_fused"] else "-"
        of_copy = f"{r['gb_per_s'] / copy['gb_per_s']:.2f}x" if copy else "-"
        print(f"{name:24s} {r['median_s']:8.4f} {r['min_s']:8.4f} {vs:>15s} {r['words_per_element']:11.2f} "
              f"{r['gb_per_s']:7.1f} {of_copy:>13s}")
    for pair, a in out["agreement"].items():
        line = (f"{pair}: max |Δθ| after {a['steps']} steps {a['max_abs_diff']:.3g} "
                f"({a['max_abs_diff_over_max_abs_param']:.2g} of max |θ|)")
        if "grad_norm_rel_error" in a:
            line += "; G vs float64: " + ", ".join(f"{k} {v:.1e}" for k, v in a["grad_norm_rel_error"].items())
        print(line)
    write_results({"benchmark": "fused_optim", "device": "cpu",
                   "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                   "dtype": "float32", "size": args.size, "load_average_at_end": load_average(),
                   "optimizer_step": out}, args.output, smoke=args.smoke)


if __name__ == "__main__":
    main()
