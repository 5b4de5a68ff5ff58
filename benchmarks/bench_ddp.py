"""DDP scaling on this machine: ``run_pretraining.py`` on 1 process vs ``torchrun`` with 2 gloo processes.

Same config and global batch in every case (tiny GroupBERT, H128 L2, seq 128, 4 micro-batches of 16 per
step); the figure is the training samples/s the run logs itself (``metrics.jsonl``), median over the
logging windows after the first (which holds start-up and the first steps). Cases, with the cores split
so no case oversubscribes them: 1 process x 1 thread, 1 process x N threads, N processes x 1 thread.
On a 2-core machine the 2-process case can at best match 1 process using both cores through intra-op
threads; what DDP adds is the gradient all-reduce and the per-process Python overhead.

    .venv/bin/python benchmarks/bench_ddp.py --steps 40

Prints the table and writes JSON to ``benchmarks/results/ddp.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--config", default=str(ROOT / "configs" / "groupbert" / "tiny_phase1.yaml"))
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "ddp.json"))
    return p.parse_args()


def run_case(args, nproc: int, threads: int, workdir: Path, cache: Path) -> dict:
    out = workdir / f"p{nproc}_t{threads}"
    sets = [f"train.max_steps={args.steps}", f"logging.log_every={args.log_every}", "train.micro_batch_size=16",
            "train.gradient_accumulation=4", "train.eval_at_start=false", "train.eval_batches=1",
            "train.eval_every=0", "train.checkpoint_every=0", f"runtime.threads={threads}", "runtime.backend=cpu",
            "logging.wandb.mode=disabled", f"data.cache_dir={cache}"]
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
    rates = [r["samples_per_s"] for r in train[1:]]
    return {"processes": nproc, "threads_per_process": threads, "samples_per_s": statistics.median(rates),
            "windows": len(rates), "final_loss": train[-1]["loss"]}


def main():
    args = parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = ROOT / ".cache" / "datasets"
        run_case(argparse.Namespace(**{**vars(args), "steps": 2, "log_every": 1}), 1, 1, tmp / "warm", cache)
        cases = [run_case(args, 1, 1, tmp, cache), run_case(args, 1, args.nproc, tmp, cache),
                 run_case(args, args.nproc, 1, tmp, cache)]
    base = cases[0]["samples_per_s"]
    print(f"{'processes':>9} {'threads':>7} {'samples/s':>10} {'vs 1x1':>7} {'final loss':>10}")
    for c in cases:
        c["speedup_vs_1x1"] = c["samples_per_s"] / base
        print(f"{c['processes']:>9} {c['threads_per_process']:>7} {c['samples_per_s']:>10.1f} "
              f"{c['speedup_vs_1x1']:>6.2f}x {c['final_loss']:>10.4f}")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"benchmark": "ddp", "config": os.path.relpath(args.config, ROOT), "steps": args.steps,
              "global_batch": 64, "seq_len": 128, "cpu_count": cores, "torch": torch.__version__,
              "python": platform.python_version(), "git_commit": commit, "backend": "gloo", "cases": cases}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
