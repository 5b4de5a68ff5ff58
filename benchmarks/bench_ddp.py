"""DDP scaling on this machine: ``run_pretraining.py`` on 1 process vs ``torchrun`` with 2 gloo processes.

Same config and global batch in every case (tiny GroupBERT, H128 L2, seq 128, 4 micro-batches of 16 per
step); the figure is the training sequences/s the run logs itself (``seq_per_s`` in ``metrics.jsonl``),
median over the logging windows after the first (which holds start-up and the first steps). Cases, with the cores split
so no case oversubscribes them: 1 process x 1 thread, 1 process x N threads, N processes x 1 thread.
On a 2-core machine the 2-process case can at best match 1 process using both cores through intra-op
threads; what DDP adds is the gradient all-reduce and the per-process Python overhead.

    .venv/bin/python benchmarks/bench_ddp.py --steps 40

Prints the table and writes JSON to ``benchmarks/results/ddp.json``. ``--smoke``: the torchrun case
only, 2 steps of 2 micro-batches of 2 on the first 4 documents of the sample (prepared into a
temporary cache), no warm-up run.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from common import RESULTS, parse_args, write_results  # noqa: E402  (benchmarks/common.py, beside this script)

CASES = ("1x1", "1xN", "Nx1")  # processes x threads, N = --nproc


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--config", default=str(ROOT / "configs" / "groupbert" / "tiny_phase1.yaml"))
    p.add_argument("--cases", default=",".join(CASES), help=f"any of {', '.join(CASES)}")
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--gradient-accumulation", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1, help="untimed 2-step runs first (data cache, page cache)")
    p.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "datasets",
                   help="prepared-data cache (--smoke: a temporary one)")
    p.add_argument("--max-documents", type=int, default=None, help="first N documents of the sample (default: all)")
    return parse_args(p, argv, default_output=RESULTS / "ddp.json",
                      smoke=dict(steps=2, log_every=1, cases="Nx1", micro_batch=2, gradient_accumulation=2,
                                 warmup=0, cache_dir=None, max_documents=4))


def run_case(args, nproc: int, threads: int, workdir: Path, cache: Path) -> dict:
    out = workdir / f"p{nproc}_t{threads}"
    sets = [f"train.max_steps={args.steps}", f"logging.log_every={args.log_every}",
            f"train.micro_batch_size={args.micro_batch}", f"train.gradient_accumulation={args.gradient_accumulation}",
            "train.eval_at_start=false", "train.eval_batches=1",
            "train.eval_every=0", "train.checkpoint_every=0", f"runtime.threads={threads}", "runtime.backend=cpu",
            "logging.wandb.mode=disabled", f"data.cache_dir={cache}"]
    if args.max_documents:
        sets.append(f"data.max_documents={args.max_documents}")
    cli = [str(ROOT / "run_pretraining.py"), "--config", args.config, "--output-dir", str(out), "--quiet",
           *[a for s in sets for a in ("--set", s)]]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    done = subprocess.run(launcher + cli, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{nproc} process(es) failed:\n{done.stderr[-3000:]}")
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["kind"] == "train"]
    rates = [r["seq_per_s"] for r in train[1:]]
    return {"processes": nproc, "threads_per_process": threads, "samples_per_s": statistics.median(rates),
            "windows": len(rates), "final_loss": train[-1]["loss"]}


def main():
    args = cli()
    cores = os.cpu_count() or 1
    shapes = {"1x1": (1, 1), "1xN": (1, args.nproc), "Nx1": (args.nproc, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = args.cache_dir or tmp / "cache"
        for i in range(args.warmup):
            run_case(argparse.Namespace(**{**vars(args), "steps": 2, "log_every": 1}), 1, 1, tmp / f"warm{i}", cache)
        cases = [run_case(args, *shapes[c], tmp, cache) for c in args.cases.split(",")]
    base = next((c["samples_per_s"] for c in cases if c["processes"] == c["threads_per_process"] == 1), None)
    print(f"{'processes':>9} {'threads':>7} {'samples/s':>10} {'vs 1x1':>7} {'final loss':>10}")
    for c in cases:
        c["speedup_vs_1x1"] = c["samples_per_s"] / base if base else None
        vs = f"{c['speedup_vs_1x1']:>6.2f}x" if base else f"{'-':>7}"
        print(f"{c['processes']:>9} {c['threads_per_process']:>7} {c['samples_per_s']:>10.1f} {vs} "
              f"{c['final_loss']:>10.4f}")
    write_results({"benchmark": "ddp", "config": os.path.relpath(args.config, ROOT), "steps": args.steps,
                   "global_batch": args.micro_batch * args.gradient_accumulation, "seq_len": 128,
                   # the runs are subprocesses: torch's version without importing it here
                   "cpu_count": cores, "torch": importlib.metadata.version("torch"), "backend": "gloo",
                   "max_documents": args.max_documents, "cases": cases}, args.output, smoke=args.smoke)


if __name__ == "__main__":
    main()
