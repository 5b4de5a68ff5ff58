"""Hyperband early stopping on our runs.

- Through the real ``run_pretraining.py``: a two-run grid on a very small GroupBERT (hidden 32, 1 layer,
  8 documents), eval_loss every 4 steps. The first run (a rate that trains) finishes; the second (a rate
  too small to move the loss) is stopped at the first band, and the report counts the steps that saved.
- Why the shipped hyperband sweep turns off the step-0 evaluation: W&B's hyperband judges a run by its
  best value so far, and the untrained model's loss, the same for every run, is that best for a run that
  blows up. With the eval_loss values measured in a first attempt of
  ``configs/sweeps/pretrain_lr_hyperband.yaml`` (lr 0.22, 0.39, 0.82; 60 steps, eval every 10), W&B's
  engine never stops the 0.82 run while the step-0 value is in its history, and stops it at step 20
  without it.
"""
import csv
import json
import warnings
from pathlib import Path

import pytest
import yaml

from groupbert.experiments.sweep.__main__ import main as sweep_main

ROOT = Path(__file__).resolve().parents[2]
STEPS, EVAL_EVERY = 24, 4
# what these runs add to the shared tiny run (conftest.py), over configs/groupbert/tiny_phase1.yaml
SMALL = ["data.seq_len=32", "data.max_predictions=5", "data.max_documents=8", "data.dupe_factor=1",
         "train.micro_batch_size=4", "train.checkpoint_every=0", f"train.max_steps={STEPS}",
         f"train.eval_every={EVAL_EVERY}", "train.eval_at_start=false", f"logging.log_every={EVAL_EVERY}",
         "schedule.name=constant", "schedule.warmup_steps=0", "runtime.threads=1", "runtime.custom_ops=off"]


@pytest.mark.slow  # ~15 s of real runs; test_sweep.py's hyperband test covers the rule in the fast suite
def test_hyperband_stops_a_real_pretraining_run(tmp_path, tiny_overrides):
    command = ["${env}", "${interpreter}", "${program}", "--config", "configs/groupbert/tiny_phase1.yaml"]
    for s in [*tiny_overrides, *SMALL, f"data.cache_dir={tmp_path / 'cache'}"]:
        command += ["--set", s]
    sweep = {"program": "run_pretraining.py", "method": "grid", "metric": {"name": "eval_loss", "goal": "minimize"},
             # eta 3: a running run must be in the best third at a band; bands are values 1, 3 (steps 8, 16)
             "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3},
             "parameters": {"optimizer.lr": {"values": [1e-2, 1e-7]}},
             "command": command + ["--quiet", "${args}"]}
    path = tmp_path / "hb.yaml"
    path.write_text(yaml.safe_dump(sweep))
    sweep_dir = tmp_path / "s"
    assert sweep_main([str(path), "--sweep-dir", str(sweep_dir), "--poll", "0.05"]) == 0

    recs = {r["params"]["optimizer.lr"]: r for r in
            (json.loads(p.read_text()) for p in sweep_dir.glob("runs/*/record.json"))}
    good, bad = recs[1e-2], recs[1e-7]
    assert good["state"] == "finished" and good["last_step"] == STEPS
    assert [h["step"] for h in good["history"]] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    assert good["history"][1]["eval_loss"] < good["history"][0]["eval_loss"]
    assert bad["state"] == "stopped" and bad["exit_code"] != 0
    assert len(bad["history"]) < len(good["history"]) and bad["last_step"] < STEPS

    report = (sweep_dir / "results.md").read_text()
    saved = STEPS - bad["last_step"]
    assert (f"Hyperband stopped 1 of 2 runs early (run-001 at step {bad['last_step']}); a full run is {STEPS} steps. "
            f"The sweep ran {STEPS + bad['last_step']} optimizer steps instead of {2 * STEPS}") in report
    rows = {r["run"]: r for r in csv.DictReader(open(sweep_dir / "results.csv"))}
    assert rows["run-001"]["state"] == "stopped" and int(rows["run-001"]["steps"]) == STEPS - saved
    assert (sweep_dir / "plots" / "all_runs.png").exists()


# eval_loss at steps 0, 10, ..., 60 in the first attempt (lr 0.218, 0.395 finished; 0.816 is running)
MEASURED = {"run-000": [11.04, 20.44, 12.2, 11.66, 8.71, 8.65, 8.31],
            "run-001": [11.04, 57.87, 36.93, 34.49, 18.3, 10.28, 8.71],
            "run-002": [11.04, 135.94, 230.8, 202.43, 187.72, 86.37, 36.91]}


def _stopped_at(config: dict, step0: bool) -> int | None:
    """The step at which W&B's engine first stops run-002, reading its values as they come in."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps
    for upto in range(2, 8):
        runs = []
        for name, values in MEASURED.items():
            running = name == "run-002"
            values = values[:upto] if running else values
            values = values if step0 else values[1:]
            runs.append(sweeps.SweepRun(name=name, state=sweeps.RunState.running if running else
                                        sweeps.RunState.finished,
                                        sampledHistory=[{"eval_loss": v} for v in values]))
        if any(r.name == "run-002" for r in sweeps.stop_runs(config, runs)):
            return 10 * (upto - 1)
    return None


def test_step0_evaluation_hides_a_blow_up_from_hyperband():
    shipped = yaml.safe_load((ROOT / "configs/sweeps/pretrain_lr_hyperband.yaml").read_text())
    assert "train.eval_at_start=false" in shipped["command"]
    engine = {k: v for k, v in shipped.items() if k != "run_cap"}
    assert _stopped_at(engine, step0=True) is None  # best-so-far stays at the untrained 11.04
    assert _stopped_at(engine, step0=False) == 20
