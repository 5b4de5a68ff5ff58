"""GroupBERT's grouped convolution on CPU: the C++ channels-last op against transpose -> F.conv1d -> transpose.

Both paths take the model's [batch, seq, hidden] activations and an ``nn.Conv1d`` weight, at GroupBERT
Base shapes by default (batch 8, seq 128, hidden 768, kernel 7, 48 groups of 16 channels):
- ``ours``: ``custom_ops.grouped_conv1d`` (``groupbert::grouped_conv1d`` and its backward op);
- ``conv1d``: ``custom_ops.grouped_conv1d_reference``, i.e. what ``GroupBertConv`` did before: transpose,
  ``F.conv1d(padding=K // 2, groups=G)``, transpose back.
"fwd+bwd" is the forward and ``backward`` with autograd (input, weight and bias gradients), "fwd" the
forward alone under ``torch.no_grad``. Same inputs, one process; after ``--warmup`` untimed calls, the
four cases take turns for ``--repeats`` rounds and each reports its median. The outputs and gradients
of the two paths are compared before timing. The 1-minute load average before and after goes in the
JSON: numbers taken while other jobs share the cores are not worth quoting.

Each new multi-MiB tensor can cost page faults: glibc returns freed memory at the top of the heap to the
system (and maps the largest blocks afresh), so a loop allocating and freeing activations touches
fresh pages every call, and the F.conv1d path, which allocates more (transposed copies), pays more for
it. The cases are therefore timed twice: with glibc's defaults ("default allocator"), then after
``mallopt`` tells it to keep freed memory ("retained allocator": compute and memory traffic only, the
conservative comparison, closer to a long training run with a warmed-up caching allocator).

    .venv/bin/python benchmarks/bench_grouped_conv.py --threads 2

Prints a table and writes JSON to ``benchmarks/results/grouped_conv.json``.

``--segments N`` times packed rows instead (each row cut into N runs of random lengths, seeded, as
``segment_ids``), three paths interleaved in one process:
- ``ours segments``: ``custom_ops.grouped_conv1d(..., segment_ids=ids)``, i.e. ``groupbert::grouped_conv1d_segments``;
- ``reference segments``: ``grouped_conv1d_segments_reference`` (unfold + einsum, autograd), the fallback;
- ``ours unsegmented``: the C++ op on the same tensors without ``segment_ids`` (what the cut costs).

    .venv/bin/python benchmarks/bench_grouped_conv.py --threads 2 --segments 3

writes ``benchmarks/results/grouped_conv_segments.json``. ``--smoke`` (either mode): batch 1 x 16 x 32,
one round after one warm-up.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
from common import RESULTS, cpu_name, load_average, median, parse_args, time_rounds, write_results  # noqa: E402

from custom_ops import _build  # noqa: E402
from custom_ops.grouped_conv import (grouped_conv1d, grouped_conv1d_reference,  # noqa: E402
                                     grouped_conv1d_segments_reference, ops_ready)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--kernel", type=int, default=7)
    p.add_argument("--group-size", type=int, default=16, help="channels per group (groups = hidden / this)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--segments", type=int, default=0,
                   help="packed rows: cut each row into this many runs (0: whole rows, the default benchmark)")
    args = parse_args(p, argv, default_output=None,
                      smoke=dict(batch_size=1, seq_len=16, hidden=32, repeats=1, warmup=1),
                      output_help="default benchmarks/results/grouped_conv.json, or grouped_conv_segments.json with "
                                  "--segments")
    if args.output is None and not args.smoke:  # benchmarks/results/grouped_conv[_segments].json
        args.output = RESULTS / ("grouped_conv_segments.json" if args.segments else "grouped_conv.json")
    return args


def retain_freed_memory() -> bool:
    """Ask glibc to keep freed memory mapped (no trimming, no per-block mmap); False if not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    return all(libc.mallopt(opt, val) == 1 for opt, val in (
        (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 64 << 20), (M_MMAP_THRESHOLD, 32 << 20)))


def time_cases(cases: dict, args) -> dict:
    times = time_rounds(cases, args.repeats, args.warmup)
    med = {name: median(ts) for name, ts in times.items()}
    return {"speedup": {"fwd+bwd": med["conv1d fwd+bwd"] / med["ours fwd+bwd"],
                        "fwd": med["conv1d fwd"] / med["ours fwd"]},
            "results": {name: {"median_ms": 1e3 * med[name], "min_ms": 1e3 * min(ts), "times_s": ts}
                        for name, ts in times.items()}}


def random_segment_ids(B: int, T: int, n: int, g: torch.Generator) -> torch.Tensor:
    """[B, T] int64: each row cut at n - 1 distinct random points into n runs (ids 0 .. n-1)."""
    ids = torch.zeros(B, T, dtype=torch.long)
    for r in range(B):
        cuts = torch.randperm(T - 1, generator=g)[:n - 1] + 1
        ids[r, cuts] = 1
    return ids.cumsum(1)


def main_segments(args):
    """--segments: the segmented C++ op against the plain-PyTorch reference and the unsegmented op."""
    dtype = DTYPES[args.dtype]
    B, T, H, K = args.batch_size, args.seq_len, args.hidden, args.kernel
    G = H // args.group_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, H, generator=g).to(dtype).requires_grad_(True)
    w = (torch.randn(H, H // G, K, generator=g) * 0.1).to(dtype).requires_grad_(True)
    b = torch.randn(H, generator=g).to(dtype).requires_grad_(True)
    gy = torch.randn(B, T, H, generator=g).to(dtype)
    ids = random_segment_ids(B, T, args.segments, g)
    paths = {"ours segments": lambda: grouped_conv1d(x, w, b, G, segment_ids=ids),
             "reference segments": lambda: grouped_conv1d_segments_reference(x, w, b, G, ids),
             "ours unsegmented": lambda: grouped_conv1d(x, w, b, G)}

    def fwd_bwd(fn):
        def run():
            for t in (x, w, b):
                t.grad = None
            fn().backward(gy)
        return run

    def fwd(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    outs = {}
    for name in ("ours segments", "reference segments"):
        fwd_bwd(paths[name])()
        with torch.no_grad():
            outs[name] = [paths[name]().float()] + [t.grad.float() for t in (x, w, b)]
    max_diff = {k: (a - r).abs().max().item() for k, a, r in zip(
        ["output", "grad_input", "grad_weight", "grad_bias"], outs["ours segments"], outs["reference segments"])}

    cases = {f"{name} {kind}": (fwd_bwd if kind == "fwd+bwd" else fwd)(fn)
             for kind in ("fwd+bwd", "fwd") for name, fn in paths.items()}
    load_before = load_average()
    phases = {}
    for phase in ("default allocator", "retained allocator"):
        if phase == "retained allocator" and not retain_freed_memory():
            break
        times = time_rounds(cases, args.repeats, args.warmup)
        med = {name: median(ts) for name, ts in times.items()}
        phases[phase] = {
            "reference / ours segments": {k: med[f"reference segments {k}"] / med[f"ours segments {k}"]
                                          for k in ("fwd+bwd", "fwd")},
            "ours segments / ours unsegmented": {k: med[f"ours segments {k}"] / med[f"ours unsegmented {k}"]
                                                 for k in ("fwd+bwd", "fwd")},
            "results": {name: {"median_ms": 1e3 * med[name], "min_ms": 1e3 * min(ts), "times_s": ts}
                        for name, ts in times.items()}}
    load_after = load_average()

    threads = torch.get_num_threads()
    runs = [[int(n) for n in torch.unique_consecutive(row, return_counts=True)[1]] for row in ids]
    print(f"\nsegmented grouped conv1d [B={B}, T={T}, H={H}], K={K}, {G} groups of {H // G}, {args.segments} "
          f"runs per row, {args.dtype}, cpu ({cpu_name()}), {threads} threads, median of {args.repeats}; "
          f"load {load_before[0]:.2f} -> {load_after[0]:.2f}")
    print(f"{'':20s} {'':8s} {'ours seg ms':>12s} {'reference ms':>13s} {'unseg ms':>9s} {'ref/ours':>9s} "
          f"{'seg/unseg':>10s}")
    for phase, r in phases.items():
        for kind in ("fwd+bwd", "fwd"):
            res = r["results"]
            print(f"{phase:20s} {kind:8s} {res['ours segments ' + kind]['median_ms']:12.3f} "
                  f"{res['reference segments ' + kind]['median_ms']:13.3f} "
                  f"{res['ours unsegmented ' + kind]['median_ms']:9.3f} "
                  f"{r['reference / ours segments'][kind]:8.2f}x {r['ours segments / ours unsegmented'][kind]:9.2f}x")
    print("max |ours - reference|: " + ", ".join(f"{k} {v:.2e}" for k, v in max_diff.items()))
    write_results({"benchmark": "grouped_conv_segments", "device": "cpu", "threads": threads, "dtype": args.dtype,
                   "shape": {"batch": B, "seq": T, "hidden": H, "kernel": K, "groups": G,
                             "segments_per_row": args.segments},
                   "run_lengths": runs, "repeats": args.repeats, "load_average_before": load_before,
                   "load_average_at_end": load_after, "max_abs_diff": max_diff, "phases": phases},
                  args.output, smoke=args.smoke)


def main():
    args = cli()
    if args.threads:
        torch.set_num_threads(args.threads)
    _build.set_mode("on")  # a benchmark of the C++ op: fail rather than time the reference twice
    ops_ready()
    if args.segments:
        return main_segments(args)
    dtype = DTYPES[args.dtype]
    B, T, H, K = args.batch_size, args.seq_len, args.hidden, args.kernel
    G = H // args.group_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, H, generator=g).to(dtype).requires_grad_(True)
    w = (torch.randn(H, H // G, K, generator=g) * 0.1).to(dtype).requires_grad_(True)
    b = torch.randn(H, generator=g).to(dtype).requires_grad_(True)
    gy = torch.randn(B, T, H, generator=g).to(dtype)
    paths = {"ours": grouped_conv1d, "conv1d": grouped_conv1d_reference}

    def fwd_bwd(fn):
        def run():
            for t in (x, w, b):
                t.grad = None
            fn(x, w, b, G).backward(gy)
        return run

    def fwd(fn):
        def run():
            with torch.no_grad():
                fn(x, w, b, G)
        return run

    # the two paths agree before anything is timed
    outs = {}
    for name, fn in paths.items():
        fwd_bwd(fn)()
        with torch.no_grad():
            outs[name] = [fn(x, w, b, G).float()] + [t.grad.float() for t in (x, w, b)]
    max_diff = {k: (a - r).abs().max().item() for k, a, r in zip(["output", "grad_input", "grad_weight", "grad_bias"],
                                                                    outs["ours"], outs["conv1d"])}

    cases = {"ours fwd+bwd": fwd_bwd(paths["ours"]), "conv1d fwd+bwd": fwd_bwd(paths["conv1d"]),
             "ours fwd": fwd(paths["ours"]), "conv1d fwd": fwd(paths["conv1d"])}
    load_before = load_average()
    phases = {"default allocator": time_cases(cases, args)}
    if retain_freed_memory():
        phases["retained allocator"] = time_cases(cases, args)
    load_after = load_average()

    threads = torch.get_num_threads()
    print(f"\ngrouped conv1d [B={B}, T={T}, H={H}], K={K}, {G} groups of {H // G}, {args.dtype}, cpu "
          f"({cpu_name()}), {threads} threads, median of {args.repeats}; load {load_before[0]:.2f} -> "
          f"{load_after[0]:.2f}")
    print(f"{'':20s} {'':8s} {'ours ms':>9s} {'conv1d ms':>10s} {'speed-up':>9s}")
    for phase, r in phases.items():
        for kind in ("fwd+bwd", "fwd"):
            print(f"{phase:20s} {kind:8s} {r['results']['ours ' + kind]['median_ms']:9.3f} "
                  f"{r['results']['conv1d ' + kind]['median_ms']:10.3f} {r['speedup'][kind]:8.2f}x")
    print("max |ours - conv1d|: " + ", ".join(f"{k} {v:.2e}" for k, v in max_diff.items()))
    write_results({"benchmark": "grouped_conv", "device": "cpu", "threads": threads, "dtype": args.dtype,
                   "shape": {"batch": B, "seq": T, "hidden": H, "kernel": K, "groups": G},
                   "repeats": args.repeats, "load_average_before": load_before, "load_average_at_end": load_after,
                   "max_abs_diff": max_diff, "phases": phases}, args.output, smoke=args.smoke)


if __name__ == "__main__":
    main()
