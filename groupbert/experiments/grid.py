"""What the claims studies share: their data, and a grid of ordinary ``run_pretraining.py`` runs executed
as subprocesses in parallel, resumably, with each run's records read back as curves.

A study directory holds ``vocab-<V>.txt`` (a WordPiece vocabulary trained on the corpus), ``data-<T>/``
(the corpus prepared once by ``python -m groupbert.data.prepare``, so that parallel runs never prepare it
twice), ``runs/<name>/`` (full run directories) and ``runs/<name>.log``. Running a study again keeps the
finished runs, continues unfinished ones from their last checkpoint (``--resume``), keeps diverged ones (a
result) and retries failed ones.
"""
from __future__ import annotations

import bisect
import json
import logging
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from tqdm.auto import tqdm

from groupbert.config import find_config
from groupbert.training.run_log import read_end

REPO = Path(__file__).resolve().parents[2]
RUN_CWD = REPO if (REPO / "pyproject.toml").is_file() else None   # an installed wheel: the working directory

logger = logging.getLogger(__name__)

#: The preparation settings every study run shares (the run's --set must equal the manifest's)
PREP_KEYS = ("data.packing=false", "data.dupe_factor=1", "data.masking=dynamic")


@dataclass
class Run:
    """One cell of a grid: a name, its ``--set`` overrides and the step its last evaluation is at."""
    name: str
    sets: list[str]
    steps: int
    info: dict = field(default_factory=dict)   # the study's own labels (model, size, lr, seed, ...)
    status: str = "pending"                    # pending | done | diverged | failed
    seconds: Optional[float] = None            # wall time of the subprocesses, all attempts
    error: Optional[str] = None


def machine() -> dict:
    """The CPU model, its cores and the load when a study starts (timings compare only on one machine)."""
    from groupbert.training.hardware import cpu_features

    return {"cpu": cpu_features().model_name or "unknown", "cores": os.cpu_count(),
            "load_1min": round(os.getloadavg()[0], 2)}


def provenance(module: str, argv: Optional[list[str]], runs: list[Run], workers: int, info: dict) -> list[str]:
    """Report lines: the command, the machine and the compute the runs took."""
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--report-only"]  # the runs' command
    seconds = sum(r.seconds or 0.0 for r in runs)
    return [f"Command: `python -m {module} {' '.join(argv)}`",
            f"Machine: {info.get('cpu', 'unknown')}, {info.get('cores')} cores, load {info.get('load_1min')} "
            "at the start.",
            f"Compute: {len(runs)} runs, {seconds / 60:.1f} min of run time ({seconds / 60 / workers:.1f} min "
            f"wall with {workers} parallel workers, data preparation and reports excluded)."]


def config_path(config: str) -> Path:
    """``config`` as given if it exists, else relative to the repo, else the installed wheel's copy."""
    path = Path(config)
    return path.resolve() if path.exists() else find_config(path, REPO)


def _python_module(args: list[str], log: Path) -> None:
    with open(log, "a") as f:
        proc = subprocess.run([sys.executable, "-m", *args], cwd=RUN_CWD, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"error: {' '.join(args[:1])} failed (exit {proc.returncode}); see {log}")


def prepare_masked_lm(out: Path, config: Path, corpus: str, vocab_size: int, seq_len: int,
                      max_predictions: int) -> tuple[list[str], dict]:
    """A WordPiece vocabulary of ``vocab_size`` and the corpus prepared at ``seq_len`` (each once per study
    directory) -> the overrides every run takes, and the prepared manifest's totals with the vocabulary's
    actual size (``vocab_size``)."""
    out = out.resolve()   # the preparation commands run in the repo root
    vocab = out / f"vocab-{vocab_size}.txt"
    if not vocab.is_file():
        tmp = out / f"vocab-{vocab_size}.tmp.txt"
        _python_module(["groupbert.data.train_vocab", "--corpus", corpus, "--vocab-size", str(vocab_size),
                        "--output", str(tmp)], out / "prepare.log")
        os.replace(tmp, vocab)
    from groupbert.data.tokenizer import load_wordpiece
    from groupbert.data.tokenizer import vocab_size as entries

    size = entries(load_wordpiece(str(vocab)))   # a small target can end larger: every character is kept
    data = out / f"data-{seq_len}"
    sets = [f"data.corpus={corpus}", f"data.vocab_file={vocab}", f"model.vocab_size={size}",
            f"data.seq_len={seq_len}",
            f"data.max_predictions={max_predictions}", *PREP_KEYS]
    if not (data / "manifest.json").is_file():   # prepare resumes its own finished shards
        cmd = ["groupbert.data.prepare", "--config", str(config), "--output", str(data.resolve()), "--quiet"]
        for s in sets:
            cmd += ["--set", s]
        _python_module(cmd, out / "prepare.log")
    manifest = json.loads((data / "manifest.json").read_text())
    return sets + [f"data.prepared={data}"], {**manifest["totals"], "vocab_size": size}


def read_metrics(run_dir: Path) -> list[dict]:
    """The run's records (a line cut short by a kill is skipped)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return records


def _finished(run_dir: Path, steps: int) -> bool:
    evals = [r for r in read_metrics(run_dir) if r.get("kind") == "eval"]
    return bool(evals) and evals[-1]["step"] >= steps


def run_one(run: Run, config: Path, out: Path, threads: int) -> Run:
    """Start, continue or confirm one run; its status from its own records."""
    run_dir = out / "runs" / run.name
    if _finished(run_dir, run.steps):
        run.status, run.error = "done", None
        return run
    cmd = [sys.executable, str(REPO / "run_pretraining.py")]
    if (run_dir / "config.yaml").exists():  # continue it (or start it again if it saved no checkpoint)
        cmd += ["--resume", str(run_dir.resolve())]
    else:
        cmd += ["--config", str(config), "--output-dir", str(run_dir.resolve())]
        for s in run.sets + [f"runtime.threads={threads}", "logging.progress_bar=false"]:
            cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.setdefault("WANDB_MODE", "disabled")  # dozens of runs: log to W&B only when asked (WANDB_MODE=offline)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(out / "runs" / f"{run.name}.log", "a") as log:
        proc = subprocess.run(cmd, cwd=RUN_CWD, env=env, stdout=log, stderr=subprocess.STDOUT)
    run.seconds = (run.seconds or 0.0) + time.perf_counter() - t0
    if proc.returncode == 0 and _finished(run_dir, run.steps):
        run.status, run.error = "done", None
        return run
    end = read_end(run_dir)
    tail = (out / "runs" / f"{run.name}.log").read_text(errors="replace").strip().splitlines()[-3:]
    run.status = "diverged" if end is not None and end["status"] == "diverged" else "failed"
    run.error = ((end or {}).get("error") or " | ".join(tail))[-400:]
    return run


def run_grid(runs: list[Run], config: Path, out: Path, workers: int, threads: int, desc: str,
             on_done: Optional[Callable[[Run], None]] = None) -> None:
    """Run every pending or failed run of ``runs`` in ``workers`` parallel subprocesses."""
    todo = [r for r in runs if r.status not in ("done", "diverged")]
    if not todo:
        return
    logger.info("%s: %d runs, %d to run, %d workers x %d threads", desc, len(runs), len(todo), workers, threads)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(total=len(todo), desc=desc, unit="run") as bar:
        futures = [pool.submit(run_one, r, config, out, threads) for r in todo]
        for fut in as_completed(futures):
            run = fut.result()
            if on_done is not None:
                on_done(run)
            bar.update(1)
            bar.set_postfix_str(f"{run.name}: {run.status}")
    logger.info("%s: finished in %.1f min", desc, (time.perf_counter() - t0) / 60)


def run_stages(out: Path, config: Path, args, info: dict, stage1: list[Run],
               stage2_of: Callable[[list[Run]], list[Run]], desc: str) -> list[Run]:
    """A study's two stages: ``stage1`` (the learning-rate grid at seed 0), then ``stage2_of(stage 1)`` (the
    other seeds at the best rates). Runs an earlier invocation finished are kept; ``results.json`` is
    rewritten after every run; with ``args.report_only`` nothing runs."""
    previous = load_previous(out / "results.json")
    runs = list(stage1)
    keep_previous(runs, previous)

    def save(_=None):
        write_json(out / "results.json", {"args": vars(args), "machine": info, "runs": [vars(r) for r in runs]})

    if not args.report_only:
        run_grid(runs, config, out, args.workers, args.threads, f"{desc}: lr grid", save)
    stage2 = stage2_of(runs)
    keep_previous(stage2, previous)
    runs += stage2
    if not args.report_only:
        run_grid(stage2, config, out, args.workers, args.threads, f"{desc}: seeds", save)
    save()
    return runs


def unfinished(runs) -> list[str]:
    """The report's line naming the runs that failed or diverged (none: no line)."""
    bad = [r for r in runs if r.status in ("failed", "diverged")]
    return ["", "Runs that did not finish: " + ", ".join(f"{r.name} ({r.status})" for r in bad)] if bad else []


def finish(out: Path, runs, outputs: str) -> int:
    """Name the failed runs on stderr and what was written; exit 1 when a run failed (diverged is a result)."""
    failed = [r for r in runs if r.status == "failed"]
    for r in failed:
        print(f"FAILED {r.name}: {r.error}", file=sys.stderr)
    print(f"wrote {out}/{outputs}")
    return 1 if failed else 0


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def keep_previous(runs: Iterable[Run], previous: dict[str, dict]) -> None:
    """Carry status, seconds and errors over from an earlier invocation's results file."""
    for r in runs:
        prev = previous.get(r.name)
        if prev and prev.get("status") in ("done", "diverged"):
            r.status, r.seconds, r.error = prev["status"], prev.get("seconds"), prev.get("error")


def read_json(path: Path) -> dict:
    """A study's earlier results file ({} when there is none or it is unreadable)."""
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def load_previous(path: Path) -> dict[str, dict]:
    try:
        return {r["name"]: r for r in read_json(path)["runs"]}
    except (KeyError, TypeError):
        return {}


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


# ---- curves ---------------------------------------------------------------------------------------

@dataclass
class Curve:
    """A run's evaluations with the training done before each: steps, sequences, FLOPs, seconds."""
    steps: list[int]
    sequences: list[float]
    flops: list[float]
    seconds: list[float]         # training steps only (evaluations and checkpoints excluded)
    loss: list[float]            # validation MLM loss
    acc: list[float]             # validation MLM accuracy
    epochs: float                # passes over the training split at the last evaluation
    flops_per_token: Optional[float]

    @property
    def final(self) -> float:
        return self.loss[-1]


def curve(run_dir: Path, rows_per_step: int, seq_len: int) -> Optional[Curve]:
    """The curve of a run from its ``metrics.jsonl`` (None when it has no evaluation).

    Training seconds come from the train records' ``tokens_per_s`` over each logging window (the engine
    times the steps alone); at an evaluation between two records the time is interpolated linearly in steps.
    """
    records = read_metrics(run_dir)
    run = next((r for r in records if r.get("kind") == "run"), {})
    fpt = run.get("flops_per_token")
    train_rows = run.get("train_rows") or run.get("train_sequences")
    tokens_per_step = rows_per_step * seq_len
    steps_at, seconds_at = [0], [0.0]
    for r in records:
        if r.get("kind") == "train" and r.get("tokens_per_s") and r["step"] > steps_at[-1]:
            seconds_at.append(seconds_at[-1] + (r["step"] - steps_at[-1]) * tokens_per_step / r["tokens_per_s"])
            steps_at.append(r["step"])
    evals: dict[int, dict] = {}
    for r in records:
        if r.get("kind") == "eval" and "eval_mlm_loss" in r:
            evals[r["step"]] = r                       # a resumed run's re-evaluation replaces the first
    if not evals:
        return None
    steps = sorted(evals)

    def seconds(step: int) -> float:
        i = bisect.bisect_left(steps_at, step)
        if i < len(steps_at) and steps_at[i] == step:
            return seconds_at[i]
        if i >= len(steps_at):                         # after the last record: at its rate
            rate = (seconds_at[-1] / steps_at[-1]) if steps_at[-1] else 0.0
            return seconds_at[-1] + (step - steps_at[-1]) * rate
        frac = (step - steps_at[i - 1]) / (steps_at[i] - steps_at[i - 1])
        return seconds_at[i - 1] + frac * (seconds_at[i] - seconds_at[i - 1])

    seqs = [s * rows_per_step for s in steps]
    return Curve(steps=steps, sequences=seqs,
                 flops=[s * tokens_per_step * (fpt or math.nan) for s in steps],
                 seconds=[seconds(s) for s in steps],
                 loss=[evals[s]["eval_mlm_loss"] for s in steps], acc=[evals[s]["eval_mlm_acc"] for s in steps],
                 epochs=seqs[-1] / train_rows if train_rows else math.nan, flops_per_token=fpt)


def first_reach(xs: list[float], losses: list[float], target: float) -> Optional[float]:
    """The x (FLOPs, seconds) at which a curve first reaches ``target`` loss, interpolated linearly in
    log x between the evaluations around the crossing (None: never reached)."""
    for i, (x, loss) in enumerate(zip(xs, losses)):
        if loss <= target:
            if i == 0 or xs[i - 1] <= 0:
                return x
            x0, l0 = xs[i - 1], losses[i - 1]
            frac = (l0 - target) / (l0 - loss) if l0 != loss else 1.0
            return math.exp(math.log(x0) + frac * (math.log(x) - math.log(x0)))
    return None


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The lower-left envelope of (cost, loss) points: each kept point has a lower loss than every cheaper one."""
    front: list[tuple[float, float]] = []
    for x, loss in sorted(points):
        if x > 0 and (not front or loss < front[-1][1]):
            front.append((x, loss))
    return front


def spread(values: list[float]) -> str:
    """``mean (min-max, n)`` of finite values, for the tables."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "-"
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{mean:.3f} (n=1)"
    return f"{mean:.3f} ({min(vals):.3f}-{max(vals):.3f}, n={len(vals)})"
