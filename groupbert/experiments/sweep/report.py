"""The sweep's report, written next to it: ``results.md`` / ``results.csv`` (one row per run, best
first, with the step each run reached; with hyperband, how many runs it stopped and the steps that
saved) and ``plots/``: the metric against each parameter (diverged runs as red crosses at the top
edge, stopped runs hollow), the best run's metric over its steps, and every run's metric over its
steps (``all_runs.png``, where hyperband's stops show as curves that end early)."""
from __future__ import annotations

import csv
import json
import math

from groupbert.experiments.sweep.spec import Sweep, suggest
from groupbert.experiments.sweep.store import RunStore

BOOKKEEPING = {"step", "kind", "time", "status", "error"}


def final_value(record: dict, metric: str) -> float | None:
    vals = [h[metric] for h in record.get("history", []) if isinstance(h.get(metric), (int, float))
            and math.isfinite(h[metric])]
    return vals[-1] if vals else None


def ranked(sweep: Sweep, records: list[dict]) -> list[dict]:
    def key(r):
        v = final_value(r, sweep.metric)
        return (v is None, -v if (v is not None and sweep.maximize) else (v if v is not None else 0.0))
    return sorted(records, key=key)


def trained_away(sweep: Sweep, record: dict) -> bool:
    """A finite run that diverged: for a minimized metric, its final value is above its first one (the
    step-0 evaluation of the untrained model), so the rate made training worse than not training."""
    vals = [h[sweep.metric] for h in record.get("history", []) if isinstance(h.get(sweep.metric), (int, float))
            and math.isfinite(h[sweep.metric])]
    return not sweep.maximize and len(vals) > 1 and vals[-1] > vals[0]


def steps_reached(record: dict, metric: str | None = None) -> int | None:
    """The last step the run logged (``last_step``; records written before it existed: its last metric value)."""
    if record.get("last_step") is not None:
        return record["last_step"]
    steps = [h.get("step") for h in record.get("history", []) if isinstance(h.get("step"), int)]
    return max(steps) if steps else None


def early_stopping_savings(records: list[dict]) -> dict | None:
    """What hyperband saved, in optimizer steps: the runs it stopped, the steps they ran, and the steps they
    would have run to the end (a full run's length is the longest finished run's last step). None when no
    run was stopped or none finished."""
    stopped = [r for r in records if r["state"] == "stopped"]
    full = max((steps_reached(r) or 0 for r in records if r["state"] == "finished"), default=0)
    if not stopped or not full:
        return None
    ran = {r["name"]: min(steps_reached(r) or 0, full) for r in stopped}
    saved = sum(full - s for s in ran.values())
    total = sum(steps_reached(r) or 0 for r in records)
    finished_s = [r.get("seconds", 0.0) for r in records if r["state"] == "finished"]
    mean_full_s = sum(finished_s) / len(finished_s)
    return dict(stopped=len(stopped), runs=len(records), full_steps=full, stopped_at=ran, saved_steps=saved,
                steps_run=total, steps_without_stopping=total + saved,
                saved_fraction=saved / (total + saved),
                stopped_seconds=sum(r.get("seconds", 0.0) for r in stopped),
                mean_finished_seconds=mean_full_s)


def runs_to_best(sweep: Sweep, records: list[dict]) -> int | None:
    """How many runs (in start order) the sweep needed before its best value appeared."""
    best, at = None, None
    for r in sorted(records, key=lambda r: r["index"]):
        v = final_value(r, sweep.metric)
        if v is not None and (best is None or (v > best if sweep.maximize else v < best)):
            best, at = v, r["index"] + 1
    return at


def write_report(sweep: Sweep, store: RunStore) -> str:
    records = store.records()
    params = list(sweep.config["parameters"])
    rows = ranked(sweep, records)
    goal = "max" if sweep.maximize else "min"
    lines = [f"# Sweep `{sweep.path.name}`: {sweep.config['method']}, metric `{sweep.metric}` ({goal})", "",
             f"{len(records)} runs: " + ", ".join(f"{sum(r['state'] == s for r in records)} {s}"
                                                   for s in ("finished", "stopped", "diverged", "failed", "running",
                                                             "preempted") if any(r['state'] == s for r in records)),
             f"; best after {runs_to_best(sweep, records)} runs.", "",
             "| run | " + " | ".join(params) + f" | {sweep.metric} | state | steps | values logged | seconds |",
             "|---|" + "---|" * (len(params) + 5)]
    lines[2] += lines.pop(3)
    for r in rows:
        v = final_value(r, sweep.metric)
        lines.append(f"| {r['name']} | " + " | ".join(_cell(r["params"].get(p)) for p in params)
                     + f" | {'' if v is None else f'{v:.4g}'} | {r['state']} | {_cell(steps_reached(r))} | "
                       f"{len(r.get('history', []))} | {r.get('seconds', 0):.0f} |")
    saving = early_stopping_savings(records)
    if saving:
        at = ", ".join(f"{n} at step {s}" for n, s in saving["stopped_at"].items())
        lines += ["", f"Hyperband stopped {saving['stopped']} of {saving['runs']} runs early ({at}); a full run is "
                  f"{saving['full_steps']} steps. The sweep ran {saving['steps_run']} optimizer steps instead of "
                  f"{saving['steps_without_stopping']} ({saving['saved_fraction']:.0%} fewer); the stopped runs "
                  f"took {saving['stopped_seconds']:.0f} s in all, against {saving['mean_finished_seconds']:.0f} s "
                  f"for one finished run on average."]
    away = [r["name"] for r in records if trained_away(sweep, r)]
    if away:
        lines += ["", f"Diverged without a non-finite loss (final {sweep.metric} above its first value): "
                  + ", ".join(away) + "."]
    errors = [r for r in records if r["state"] in ("failed", "diverged") and r.get("error")]
    if errors:
        lines += ["", "## Runs that did not finish", ""]
        for r in errors:
            last = r["error"].strip().splitlines()[-1] if r["error"].strip() else ""
            lines.append(f"- {r['name']} ({r['state']}, exit {r.get('exit_code')}): `{last[:200]}`")
    text = "\n".join(lines) + "\n"
    (store.root / "results.md").write_text(text)
    with open(store.root / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", *params, sweep.metric, "state", "steps", "values_logged", "seconds", "exit_code"])
        for r in rows:
            w.writerow([r["name"], *(r["params"].get(p) for p in params), final_value(r, sweep.metric), r["state"],
                        steps_reached(r), len(r.get("history", [])), round(r.get("seconds", 0), 1),
                        r.get("exit_code")])
    _plots(sweep, store, records, params)
    return text


def verdict(sweep: Sweep, store: RunStore) -> tuple[int, str | None]:
    """The sweep's exit code and, unless 0, the line saying why: 0 only when some run that did not fail logged a
    finite value of the metric, so a blank report never exits 0. 1 when every run failed or diverged, or none
    logged a finite value (yet); 2 when runs ended but none logged the metric at all, a config error: the
    line names the metrics the runs did log and the closest one."""
    records = store.records()
    logs = f"{store.root}/runs/<run>/log.txt"
    if not records:
        return 1, "error: no run was started (the engine proposed none)"
    bad = [r for r in records if r["state"] in ("failed", "diverged")]
    if len(bad) == len(records):
        first = next((r["error"].strip().splitlines()[-1] for r in bad if (r.get("error") or "").strip()), "")
        return 1, (f"error: every run ({len(records)}) failed or diverged; their output is in {logs}"
                   + (f"; the first error: {first[:300]}" if first else ""))
    if any(final_value(r, sweep.metric) is not None for r in records if r not in bad):
        return 0, None
    open_runs = [r["name"] for r in records if r["state"] in ("running", "preempted")]
    if open_runs:
        return 1, (f"error: no run has logged a finite {sweep.metric} yet; {', '.join(open_runs)} did not end "
                   f"(run the sweep command again to finish them)")
    if any(r.get("history") for r in records):
        return 1, f"error: the runs logged {sweep.metric}, but never a finite value; their output is in {logs}"
    names = logged_names(store)
    if not names:
        return 2, (f"error: key 'metric.name': no run wrote any record to metrics.jsonl in its run directory, "
                   f"where the sweep reads '{sweep.metric}' ({sweep.path})")
    return 2, (f"error: key 'metric.name': no run logged '{sweep.metric}' ({sweep.path})"
               f"{suggest(sweep.metric, names)}; "
               f"the runs logged: {', '.join(sorted(names))}")


def logged_names(store: RunStore) -> set[str]:
    """The numeric keys of every record the runs wrote to their ``metrics.jsonl``."""
    names = set()
    for path in (store.root / "runs").glob("*/run/metrics.jsonl"):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                names |= {k for k, v in rec.items() if k not in BOOKKEEPING and (v is None or (
                    isinstance(v, (int, float)) and not isinstance(v, bool)))}
    return names


def _cell(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else "" if v is None else str(v)


def _plots(sweep: Sweep, store: RunStore, records: list[dict], params: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = store.root / "plots"
    out.mkdir(exist_ok=True)
    spec = sweep.config["parameters"]
    done = [(r, final_value(r, sweep.metric)) for r in records]
    finite = [v for _, v in done if v is not None]
    top = (max(finite) if not sweep.maximize else min(finite)) if finite else 1.0
    for p in params:
        xs = [r["params"].get(p) for r in records]
        if not all(isinstance(x, (int, float)) for x in xs):
            continue
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for state, style in (("finished", dict(color="C0")), ("stopped", dict(color="C0", facecolors="none"))):
            pts = [(r["params"][p], v) for r, v in done if r["state"] == state and v is not None]
            if pts:
                ax.scatter(*zip(*pts), label=state, **style)
        away = [(r["params"][p], v) for r, v in done if v is not None and trained_away(sweep, r)]
        if away:
            ax.scatter(*zip(*away), marker="o", facecolors="none", edgecolors="red", s=140,
                       label="diverged (ends above start)")
        bad = [r["params"][p] for r in records if r["state"] in ("diverged", "failed")]
        if bad:
            ax.scatter(bad, [top] * len(bad), marker="x", color="red", s=60, label="diverged / failed")
        if spec[p].get("distribution", "").startswith(("log_", "q_log_")) or _log_spaced(xs):
            ax.set_xscale("log")
        ax.set_xlabel(p)
        ax.set_ylabel(sweep.metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no run with a value: no legend to draw
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{sweep.metric}_vs_{p}.png", dpi=110)
        plt.close(fig)
    best = ranked(sweep, records)[0] if records else None
    if best and best.get("history"):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        hist = best["history"]
        ax.plot([h.get("step") for h in hist], [h[sweep.metric] for h in hist], marker="o")
        ax.set_xlabel("step")
        ax.set_ylabel(sweep.metric)
        ax.set_title(f"best run {best['name']}: " + ", ".join(f"{k}={_cell(v)}" for k, v in best["params"].items()),
                     fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "best_run.png", dpi=110)
        plt.close(fig)
    curves = [r for r in records if any(_finite(h.get(sweep.metric)) for h in r.get("history", []))]
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        label = ", ".join(params[:1])
        for r in curves:
            pts = [(h["step"], h[sweep.metric]) for h in r["history"] if _finite(h.get(sweep.metric))]
            style = {"stopped": dict(ls="--", marker="x"), "finished": dict(ls="-", marker=".")}.get(
                r["state"], dict(ls=":", marker="+", color="red"))
            name = f"{r['name']} " + ", ".join(f"{_cell(r['params'].get(p))}" for p in params[:2])
            ax.plot(*zip(*pts), label=f"{name} ({r['state']})", **style)
        ax.set_xlabel("step")
        ax.set_ylabel(sweep.metric)
        ax.set_title(f"every run ({label}); dashed: stopped early", fontsize=8)
        values = [v for r in curves for h in r["history"] if _finite(v := h.get(sweep.metric))]
        if min(values) > 0 and max(values) / min(values) > 5:  # diverging runs' spikes next to the rest
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(out / "all_runs.png", dpi=110)
        plt.close(fig)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _log_spaced(xs) -> bool:
    pos = [x for x in xs if x > 0]
    return len(pos) == len(xs) and len(pos) > 1 and max(pos) / min(pos) >= 100
