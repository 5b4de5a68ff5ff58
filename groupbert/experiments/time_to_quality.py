"""GroupBERT against BERT at equal training FLOPs and wall-clock time, one command (the claims study, part 1).

    python -m groupbert.experiments.time_to_quality --out runs/time-to-quality     # default grid: 22 runs, ≈ 1 h on 2 cores
    python -m groupbert.experiments.time_to_quality --out runs/ttq --sizes tiny --budget-steps tiny=100 --seeds 1

The claim (Chelombiev et al. 2021, "GroupBERT: Enhanced Transformer Architecture with Efficient Grouped
Structures", arXiv:2106.05822, figure 1 and section 5): GroupBERT reaches BERT's masked-LM loss with less
than half the FLOPs, and Graphcore's report states about 2x faster training to the same loss.

The grid, for each size in ``--sizes`` (``SIZES``: BERT shapes of Turc et al. 2019, "Well-Read Students
Learn Better", arXiv:1908.08962) and each model in ``--models``: every learning rate of the size's grid with
seed 0 first, then the other ``--seeds`` at the learning rate whose final validation MLM loss was lowest.
Every run is an ordinary ``run_pretraining.py`` run of ``configs/groupbert/tiny_phase1.yaml`` (AdamW,
weight decay 0.01, square-root warmup over 10% then linear decay; the model shape, the data and the steps
overridden) on the same prepared corpus, fed the same rows in the same order for a given seed.

FLOP budgets: BERT runs ``--budget-steps`` steps of ``--batch-size`` sequences; GroupBERT runs as many steps
as the same training FLOPs buy (``groupbert.models.flops.train_flops_per_token``: it computes more per
token). Hugging Face's ``BertForPreTraining`` (``model.type: hf_bert``: the MLM head on every position, as
its examples train it) runs BERT's steps at BERT's best learning rate for every seed: the baseline a user
would pick instead, on the wall-clock axis (on the FLOPs axis it is charged the FLOPs it computes).

Each run is evaluated ``--evals`` times on the held-out documents; the curves give validation MLM loss
against training FLOPs and against training seconds (the steps alone, from the runs' own throughput
records; ``--workers`` runs share the machine, so seconds compare only within one invocation on a quiet
machine). The match: the FLOPs (or seconds) at which GroupBERT's curve first reaches BERT's final loss,
over BERT's budget, per seed. GroupBERT's curve is evaluated mid-schedule, before its learning rate has
decayed, so the ratio is an upper bound on what a GroupBERT run budgeted to that point would need.

Output in ``--out``: ``runs/``, ``results.json`` (runs, curves, matches), ``results.csv`` (one row per
evaluation), ``results.md`` (tables and the comparison with the paper), ``loss_vs_flops.png`` and
``loss_vs_time.png`` (every run's curve, and per model the Pareto front over all its runs). Interrupt it and
run the same command again: finished runs are kept and unfinished ones continue.
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
from pathlib import Path

from groupbert.config import ModelConfig
from groupbert.experiments import grid
from groupbert.experiments.grid import Run
from groupbert.models.flops import train_flops_per_token

MODULE = "groupbert.experiments.time_to_quality"
logger = logging.getLogger("groupbert.experiments.time_to_quality")

#: size -> model shape (hidden, layers, heads, intermediate)
SIZES = {
    "tiny": (128, 2, 2, 512),     # BERT-Tiny
    "mini": (256, 4, 4, 1024),    # BERT-Mini
    "small": (512, 4, 8, 2048),   # BERT-Small
}
#: size -> default learning-rate grid and BERT steps at the FLOP budget
DEFAULT_LRS = {"tiny": "1e-3,2e-3,4e-3", "mini": "5e-4,1e-3,2e-3,4e-3", "small": "2.5e-4,5e-4,1e-3,2e-3"}
DEFAULT_BUDGET_STEPS = {"tiny": 500, "mini": 250, "small": 150}
MODELS = ("bert", "groupbert", "hf_bert")
LABELS = {"bert": "BERT (ours)", "groupbert": "GroupBERT", "hf_bert": "BERT (Hugging Face)"}
COLORS = {"bert": "tab:blue", "groupbert": "tab:red", "hf_bert": "tab:gray"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--out", default="runs/time-to-quality", help="study directory (resumes if it exists)")
    p.add_argument("--config", default="configs/groupbert/tiny_phase1.yaml", help="base recipe of every run")
    p.add_argument("--corpus", default="wikipedia", help="anything data.corpus takes (default: the bundled sample)")
    p.add_argument("--sizes", default="tiny,mini", help=f"subset of {','.join(SIZES)}")
    p.add_argument("--models", default=",".join(MODELS), help=f"subset of {','.join(MODELS)}")
    p.add_argument("--lrs", action="append", default=[], metavar="SIZE=LR,LR",
                   help=f"learning-rate grid of a size (default {DEFAULT_LRS})")
    p.add_argument("--budget-steps", action="append", default=[], metavar="SIZE=STEPS",
                   help=f"BERT's steps at the FLOP budget (default {DEFAULT_BUDGET_STEPS})")
    p.add_argument("--seeds", type=int, default=2, help="seeds at each model's best learning rate")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--max-predictions", type=int, default=20)
    p.add_argument("--vocab-size", type=int, default=8192, help="WordPiece trained on the corpus")
    p.add_argument("--evals", type=int, default=8, help="evaluations per run (plus step 0)")
    p.add_argument("--workers", type=int, default=2, help="runs in parallel")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra overrides for every run")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the finished runs")
    args = p.parse_args(argv)
    for name in ("sizes", "models"):
        allowed = SIZES if name == "sizes" else MODELS
        bad = [x for x in getattr(args, name).split(",") if x not in allowed]
        if bad:
            p.error(f"--{name}: unknown {bad}; choose from {','.join(allowed)}")
    args.lr_grid = _per_size(p, "--lrs", args.lrs, DEFAULT_LRS, lambda v: [float(x) for x in v.split(",") if x])
    args.budget = _per_size(p, "--budget-steps", args.budget_steps, DEFAULT_BUDGET_STEPS, int)
    if args.seeds < 1 or args.evals < 1 or args.workers < 1:
        p.error("--seeds, --evals and --workers must be at least 1")
    return args


def _per_size(p, flag, given, defaults, parse):
    values = {k: parse(str(v)) for k, v in defaults.items()}
    for item in given:
        size, _, value = item.partition("=")
        if size not in SIZES or not value:
            p.error(f"{flag} {item!r}: expected SIZE=VALUE with SIZE one of {','.join(SIZES)}")
        try:
            values[size] = parse(value)
        except ValueError:
            p.error(f"{flag} {item!r}: bad value")
    return values


def model_config(model: str, size: str, vocab_size: int) -> ModelConfig:
    h, layers, heads, inter = SIZES[size]
    return ModelConfig(type=model, hidden_size=h, num_layers=layers, num_heads=heads, intermediate_size=inter,
                       vocab_size=vocab_size)


def steps_for(model: str, size: str, args) -> int:
    """BERT's budget steps; GroupBERT the steps of the same training FLOPs; Hugging Face's BERT BERT's steps."""
    bert_steps = args.budget[size]
    if model != "groupbert":
        return bert_steps
    per_token = {m: train_flops_per_token(model_config(m, size, args.vocab_size), args.seq_len, args.max_predictions)
                 for m in ("bert", "groupbert")}
    return max(1, round(bert_steps * per_token["bert"] / per_token["groupbert"]))


def make_run(model: str, size: str, lr: float, seed: int, args, data_sets: list[str]) -> Run:
    h, layers, heads, inter = SIZES[size]
    steps = steps_for(model, size, args)
    every = max(1, steps // args.evals)
    sets = [f"model.type={model}", f"model.hidden_size={h}", f"model.num_layers={layers}", f"model.num_heads={heads}",
            f"model.intermediate_size={inter}", *data_sets,
            f"train.max_steps={steps}", f"train.micro_batch_size={args.batch_size}", "train.gradient_accumulation=1",
            f"train.seed={seed}", "optimizer.name=adamw", f"optimizer.lr={lr!r}",
            f"train.eval_every={every}", f"train.checkpoint_every={every}", "train.keep_checkpoints=1",
            f"logging.log_every={max(1, every // 4)}", *args.set]
    return Run(f"{size}-{model}-lr{lr:g}-s{seed}", sets, steps,
               info={"model": model, "size": size, "lr": lr, "seed": seed})


# ---- results ---------------------------------------------------------------------------------------

def curves_of(runs: list[Run], out: Path, args) -> dict[str, grid.Curve]:
    found = {}
    for r in runs:
        if r.status == "done":
            c = grid.curve(out / "runs" / r.name, args.batch_size, args.seq_len)
            if c is not None:
                found[r.name] = c
    return found


def best_lr(runs: list[Run], curves: dict, model: str, size: str) -> float | None:
    """The learning rate of the seed-0 run with the lowest final loss (None until one finished)."""
    done = [r for r in runs if r.info["model"] == model and r.info["size"] == size and r.info["seed"] == 0
            and r.name in curves]
    return min(done, key=lambda r: curves[r.name].final).info["lr"] if done else None


def analyse(runs: list[Run], curves: dict, args) -> dict:
    """Per size: each model's best-lr runs, and the FLOP / time ratios at which GroupBERT matches BERT."""
    sizes = {}
    for size in args.sizes.split(","):
        entry = {"models": {}, "matches": []}
        best = {m: best_lr(runs, curves, m if m != "hf_bert" else "bert", size) for m in MODELS}
        for m in args.models.split(","):
            chosen = [r for r in runs if r.info["model"] == m and r.info["size"] == size and r.info["lr"] == best[m]
                      and r.name in curves]
            entry["models"][m] = {
                "best_lr": best[m], "steps": steps_for(m, size, args),
                "runs": [r.name for r in chosen],
                "final_loss": [curves[r.name].final for r in chosen],
                "final_acc": [curves[r.name].acc[-1] for r in chosen],
                "flops": [curves[r.name].flops[-1] for r in chosen],
                "seconds": [curves[r.name].seconds[-1] for r in chosen],
                "epochs": [curves[r.name].epochs for r in chosen],
                "lr_grid": {f"{r.info['lr']:g}": curves[r.name].final for r in runs
                            if r.info["model"] == m and r.info["size"] == size and r.info["seed"] == 0
                            and r.name in curves},
            }
        for seed in range(args.seeds):
            def pick(m):
                name = next((r.name for r in runs if r.info["model"] == m and r.info["size"] == size
                             and r.info["lr"] == best[m] and r.info["seed"] == seed and r.name in curves), None)
                return curves.get(name) if name else None
            g, b, hf = pick("groupbert"), pick("bert"), pick("hf_bert")
            if g is None or b is None:
                continue
            match = {"seed": seed, "bert_loss": b.final, "groupbert_loss": g.final,
                     "flops_ratio": _ratio(grid.first_reach(g.flops, g.loss, b.final), b.flops[-1]),
                     "time_ratio": _ratio(grid.first_reach(g.seconds, g.loss, b.final), b.seconds[-1])}
            if hf is not None:
                match["hf_loss"] = hf.final
                match["time_ratio_vs_hf"] = _ratio(grid.first_reach(g.seconds, g.loss, hf.final), hf.seconds[-1])
                match["hf_over_bert_time"] = hf.seconds[-1] / b.seconds[-1]
            entry["matches"].append(match)
        sizes[size] = entry
    # Across sizes: the Pareto fronts over every evaluation of every run of a model
    fronts = {m: grid.pareto_front((x, loss) for r in runs if r.info["model"] == m and r.name in curves
                                   for x, loss in zip(curves[r.name].flops, curves[r.name].loss))
              for m in args.models.split(",")}
    front_ratios = []
    if fronts.get("bert") and fronts.get("groupbert"):
        gx, gl = zip(*fronts["groupbert"])
        for x, loss in fronts["bert"]:
            reach = grid.first_reach(list(gx), list(gl), loss)
            front_ratios.append({"bert_flops": x, "loss": loss, "flops_ratio": _ratio(reach, x)})
    return {"sizes": sizes, "fronts": fronts, "front_ratios": front_ratios}


def _ratio(reach, budget):
    return None if reach is None or not budget else reach / budget


def _fmt_ratios(values) -> str:
    vals = [v for v in values if v is not None]
    missing = len(values) - len(vals)
    text = grid.spread(vals) if vals else "-"
    return text + (f"; {missing} seed(s) never matched" if missing else "")


def write_report(out: Path, runs: list[Run], curves: dict, analysis: dict, args, totals: dict,
                 provenance: list[str]) -> str:
    train_rows = totals["train"]["rows"]
    lines = [
        "# Time to quality: GroupBERT against BERT",
        "",
        f"Validation masked-LM loss on {totals['validation']['rows']} held-out sequences of {args.seq_len} tokens "
        f"({totals['validation']['documents']} Wikipedia articles) after training on {train_rows:,} sequences "
        f"({totals['train']['documents']} articles, {totals['train']['input_tokens']:,} words' tokens) of the "
        f"corpus `{args.corpus}`, batch {args.batch_size}, WordPiece vocabulary of {args.vocab_size}. Mean over "
        "seeds (min-max, n) at each model's best learning rate (lowest final loss of seed 0). FLOPs: model "
        "training FLOPs (`groupbert.models.flops`); seconds: the training steps alone, "
        f"{args.workers} runs in parallel with {args.threads} thread(s) each.",
        "",
        "| size | model | steps | epochs | best lr | lr grid (seed 0 final loss) | final MLM loss | MLM acc | "
        "train TFLOP | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, entry in analysis["sizes"].items():
        for m, e in entry["models"].items():
            grid_text = ", ".join(f"{lr}: {loss:.3f}" for lr, loss in e["lr_grid"].items()) or "-"
            epochs = ", ".join(f"{x:.2f}" for x in e["epochs"][:1]) or "-"
            lines.append(f"| {size} | {LABELS[m]} | {e['steps']} | {epochs} | "
                         f"{e['best_lr'] if e['best_lr'] is not None else '-'} | {grid_text} | "
                         f"{grid.spread(e['final_loss'])} | {grid.spread(e['final_acc'])} | "
                         f"{grid.spread([f / 1e12 for f in e['flops']])} | {grid.spread(e['seconds'])} |")
    lines += ["", "## Where GroupBERT matches BERT", "",
              "Per seed: the training FLOPs (seconds) at which GroupBERT's validation curve first reaches BERT's "
              "final loss, over BERT's FLOPs (seconds); below 1 GroupBERT is cheaper, `-` it never got there "
              "within its budget. The paper's claim is a FLOP ratio below 0.5 and a time ratio near 0.5.", "",
              "| size | seeds | FLOP ratio | time ratio vs our BERT | time ratio vs Hugging Face BERT | "
              "Hugging Face / our BERT step time |",
              "|---|---|---|---|---|---|"]
    for size, entry in analysis["sizes"].items():
        ms = entry["matches"]
        if not ms:
            lines.append(f"| {size} | 0 | - | - | - | - |")
            continue
        lines.append(f"| {size} | {len(ms)} | {_fmt_ratios([m['flops_ratio'] for m in ms])} | "
                     f"{_fmt_ratios([m['time_ratio'] for m in ms])} | "
                     f"{_fmt_ratios([m.get('time_ratio_vs_hf') for m in ms if 'hf_loss' in m])} | "
                     f"{grid.spread([m['hf_over_bert_time'] for m in ms if 'hf_over_bert_time' in m])} |")
    if analysis["front_ratios"]:
        lines += ["", "Across sizes, on the Pareto fronts (every evaluation of every run of a model): "
                  "GroupBERT's FLOPs to reach each BERT front point's loss, over that point's FLOPs:", "",
                  "| BERT TFLOP | loss | FLOP ratio |", "|---|---|---|"]
        for fr in analysis["front_ratios"]:
            ratio = "-" if fr["flops_ratio"] is None else f"{fr['flops_ratio']:.2f}"
            lines.append(f"| {fr['bert_flops'] / 1e12:.2f} | {fr['loss']:.3f} | {ratio} |")
    lines += [*grid.unfinished(runs), "", *provenance]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "size", "model", "lr", "seed", "step", "sequences", "epochs", "train_flops",
                    "train_seconds", "eval_mlm_loss", "eval_mlm_acc"])
        for r in runs:
            c = curves.get(r.name)
            for i in range(len(c.steps) if c else 0):
                w.writerow([r.name, r.info["size"], r.info["model"], r.info["lr"], r.info["seed"], c.steps[i],
                            c.sequences[i], c.sequences[i] / train_rows, c.flops[i], round(c.seconds[i], 3),
                            c.loss[i], c.acc[i]])
    return text


def write_plots(out: Path, runs: list[Run], curves: dict, analysis: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for axis, xlabel, fname in (("flops", "training FLOPs", "loss_vs_flops.png"),
                                ("seconds", "training seconds (steps only)", "loss_vs_time.png")):
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        points: dict[str, list] = {}
        for r in runs:
            c = curves.get(r.name)
            if c is None:
                continue
            xs = getattr(c, axis)
            m = r.info["model"]
            ax.plot(xs[1:], c.loss[1:], color=COLORS[m], alpha=0.25, lw=0.8,
                    ls="-" if r.info["size"] == "tiny" else "--")
            points.setdefault(m, []).extend(zip(xs[1:], c.loss[1:]))
        for m, pts in points.items():
            front = grid.pareto_front(pts)
            if front:
                ax.step(*zip(*front), where="post", color=COLORS[m], lw=2, label=f"{LABELS[m]}: Pareto front")
        firsts = [c.loss[1] for c in curves.values() if len(c.loss) > 1 and math.isfinite(c.loss[1])]
        if firsts:   # a loss spike of one run would otherwise squash every curve
            ax.set_ylim(top=max(firsts) + 0.1)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation MLM loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("Every run (thin; dashed: larger sizes) and each model's Pareto front", fontsize=9)
        grid.save_figure(fig, out / fname)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = grid.config_path(args.config)
    data_sets, totals = grid.prepare_masked_lm(out, config, args.corpus, args.vocab_size, args.seq_len,
                                               args.max_predictions)
    args.vocab_size = totals["vocab_size"]   # the FLOP budgets use the model's real embedding table
    sizes, models = args.sizes.split(","), args.models.split(",")
    earlier = grid.read_json(out / "results.json")
    info = earlier.get("machine") or grid.machine()   # the machine and load when the study first started
    stage1 = [make_run(m, s, lr, 0, args, data_sets) for s in sizes for m in models if m != "hf_bert"
              for lr in args.lr_grid[s]]

    def stage2_of(runs: list[Run]) -> list[Run]:
        """The other seeds at each model's best rate; Hugging Face's BERT at BERT's best rate, every seed."""
        curves, stage2 = curves_of(runs, out, args), []
        for s in sizes:
            for m in models:
                lr = best_lr(runs, curves, "bert" if m == "hf_bert" else m, s)
                if lr is None:
                    continue
                seeds = range(args.seeds) if m == "hf_bert" else range(1, args.seeds)
                stage2 += [make_run(m, s, lr, seed, args, data_sets) for seed in seeds]
        return stage2

    runs = grid.run_stages(out, config, args, info, stage1, stage2_of, "time to quality")
    curves = curves_of(runs, out, args)
    analysis = analyse(runs, curves, args)
    grid.write_json(out / "results.json", {"args": vars(args), "machine": info, "runs": [vars(r) for r in runs],
                                           "curves": {k: vars(c) for k, c in curves.items()},
                                           "analysis": analysis, "data": totals})
    provenance = grid.provenance(MODULE, argv, runs, args.workers, info)
    print(write_report(out, runs, curves, analysis, args, totals, provenance))
    write_plots(out, runs, curves, analysis)
    return grid.finish(out, runs, "results.md, results.csv, results.json, loss_vs_flops.png, loss_vs_time.png")


if __name__ == "__main__":
    sys.exit(main())
