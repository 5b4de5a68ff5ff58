"""The warmup study of Kosson, Messmer & Jaggi (NeurIPS 2024, arXiv 2410.23922) on tiny GPT-2, one command.

    python -m groupbert.experiments.warmup_study --out runs/warmup-study          # default grid: ≈ 15 min on 2 idle cores
    python -m groupbert.experiments.warmup_study --out runs/warmup-study --workers 4 --steps 600

A grid over optimizer × warmup length × learning rate. Every cell is an ordinary ``run_pretraining.py``
run of ``configs/gpt2/tiny.yaml`` (trapezoidal schedule, 50% linear cooldown, AdamW λ=0.1, β=(0.9, 0.95))
with ``--set`` overrides, run in ``--workers`` parallel processes of ``--threads`` threads each. The
optimizers are the paper's: AdamW; AdamW without momentum bias correction; Lion; LionA; LionAR; LionAR
with β=0.98, Nesterov momentum and inverse bias correction. Each optimizer's learning rates are its base
rate times ``--lr-multipliers`` (a ×4 ladder over 64×, wide enough that every optimizer's best rate is
inside it and the top reaches instability); the Lion family starts 4× lower with 4× the weight decay, so
ηλ (and with it LionAR's equilibrium angular update) matches AdamW's. Update-size metrics (ℓ2 norm, angular
update, RRC) are logged every ``--update-every`` steps.

Output in ``--out``: ``runs/<cell>/`` (each a full run directory with ``metrics.jsonl``), ``results.json``
(status and final validation loss per cell), ``results.md`` (the table) and ``results.csv``,
``loss_vs_lr.png`` (final loss against learning rate, one line per warmup length, one panel per
optimizer) and ``update_sizes.png`` (update sizes over the first steps without warmup). Interrupt it at any
point and run the same command again: finished cells are kept, unfinished ones resume from their last
checkpoint, cells that diverged stay diverged (a result, not an error) and failed ones are retried.

Deviations from the paper, for a 30-minute CPU budget: a 0.9M-parameter GPT-2 instead of 124M; the
bundled 0.6M-token Wikipedia sample instead of OpenWebText; a byte-level BPE of ``--vocab-size`` tokens
trained on that sample (the study's only use of it; 0 uses GPT-2's own 50257-token BPE, whose output
layer would cost ~10× the rest of the tiny model), and a few hundred steps instead of 5000.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from groupbert.experiments.grid import REPO, RUN_CWD, finish, read_metrics, save_figure
from groupbert.experiments.grid import config_path as _find_config
from groupbert.training.run_log import read_end

logger = logging.getLogger("groupbert.experiments.warmup_study")

ADAM = {"optimizer.weight_decay": 0.1, "optimizer.beta1": 0.9, "optimizer.beta2": 0.95, "optimizer.eps": 1e-8}
# Lion family: the optimizer's own betas (0.9, 0.99) or its preset's; ηλ kept equal to AdamW's.
LION = {"optimizer.weight_decay": 0.4, "optimizer.beta1": "null", "optimizer.beta2": "null", "optimizer.eps": "null"}

# id -> (label, optimizer.name, overrides, base learning rate)
OPTIMIZERS: dict[str, tuple[str, str, dict, float]] = {
    "adamw": ("AdamW", "adamw", ADAM, 1e-3),
    "adamw_nobc": ("AdamW, no momentum bias corr.", "adamw_nobc", ADAM, 1e-3),
    "lion": ("Lion", "lion", LION, 2.5e-4),
    "lion_a": ("LionA", "lion_a", LION, 2.5e-4),
    "lion_ar": ("LionAR", "lion_ar", LION, 2.5e-4),
    "lion_ar_mom": ("LionAR, β=0.98 + Nesterov + inv. BC", "lion_ar_mom", LION, 2.5e-4),
}


@dataclass
class Cell:
    optimizer: str
    warmup: float
    lr: float
    status: str = "pending"          # pending | done | diverged | failed
    final_loss: float | None = None  # validation loss at the last step
    best_loss: float | None = None   # lowest validation loss seen
    seconds: float | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.optimizer}-w{self.warmup:g}-lr{self.lr:.3g}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--out", default="runs/warmup-study", help="study directory (resumes if it exists)")
    p.add_argument("--config", default="configs/gpt2/tiny.yaml", help="relative to the working directory or the repo")
    p.add_argument("--optimizers", default=",".join(OPTIMIZERS), help=f"subset of {','.join(OPTIMIZERS)}")
    p.add_argument("--warmups", default="0,0.05,0.2", help="warmup lengths as fractions of training")
    p.add_argument("--lr-multipliers", default="0.25,1,4,16", help="times each optimizer's base lr")
    p.add_argument("--steps", type=int, default=240)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--vocab-size", type=int, default=2048, help="BPE trained on the corpus; 0: GPT-2's own")
    p.add_argument("--update-every", type=int, default=4, help="update-size metrics every N steps")
    p.add_argument("--workers", type=int, default=2, help="runs in parallel")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra overrides for every run")
    p.add_argument("--report-only", action="store_true", help="rewrite the table and plots from finished runs")
    return p.parse_args(argv)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def build_grid(args) -> list[Cell]:
    unknown = [o for o in args.optimizers.split(",") if o not in OPTIMIZERS]
    if unknown:
        raise SystemExit(f"error: unknown optimizer(s) {unknown}; choose from {', '.join(OPTIMIZERS)}")
    warmups = _floats(args.warmups)
    if any(not 0 <= w < 1 for w in warmups):
        raise SystemExit(f"error: --warmups are fractions in [0, 1), got {warmups}")
    return [Cell(o, w, OPTIMIZERS[o][3] * m) for o in args.optimizers.split(",") for w in warmups
            for m in _floats(args.lr_multipliers)]


def _config_path(args) -> Path:
    """``--config`` as given if it exists, else relative to the repo, else the installed wheel's copy."""
    return _find_config(args.config)


def prepare_vocab(args, out: Path) -> list[str]:
    """The study's BPE (trained once, kept in the study directory) as run overrides."""
    if args.vocab_size == 0:
        return []
    bpe_dir = out / f"bpe-{args.vocab_size}"
    encoder = bpe_dir / "encoder.json"
    if not (encoder.is_file() and (bpe_dir / "vocab.bpe").is_file()):
        sys.path.insert(0, str(REPO))
        from groupbert.config import load_config
        from groupbert.data.causal_lm import train_bpe
        from groupbert.data.corpus import load_corpus

        data = load_config(_config_path(args)).data
        train_bpe(load_corpus(data.corpus, text_field=data.text_field, max_documents=data.max_documents),
                  args.vocab_size, bpe_dir)
    return [f"data.vocab_file={encoder.resolve()}", f"model.vocab_size={args.vocab_size}"]


def run_overrides(cell: Cell, args, vocab_sets: list[str]) -> list[str]:
    _, opt_name, opt_sets, _ = OPTIMIZERS[cell.optimizer]
    sets = [f"optimizer.name={opt_name}", f"optimizer.lr={cell.lr!r}", f"schedule.warmup_fraction={cell.warmup!r}",
            "schedule.name=trapezoidal", "schedule.cooldown_fraction=0.5",
            f"train.max_steps={args.steps}", f"train.micro_batch_size={args.batch_size}",
            "train.gradient_accumulation=1", f"data.seq_len={args.seq_len}", f"model.max_positions={args.seq_len}",
            f"train.eval_every={max(args.steps // 4, 1)}", f"train.checkpoint_every={max(args.steps // 4, 1)}",
            "train.keep_checkpoints=1", f"logging.log_every={max(args.steps // 24, 1)}",
            f"logging.update_metrics_every={args.update_every}", "logging.progress_bar=false",
            f"runtime.threads={args.threads}"]
    sets += [f"{k}={v}" for k, v in opt_sets.items()] + vocab_sets + list(args.set)
    return sets


def _finished(run_dir: Path, steps: int) -> dict | None:
    evals = [r for r in read_metrics(run_dir) if r.get("kind") == "eval"]
    if evals and evals[-1]["step"] >= steps:
        return {"final_loss": evals[-1]["eval_loss"], "best_loss": min(r["eval_loss"] for r in evals)}
    return None


def run_cell(cell: Cell, args, out: Path, vocab_sets: list[str]) -> Cell:
    run_dir = out / "runs" / cell.name
    done = _finished(run_dir, args.steps)
    if done:
        cell.status, cell.error = "done", None
        cell.final_loss, cell.best_loss = done["final_loss"], done["best_loss"]
        return cell
    cmd = [sys.executable, str(REPO / "run_pretraining.py")]
    if (run_dir / "config.yaml").exists():  # continue it (or start it again if it saved no checkpoint)
        cmd += ["--resume", str(run_dir.resolve())]  # the run's own config.yaml is the one to continue
    else:
        cmd += ["--config", str(_config_path(args)), "--output-dir", str(run_dir.resolve())]
        for s in run_overrides(cell, args, vocab_sets):
            cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env.setdefault("WANDB_MODE", "disabled")  # 70 runs: log to W&B only when asked (WANDB_MODE=offline)
    t0 = time.perf_counter()
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out / "runs" / f"{cell.name}.log", "a") as log:
        proc = subprocess.run(cmd, cwd=RUN_CWD, env=env, stdout=log, stderr=subprocess.STDOUT)
    cell.seconds = (cell.seconds or 0.0) + time.perf_counter() - t0
    done = _finished(run_dir, args.steps)
    if proc.returncode == 0 and done:
        cell.status, cell.error = "done", None
        cell.final_loss, cell.best_loss = done["final_loss"], done["best_loss"]
    else:
        end = read_end(run_dir)   # how the run ended, from its own end record
        tail = (out / "runs" / f"{cell.name}.log").read_text(errors="replace").strip().splitlines()[-3:]
        cell.status = "diverged" if end is not None and end["status"] == "diverged" else "failed"
        cell.error = ((end or {}).get("error") or " | ".join(tail))[-400:]
        evals = [r for r in read_metrics(run_dir) if r.get("kind") == "eval"]
        cell.best_loss = min((r["eval_loss"] for r in evals), default=None)
    return cell


def _save_results(out: Path, cells: list[Cell], args) -> None:
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps({"args": vars(args), "cells": [asdict(c) for c in cells]}, indent=2))
    os.replace(tmp, out / "results.json")


def _load_previous(out: Path) -> dict[str, dict]:
    try:
        return {Cell(**{k: c[k] for k in ("optimizer", "warmup", "lr")}).name: c
                for c in json.loads((out / "results.json").read_text())["cells"]}
    except (OSError, ValueError, KeyError):
        return {}


# ---- report --------------------------------------------------------------------------------------

def write_table(out: Path, cells: list[Cell], args) -> str:
    warmups = sorted({c.warmup for c in cells})
    mults = _floats(args.lr_multipliers)
    lines = [f"Final validation loss of tiny GPT-2 after {args.steps} steps ({args.batch_size} × {args.seq_len} tokens "
             f"per step), trapezoidal schedule. Columns: lr = base lr × multiplier; **bold**: best lr of the row; "
             "'div.' = diverged (non-finite loss).", "",
             "| optimizer | base lr | warmup | " + " | ".join(f"×{m:g}" for m in mults) + " | best |",
             "|---|---|---|" + "---|" * (len(mults) + 1)]
    rows = []
    for opt in dict.fromkeys(c.optimizer for c in cells):
        label, _, _, base = OPTIMIZERS[opt]
        for w in warmups:
            row = [c for c in cells if c.optimizer == opt and c.warmup == w]
            losses = [c.final_loss for c in row if c.status == "done" and c.final_loss is not None]
            best = min(losses) if losses else None
            out_cells = []
            for c in row:
                if c.status == "done":
                    text = f"{c.final_loss:.3f}"
                    out_cells.append(f"**{text}**" if c.final_loss == best else text)
                else:
                    out_cells.append({"diverged": "div.", "failed": "failed", "pending": "…"}[c.status])
            best_text = f"{best:.3f}" if best is not None else "–"
            lines.append(f"| {label} | {base:g} | {w:.0%} | " + " | ".join(out_cells) + f" | {best_text} |")
            rows.append((opt, w, best))
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(table)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["optimizer", "warmup", "lr", "status", "final_loss", "best_loss", "seconds"])
        for c in cells:
            writer.writerow([c.optimizer, c.warmup, c.lr, c.status, c.final_loss, c.best_loss, c.seconds])
    return table


def write_plots(out: Path, cells: list[Cell], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    opts = list(dict.fromkeys(c.optimizer for c in cells))
    warmups = sorted({c.warmup for c in cells})
    done = [c for c in cells if c.status == "done"]
    finite = [c.final_loss for c in done]
    cols = min(3, len(opts))
    rows = math.ceil(len(opts) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True)
    for ax, opt in zip(axes.flat, opts):
        for w in warmups:
            row = sorted((c for c in cells if c.optimizer == opt and c.warmup == w), key=lambda c: c.lr)
            xs = [c.lr for c in row if c.status == "done"]
            ax.plot(xs, [c.final_loss for c in row if c.status == "done"], marker="o", label=f"warmup {w:.0%}")
            div = [c.lr for c in row if c.status == "diverged"]
            if div and finite:
                ax.scatter(div, [max(finite)] * len(div), marker="x", color="red", zorder=3)
        ax.set_xscale("log")
        ax.set_title(OPTIMIZERS[opt][0], fontsize=9)
        ax.set_xlabel("peak learning rate")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("final validation loss")
    for ax in list(axes.flat)[len(opts):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"Tiny GPT-2, {args.steps} steps: final loss vs learning rate (red x: diverged)", fontsize=10)
    save_figure(fig, out / "loss_vs_lr.png")

    # Update sizes over the first steps without warmup, at each optimizer's base lr (multiplier 1 when present).
    metrics = ("update_norm", "update_angle_mean", "update_rrc_mean")
    titles = ("ℓ2 update norm", "mean angular update (rad)", "mean relative representation change")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    w0 = min(warmups)
    for opt in opts:
        candidates = [c for c in cells if c.optimizer == opt and c.warmup == w0]
        if not candidates:
            continue
        base = OPTIMIZERS[opt][3]
        cell = min(candidates, key=lambda c: abs(math.log(c.lr / base)))
        records = [r for r in read_metrics(out / "runs" / cell.name) if r.get("kind") == "update"]
        for ax, key in zip(axes, metrics):
            pts = [(r["step"], r[key]) for r in records if key in r]
            if pts:
                ax.plot(*zip(*pts), label=f"{OPTIMIZERS[opt][0]} (lr {cell.lr:.2g})")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Update sizes without warmup (warmup {w0:.0%}), base learning rates", fontsize=10)
    save_figure(fig, out / "update_sizes.png")


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = build_grid(args)
    previous = _load_previous(out)
    for c in cells:  # keep what earlier invocations learned (diverged stays diverged; failed is retried)
        prev = previous.get(c.name)
        if prev and prev.get("status") in ("done", "diverged"):
            for k in ("status", "final_loss", "best_loss", "seconds", "error"):
                setattr(c, k, prev.get(k))
    if not args.report_only:
        vocab_sets = prepare_vocab(args, out)
        todo = [c for c in cells if c.status not in ("done", "diverged")]
        logger.info("%d cells, %d to run, %d workers × %d threads", len(cells), len(todo), args.workers, args.threads)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.workers) as pool, tqdm(total=len(cells), initial=len(cells) - len(todo),
                                                                         desc="warmup study", unit="run") as bar:
            futures = {pool.submit(run_cell, c, args, out, vocab_sets): c for c in todo}
            for fut in as_completed(futures):
                cell = fut.result()
                _save_results(out, cells, args)
                bar.update(1)
                bar.set_postfix_str(f"{cell.name}: {cell.status}"
                                    + (f" {cell.final_loss:.3f}" if cell.final_loss is not None else ""))
        logger.info("grid finished in %.1f min", (time.perf_counter() - t0) / 60)
    _save_results(out, cells, args)
    print(write_table(out, cells, args))
    write_plots(out, cells, args)
    return finish(out, cells, "results.md, results.csv, results.json, loss_vs_lr.png, update_sizes.png")


if __name__ == "__main__":
    sys.exit(main())
