"""LAMB against AdamW as the global batch grows, at the same number of samples seen (the claims study, part 2).

    python -m groupbert.experiments.large_batch --out runs/large-batch          # default grid: 24 runs, ≈ 22 min on 2 cores
    python -m groupbert.experiments.large_batch --out runs/lb --samples 2048 --batch-multipliers 1,8 --seeds 1

The claim (You et al. 2020, "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
arXiv:1904.00962, table 1 and section 5): with LAMB's layer-wise trust ratio BERT trains at batches up to
64k sequences with the same accuracy, where Adam(W) stops scaling; Graphcore moved GroupBERT from Adam to
LAMB at ≈65k-sequence batches for this reason.

The grid: one model (``--model``, ``--size``: the time-to-quality study's shapes), global batches of
``--batch-multipliers`` × ``--base-batch`` sequences (the README demo's 32) made by gradient accumulation of
micro-batches of at most ``--micro-batch-size``, every run seeing ``--samples`` sequences (so a batch k
times larger takes k times fewer optimizer steps). Each optimizer's learning rate at batch k × base is its
rate at the base batch times sqrt(k), the square-root rule (Malladi et al. 2022, "On the SDEs and Scaling
Rules for Adaptive Gradient Algorithms", arXiv:2205.10287, for Adam; You et al. 2020, section 4, for LAMB),
times each of ``--lr-multipliers`` (the grid around the rule). Base rates: AdamW 2e-3 (the demo's), LAMB
1.6e-2 (the best of 1e-3 / 4e-3 / 1.6e-2 / 6.4e-2 at the base batch here). Both: betas (0.9, 0.999), eps
1e-6, weight decay 0.01, LAMB with bias correction (Graphcore's recipe), square-root warmup over 10% of
the steps then linear decay (``configs/groupbert/tiny_phase1.yaml``). Seed 0 runs the whole grid; the other
``--seeds`` rerun each (optimizer, batch) at its best multiplier.

Output in ``--out``: ``runs/``, ``results.json``, ``results.csv`` (one row per evaluation),
``results.md`` (the grid, the degradation from the base batch, the verdict), ``loss_vs_samples.png`` and
``loss_vs_steps.png`` (best runs per batch and optimizer) and ``loss_vs_lr.png``. Interrupt it and run the
same command again: finished runs are kept and unfinished ones continue.
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
from pathlib import Path

from groupbert.experiments import grid
from groupbert.experiments.grid import Run
from groupbert.experiments.time_to_quality import SIZES

MODULE = "groupbert.experiments.large_batch"
logger = logging.getLogger("groupbert.experiments.large_batch")

ADAM_LIKE = ["optimizer.beta1=0.9", "optimizer.beta2=0.999", "optimizer.eps=1e-6", "optimizer.weight_decay=0.01"]
#: id -> (label, overrides, learning rate at the base batch)
OPTIMIZERS = {
    "adamw": ("AdamW", ["optimizer.name=adamw", *ADAM_LIKE], 2e-3),
    "lamb": ("LAMB", ["optimizer.name=lamb", "optimizer.bias_correction=true", *ADAM_LIKE], 1.6e-2),
}
COLORS = {"adamw": "tab:blue", "lamb": "tab:red"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--out", default="runs/large-batch", help="study directory (resumes if it exists)")
    p.add_argument("--config", default="configs/groupbert/tiny_phase1.yaml", help="base recipe of every run")
    p.add_argument("--corpus", default="wikipedia", help="anything data.corpus takes (default: the bundled sample)")
    p.add_argument("--model", default="groupbert", choices=("groupbert", "bert"))
    p.add_argument("--size", default="tiny", choices=tuple(SIZES))
    p.add_argument("--optimizers", default="adamw,lamb", help=f"subset of {','.join(OPTIMIZERS)}")
    p.add_argument("--base-batch", type=int, default=32, help="the demo's global batch (sequences)")
    p.add_argument("--batch-multipliers", default="1,8,32")
    p.add_argument("--micro-batch-size", type=int, default=64, help="largest micro-batch; the rest is accumulation")
    p.add_argument("--samples", type=int, default=16384, help="sequences every run sees")
    p.add_argument("--lr-multipliers", default="0.25,1,4", help="times the square-root-scaled rate")
    p.add_argument("--seeds", type=int, default=2, help="seeds at each (optimizer, batch)'s best rate")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--max-predictions", type=int, default=10)
    p.add_argument("--vocab-size", type=int, default=8192, help="WordPiece trained on the corpus")
    p.add_argument("--evals", type=int, default=4, help="evaluations per run (plus step 0)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra overrides for every run")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the finished runs")
    args = p.parse_args(argv)
    bad = [o for o in args.optimizers.split(",") if o not in OPTIMIZERS]
    if bad:
        p.error(f"--optimizers: unknown {bad}; choose from {','.join(OPTIMIZERS)}")
    try:
        args.ks = [int(k) for k in args.batch_multipliers.split(",") if k]
        args.mults = [float(m) for m in args.lr_multipliers.split(",") if m]
    except ValueError as e:
        p.error(f"--batch-multipliers / --lr-multipliers: {e}")
    if any(k < 1 for k in args.ks) or any(m <= 0 for m in args.mults):
        p.error("batch multipliers must be >= 1 and lr multipliers > 0")
    for k in args.ks:
        batch = k * args.base_batch
        if args.samples % batch:
            p.error(f"--samples {args.samples} is not a multiple of the batch {batch} (= {k} x {args.base_batch})")
        if batch > args.micro_batch_size and batch % args.micro_batch_size:
            p.error(f"batch {batch} is not a multiple of --micro-batch-size {args.micro_batch_size}")
    if args.seeds < 1 or args.evals < 1 or args.workers < 1:
        p.error("--seeds, --evals and --workers must be at least 1")
    return args


def learning_rate(opt: str, k: int, mult: float) -> float:
    """The base batch's rate × sqrt(k) (the square-root rule) × the grid multiplier."""
    return OPTIMIZERS[opt][2] * math.sqrt(k) * mult


def make_run(opt: str, k: int, mult: float, seed: int, args, data_sets: list[str]) -> Run:
    h, layers, heads, inter = SIZES[args.size]
    batch = k * args.base_batch
    micro = min(batch, args.micro_batch_size)
    steps = args.samples // batch
    every = max(1, steps // args.evals)
    lr = learning_rate(opt, k, mult)
    sets = [f"model.type={args.model}", f"model.hidden_size={h}", f"model.num_layers={layers}",
            f"model.num_heads={heads}", f"model.intermediate_size={inter}", *data_sets, *OPTIMIZERS[opt][1],
            f"optimizer.lr={lr!r}", f"train.max_steps={steps}", f"train.micro_batch_size={micro}",
            f"train.gradient_accumulation={batch // micro}", f"train.seed={seed}",
            f"train.eval_every={every}", f"train.checkpoint_every={every}", "train.keep_checkpoints=1",
            f"logging.log_every={max(1, every // 4)}", *args.set]
    return Run(f"{opt}-b{batch}-x{mult:g}-s{seed}", sets, steps,
               info={"optimizer": opt, "k": k, "batch": batch, "mult": mult, "lr": lr, "seed": seed,
                     "micro": micro})


def _curve(run: Run, out: Path, args):
    return grid.curve(out / "runs" / run.name, run.info["batch"], args.seq_len) if run.status == "done" else None


def best_mult(runs, curves, opt, k):
    done = [r for r in runs if r.info["optimizer"] == opt and r.info["k"] == k and r.info["seed"] == 0
            and r.name in curves]
    return min(done, key=lambda r: curves[r.name].final).info["mult"] if done else None


def analyse(runs, curves, args) -> dict:
    table = {}
    for opt in args.optimizers.split(","):
        for k in args.ks:
            mult = best_mult(runs, curves, opt, k)
            chosen = [r for r in runs if r.info["optimizer"] == opt and r.info["k"] == k and r.info["mult"] == mult
                      and r.name in curves]
            table[f"{opt}@{k}"] = {
                "optimizer": opt, "k": k, "batch": k * args.base_batch, "steps": args.samples // (k * args.base_batch),
                "best_mult": mult, "best_lr": learning_rate(opt, k, mult) if mult is not None else None,
                "grid": {f"{r.info['mult']:g}": (curves[r.name].final if r.name in curves else r.status)
                         for r in runs if r.info["optimizer"] == opt and r.info["k"] == k and r.info["seed"] == 0},
                "final_loss": [curves[r.name].final for r in chosen],
                "epochs": [curves[r.name].epochs for r in chosen],
            }
    for e in table.values():   # degradation: best loss at k over best loss at the base batch, per seed mean
        base = table.get(f"{e['optimizer']}@{args.ks[0]}")
        if base and base["final_loss"] and e["final_loss"]:
            e["degradation"] = _mean(e["final_loss"]) - _mean(base["final_loss"])
    return table


def _mean(xs):
    return sum(xs) / len(xs)


def write_report(out: Path, runs, curves, table, args, totals, provenance: list[str]) -> str:
    rows = totals["train"]["rows"]
    lines = [
        "# LAMB against AdamW at large batch",
        "",
        f"{SIZES[args.size]} {args.model} (hidden, layers, heads, intermediate), sequences of {args.seq_len} "
        f"tokens with {args.max_predictions} masked, every run {args.samples:,} sequences "
        f"({args.samples / rows:.2f} epochs of the {rows:,} training sequences of `{args.corpus}`). Final "
        f"validation MLM loss on {totals['validation']['rows']} held-out sequences. Learning rate = base x "
        "sqrt(k) x multiplier; seed 0 over the grid, mean (min-max, n) over seeds at the best multiplier; "
        "'diverged' = a non-finite loss stopped the run.",
        "",
        "| optimizer | batch (k x base) | steps | lr multipliers: final loss (seed 0) | best lr | final loss, best lr |"
        " loss increase over k=1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in table.values():
        grid_text = ", ".join(f"x{m}: {v:.3f}" if isinstance(v, float) else f"x{m}: {v}" for m, v in e["grid"].items())
        best = f"{e['best_lr']:.3g}" if e["best_lr"] is not None else "-"
        deg = f"{e['degradation']:+.3f}" if "degradation" in e else "-"
        lines.append(f"| {OPTIMIZERS[e['optimizer']][0]} | {e['batch']} ({e['k']}x) | {e['steps']} | {grid_text} | "
                     f"{best} | {grid.spread(e['final_loss'])} | {deg} |")
    lines += [*grid.unfinished(runs), "", *provenance]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "optimizer", "batch", "lr", "lr_multiplier", "seed", "step", "sequences", "epochs",
                    "eval_mlm_loss", "eval_mlm_acc", "status"])
        for r in runs:
            c = curves.get(r.name)
            if c is None:
                w.writerow([r.name, r.info["optimizer"], r.info["batch"], r.info["lr"], r.info["mult"],
                            r.info["seed"], "", "", "", "", "", r.status])
                continue
            for i in range(len(c.steps)):
                w.writerow([r.name, r.info["optimizer"], r.info["batch"], r.info["lr"], r.info["mult"], r.info["seed"],
                            c.steps[i], c.sequences[i], c.sequences[i] / rows, c.loss[i], c.acc[i], r.status])
    return text


def write_plots(out: Path, runs, curves, table, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = dict(zip(args.ks, ("-", "--", ":", "-.")))
    for axis, xlabel, fname, log in (("sequences", "sequences seen", "loss_vs_samples.png", False),
                                     ("steps", "optimizer steps", "loss_vs_steps.png", True)):
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for e in table.values():
            for r in runs:
                if (r.info["optimizer"], r.info["k"], r.info["mult"]) != (e["optimizer"], e["k"], e["best_mult"]):
                    continue
                c = curves.get(r.name)
                if c is None:
                    continue
                xs = getattr(c, axis)
                label = (f"{OPTIMIZERS[e['optimizer']][0]}, batch {e['batch']}" if r.info["seed"] == 0 else None)
                ax.plot(xs[1:] if log else xs, c.loss[1:] if log else c.loss, color=COLORS[e["optimizer"]],
                        ls=styles.get(e["k"], "-"), marker="o", ms=3, alpha=0.9 if r.info["seed"] == 0 else 0.5,
                        label=label)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation MLM loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title("Each optimizer and batch at its best learning rate (every seed)", fontsize=9)
        grid.save_figure(fig, out / fname)
    fig, axes = plt.subplots(1, len(args.ks), figsize=(4 * len(args.ks), 3.4), squeeze=False, sharey=True)
    for ax, k in zip(axes[0], args.ks):
        for opt in args.optimizers.split(","):
            pts = sorted((r.info["lr"], curves[r.name].final) for r in runs
                         if r.info["optimizer"] == opt and r.info["k"] == k and r.info["seed"] == 0 and r.name in curves)
            if pts:
                ax.plot(*zip(*pts), marker="o", color=COLORS[opt], label=OPTIMIZERS[opt][0])
        ax.set_xscale("log")
        ax.set_title(f"batch {k * args.base_batch} ({k}x)", fontsize=9)
        ax.set_xlabel("peak learning rate")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("final validation MLM loss")
    axes[0][0].legend(fontsize=8)
    grid.save_figure(fig, out / "loss_vs_lr.png")


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = grid.config_path(args.config)
    data_sets, totals = grid.prepare_masked_lm(out, config, args.corpus, args.vocab_size, args.seq_len,
                                               args.max_predictions)
    earlier = grid.read_json(out / "results.json")
    info = earlier.get("machine") or grid.machine()   # the machine and load when the study first started
    opts = args.optimizers.split(",")
    stage1 = [make_run(o, k, m, 0, args, data_sets) for o in opts for k in args.ks for m in args.mults]

    def stage2_of(runs: list[Run]) -> list[Run]:
        """The other seeds at each (optimizer, batch)'s best multiplier."""
        curves = {r.name: c for r in runs if (c := _curve(r, out, args)) is not None}
        return [make_run(o, k, best, seed, args, data_sets) for o in opts for k in args.ks
                if (best := best_mult(runs, curves, o, k)) is not None for seed in range(1, args.seeds)]

    runs = grid.run_stages(out, config, args, info, stage1, stage2_of, "large batch")
    curves = {r.name: c for r in runs if (c := _curve(r, out, args)) is not None}
    table = analyse(runs, curves, args)
    grid.write_json(out / "results.json", {"args": vars(args), "machine": info, "runs": [vars(r) for r in runs],
                                           "curves": {k: vars(c) for k, c in curves.items()},
                                           "table": table, "data": totals})
    provenance = grid.provenance(MODULE, argv, runs, args.workers, info)
    print(write_report(out, runs, curves, table, args, totals, provenance))
    write_plots(out, runs, curves, table, args)
    return grid.finish(out, runs, "results.md, results.csv, results.json, loss_vs_samples.png, loss_vs_steps.png, "
                       "loss_vs_lr.png")


if __name__ == "__main__":
    sys.exit(main())
