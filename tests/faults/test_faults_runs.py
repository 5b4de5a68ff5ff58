"""Faults injected into training runs, each ending in one of three states: continued exactly, refused with
exit 2 naming the cause, or stopped with a clear message and nothing lost.

The references are uninterrupted runs of the same command: a faulted-then-resumed run must write the same
records (the same losses, the same evaluations, each once) as a run that never saw the fault.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs/groupbert/tiny_phase1.yaml"
# what these runs add to the shared tiny run (conftest.py): 24 steps, a checkpoint every 8, so the last
# checkpoint is written before the final evaluation
RUN = ["train.eval_batches=1", "runtime.threads=1", "train.max_steps=24", "train.checkpoint_every=8",
       "train.keep_checkpoints=2", "train.eval_every=0", "schedule.warmup_steps=4"]
VOLATILE = {"time", "eval_seconds", "seq_per_s", "tokens_per_s", "tflops", "mfu", "git_commit", "error"}


def _env():
    return dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(ROOT), GROUPBERT_CUSTOM_OPS="off")


def _sets(overrides):
    return [a for s in overrides for a in ("--set", s)]


def cli(*args, prelude: str = "", timeout=300):
    """run_pretraining.py in a subprocess; ``prelude`` is Python run first (to inject a fault)."""
    code = f"{prelude}\nimport runpy, sys\nsys.argv = ['run_pretraining.py', *sys.argv[1:]]\n" \
           f"runpy.run_path({str(ROOT / 'run_pretraining.py')!r}, run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def records(run, kind=None):
    out = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in out if kind is None or r["kind"] == kind]


def comparable(run):
    """The records without wall-clock fields: what an uninterrupted run and a resumed one must share."""
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records(run)]


def hidden_leftovers(run):
    return [p.name for p in (run / "checkpoints").rglob(".*") if p.name != ".lock"]


@pytest.fixture(scope="module")
def sets(tiny_overrides, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return [*tiny_overrides, *RUN, f"data.cache_dir={cache}"]


@pytest.fixture(scope="module")
def reference(sets, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    r = cli("--config", str(RECIPE), "--output-dir", str(run), "--quiet", *_sets(sets))
    assert r.returncode == 0, r.stderr
    return run


# A SIGKILL from inside the process at the n-th evaluation (the first is step 0's, the second the final one).
KILL_AT_EVAL = """
import os, signal
from groupbert.training import engine
_evaluate, _calls = engine._evaluate, []
def _killing(*a, **k):
    _calls.append(1)
    if len(_calls) == {n}:
        os.kill(os.getpid(), signal.SIGKILL)
    return _evaluate(*a, **k)
engine._evaluate = _killing
"""


def test_kill_during_the_final_evaluation_then_resume_evaluates_once(reference, sets, tmp_path):
    run = tmp_path / "run"
    r = cli("--config", str(RECIPE), "--output-dir", str(run), "--quiet", *_sets(sets),
            prelude=KILL_AT_EVAL.format(n=2))
    assert r.returncode == -signal.SIGKILL
    state = json.loads((run / "checkpoints" / "step-24" / "state.json").read_text())
    assert state["final"] is False and not (run / "eval_results.json").exists()
    r = cli("--resume", str(run), "--quiet")
    assert r.returncode == 0, r.stderr
    assert comparable(run) == comparable(reference)
    assert [e["step"] for e in records(run, "eval")] == [0, 24]
    assert json.loads((run / "eval_results.json").read_text())["eval_loss"] == records(reference, "eval")[-1]["eval_loss"]
    # a resume of the finished run has nothing to do and changes no result
    before = (run / "eval_results.json").read_text()
    assert cli("--resume", str(run), "--quiet").returncode == 0
    assert (run / "eval_results.json").read_text() == before and comparable(run) == comparable(reference)


def test_sigterm_saves_at_the_next_step_and_resume_continues_exactly(reference, sets, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_pretraining.py"), "--config", str(RECIPE),
                             "--output-dir", str(run), "--quiet", *_sets(sets)], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (
            (run / "metrics.jsonl").exists() and '"kind": "train"' in (run / "metrics.jsonl").read_text()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    t = time.time()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert time.time() - t < 30                       # one step and one save, not the rest of the run
    end = records(run)[-1]
    assert end["kind"] == "end" and end["status"] == "stopped"
    step = end["step"]
    assert 0 < step < 24 and f"stopped: SIGTERM at step {step}" in err and f"--resume {run}" in err
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step-{step}"
    assert hidden_leftovers(run) == []
    r = cli("--resume", str(run), "--quiet")
    assert r.returncode == 0, r.stderr
    assert comparable(run) == comparable(reference)


def test_a_second_run_or_resume_into_a_run_in_use_is_refused(reference, sets, tmp_path, capsys):
    import run_pretraining
    from groupbert.cli import main
    from groupbert.training.run_dir import RunLock

    lock = RunLock(reference)   # a run in progress holds the directory (another open file: flock conflicts)
    try:
        metrics = (reference / "metrics.jsonl").read_bytes()
        assert main("pretrain", run_pretraining._pretrain, ["--resume", str(reference), "--quiet"]) == 2
        assert "is in use by a running job" in capsys.readouterr().err
        r = cli("--resume", str(reference), "--quiet")   # another process
        assert r.returncode == 2 and f"pid {os.getpid()}" in r.stderr and "Traceback" not in r.stderr
        assert (reference / "metrics.jsonl").read_bytes() == metrics
    finally:
        lock.release()


@pytest.mark.parametrize("change", ["optimizer.lr=1e-3", "optimizer.weight_decay=0.1", "optimizer.beta2=0.98",
                                    "schedule.warmup_steps=2", "data.seq_len=32", "train.seed=1"])
def test_resume_with_changed_hyperparameters_is_refused_naming_the_key(reference, change, capsys):
    import run_pretraining
    from groupbert.cli import main

    key = change.split("=")[0]
    kept = {f: (reference / f).read_bytes() for f in ("metrics.jsonl", "config.yaml")}
    assert main("pretrain", run_pretraining._pretrain, ["--resume", str(reference), "--set", change, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert key in err and "in the run" in err and "train.init_checkpoint" in err
    assert {f: (reference / f).read_bytes() for f in kept} == kept


def test_resume_may_change_how_often_it_logs_saves_and_evaluates(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "checkpoints" / "step-24")
    (run / "checkpoints" / "latest").write_text("step-16\n")
    r = cli("--resume", str(run), "--quiet", "--set", "train.checkpoint_every=4", "--set", "logging.log_every=1")
    assert r.returncode == 0, r.stderr
    assert comparable(run) == comparable(reference)
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-20", "step-24"]


def test_resume_may_train_longer(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    r = cli("--resume", str(run), "--quiet", "--set", "train.max_steps=28")
    assert r.returncode == 0, r.stderr
    assert comparable(run)[:len(comparable(reference)) - 1] == comparable(reference)[:-1]  # its end record aside
    assert [r["step"] for r in records(run, "train")] == list(range(1, 29))
    assert [r["step"] for r in records(run, "eval")] == [0, 24, 28]
    assert "max_steps: 28" in (run / "config.yaml").read_text()


def test_a_run_killed_before_its_first_checkpoint_is_started_again_not_appended(reference, sets, tmp_path, capsys):
    import run_pretraining
    from groupbert.cli import main

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(reference / "config.yaml", run / "config.yaml")   # what the dead attempt had written
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in
                                               (reference / "metrics.jsonl").read_text().splitlines()[:5]))
    dead = {f: (run / f).read_bytes() for f in ("config.yaml", "metrics.jsonl")}
    argv = ["--config", str(RECIPE), "--output-dir", str(run), "--quiet", *_sets(sets)]
    assert main("pretrain", run_pretraining._pretrain, argv) == 2
    assert "stopped before its first checkpoint" in capsys.readouterr().err
    assert {f: (run / f).read_bytes() for f in dead} == dead          # an existing run is never overwritten
    r = cli("--resume", str(run), "--quiet")
    assert r.returncode == 0, r.stderr
    assert comparable(run) == comparable(reference)                 # one run record, no duplicates


@pytest.fixture
def nan_after_update(monkeypatch):
    """``nan_after_update(n)``: the n-th update turns a weight into NaN, after its loss was computed."""
    import torch
    from groupbert.training.steppers import HostStepper

    run_step = HostStepper.run

    def install(n):
        def corrupting(self, batches, step):
            result = run_step(self, batches, step)
            if step == n - 1:
                with torch.no_grad():
                    next(self.model.parameters()).fill_(float("nan"))
            return result
        monkeypatch.setattr(HostStepper, "run", corrupting)
    return install


@pytest.mark.parametrize("checkpoint_every", [0, 1])
def test_non_finite_weights_after_the_last_update_are_never_saved(sets, tmp_path, capsys, nan_after_update,
                                                                    checkpoint_every):
    """Divergence on the last update shows in no loss: the weights are checked before the final evaluation
    and before every save; exit 1, status "diverged", no checkpoint of it."""
    import run_pretraining
    from groupbert.cli import main

    nan_after_update(2)
    run = tmp_path / "run"
    argv = ["--config", str(RECIPE), "--output-dir", str(run), "--quiet",
            *_sets([*sets, "train.max_steps=2", f"train.checkpoint_every={checkpoint_every}",
                    "schedule.warmup_steps=0"])]
    assert main("pretrain", run_pretraining._pretrain, argv) == 1
    assert "weights became non-finite at step 2" in capsys.readouterr().err
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == (["step-1"] if checkpoint_every else [])
    end = records(run)[-1]
    assert end["status"] == "diverged" and "non-finite" in end["error"]
    assert not (run / "eval_results.json").exists()


def test_a_non_finite_checkpoint_never_becomes_latest(sets, tmp_path, nan_after_update):
    """Weights turned to NaN by the 6th update (after its loss): the save at step 6 is refused, step-4 stays
    the latest and the run ends "diverged"."""
    from groupbert.config import load_config
    from groupbert.tasks.pretraining import pretrain
    from groupbert.training import engine

    nan_after_update(6)
    run = tmp_path / "run"
    with pytest.raises(engine.Diverged, match="weights became non-finite at step 6"):
        pretrain(load_config(None, [*sets, "train.checkpoint_every=2"]), run)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-4"
    assert not (run / "checkpoints" / "step-6").exists() and records(run)[-1]["status"] == "diverged"


def test_fp16_run_that_skips_every_step_is_reported_diverged(sets, tmp_path):
    from groupbert.config import load_config
    from groupbert.tasks.pretraining import pretrain
    from groupbert.training import engine

    run = tmp_path / "run"
    cfg = load_config(None, [*sets, "train.max_steps=3", "train.checkpoint_every=0", "schedule.warmup_steps=0",
                             "runtime.precision=fp16",
                             "runtime.loss_scale_init=1099511627776"])
    with pytest.raises(engine.Diverged, match="skipped all 3 optimizer steps"):
        pretrain(cfg, run)
    assert records(run)[-1]["status"] == "diverged"


def test_interrupted_writes_are_cleaned_and_a_moved_aside_step_restored(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    ckpts = run / "checkpoints"
    (ckpts / ".step-32.tmp-99999").mkdir()
    (ckpts / ".step-32.tmp-99999" / "model.safetensors").write_bytes(b"\0" * 1_000_000)
    (ckpts / ".latest.tmp-99999").write_text("step-32\n")
    (ckpts / "step-24" / ".state.json.tmp-99999").write_text("{")
    (ckpts / "step-24").rename(ckpts / ".step-24.old-99999")   # killed between the two renames of a rewrite
    r = cli("--resume", str(run))
    assert r.returncode == 0, r.stderr
    assert "restored step-24" in r.stderr and "removed .step-32.tmp-99999 (1.0 MB)" in r.stderr
    assert hidden_leftovers(run) == [] and (ckpts / "step-24" / "state.json").exists()
    assert comparable(run)[:-1] == comparable(reference)[:-1]


def test_edited_state_and_pointers_outside_the_run_are_refused(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    state_file = run / "checkpoints" / "step-24" / "state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "step": 8}))
    r = cli("--resume", str(run))
    assert r.returncode == 2 and "state.json" in r.stderr and "Traceback" not in r.stderr
    state_file.write_text(json.dumps({**state, "scheduler_step": 8}))
    r = cli("--resume", str(run))
    assert r.returncode == 2 and "changed after it was written" in r.stderr
    state_file.write_text(json.dumps(state))
    (run / "checkpoints" / "latest").write_text(f"../../{reference.parent.name}/run/checkpoints/step-24\n")
    r = cli("--resume", str(run))
    assert r.returncode == 2 and "not a step-N checkpoint" in r.stderr


@pytest.mark.slow  # ~1 min: repeated kill -9 at random moments, including inside checkpoint writes
def test_random_kills_then_resume_end_equal_to_the_uninterrupted_run(reference, sets, tmp_path):
    run = tmp_path / "run"
    rng = random.Random(0)
    args = ["--config", str(RECIPE), "--output-dir", str(run), "--quiet", *_sets([*sets, "train.checkpoint_every=2"])]
    kills = 0
    for attempt in range(40):
        proc = subprocess.Popen([sys.executable, str(ROOT / "run_pretraining.py"), *args], cwd=ROOT, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            proc.wait(timeout=rng.uniform(2.5, 5.0))   # start-up ~3 s, 24 steps ~2 s: kill in steps and saves
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            kills += 1
            args = ["--resume", str(run), "--quiet"]
            continue
        assert proc.returncode == 0, proc.stderr.read()
        break
    assert kills >= 3, "the runs finished before they could be killed; lengthen them"
    reference_losses = [(r["step"], r["loss"]) for r in records(reference, "train")]
    assert [(r["step"], r["loss"]) for r in records(run, "train")] == reference_losses
    assert comparable(run) == comparable(reference) and hidden_leftovers(run) == []
