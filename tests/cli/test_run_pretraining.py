"""The CLI as a user runs it: exit codes, error messages naming key/file, kill and --resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# what these runs add to the shared tiny run (conftest.py)
CLI = ["train.eval_batches=1", "runtime.threads=1"]


def run_cli(*args, cwd=ROOT, **kw):
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "run_pretraining.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture
def cli_sets(tiny_overrides, tmp_path):
    """``cli_sets(*extra)``: the tiny run, CLI and ``extra`` as ``--set`` arguments, the cache under tmp_path."""
    def sets(*extra):
        out = []
        for s in [*tiny_overrides, *CLI, f"data.cache_dir={tmp_path / 'cache'}", *extra]:
            out += ["--set", s]
        return out
    return sets


def test_unknown_key_exits_2_naming_key_and_file(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  max_stepz: 3\n")
    r = run_cli("--config", str(cfg), "--output-dir", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "train.max_stepz" in r.stderr and "bad.yaml" in r.stderr
    assert not (tmp_path / "out").exists()


def test_bad_value_from_set_exits_2(tmp_path):
    r = run_cli("--config", str(ROOT / "configs/groupbert/tiny_phase1.yaml"), "--set", "optimizer.lr=0",
                "--output-dir", str(tmp_path / "out"))
    assert r.returncode == 2 and "optimizer.lr" in r.stderr and "--set" in r.stderr


def test_missing_corpus_exits_2_naming_the_file(tmp_path, cli_sets):
    r = run_cli("--config", str(ROOT / "configs/groupbert/tiny_phase1.yaml"), "--output-dir",
                str(tmp_path / "out"), *cli_sets(f"data.corpus={tmp_path}/missing.jsonl"))
    assert r.returncode == 2 and "missing.jsonl" in r.stderr


def test_resume_of_a_directory_without_run_exits_2(tmp_path):
    r = run_cli("--resume", str(tmp_path))
    assert r.returncode == 2 and "config.yaml" in r.stderr


@pytest.mark.slow  # ~50 s: 200 steps twice; tests/faults kills and resumes shorter runs in the fast suite
def test_kill_then_resume_matches_uninterrupted_run(tmp_path, cli_sets):
    cfgfile = ROOT / "configs/groupbert/tiny_phase1.yaml"
    common = cli_sets("train.max_steps=200", "train.checkpoint_every=10", "train.keep_checkpoints=2", "train.eval_every=0",
                      "schedule.warmup_steps=4")
    full = tmp_path / "full"
    assert run_cli("--config", str(cfgfile), "--output-dir", str(full), "--quiet", *common).returncode == 0

    killed = tmp_path / "killed"
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_pretraining.py"), "--config", str(cfgfile),
                             "--output-dir", str(killed), "--quiet", *common], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    # wait for the first committed checkpoint: step-N is renamed into place before `latest` names it
    while not (killed / "checkpoints" / "latest").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = (killed / "checkpoints" / "latest").read_text().strip()
    assert latest != "step-200", "the run finished before it could be killed; make it longer"

    r = run_cli("--resume", str(killed), "--quiet")
    assert r.returncode == 0, r.stderr

    def losses(run):
        recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in recs if r.get("kind") == "train"}
    a, b = losses(full), losses(killed)
    assert sorted(b) == list(range(1, 201))
    for step in range(1, 201):
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), step


def test_bad_prepared_shards_exit_2_before_training(tmp_path, capsys, tiny_overrides):
    """A missing, truncated or altered shard, or an unfinished preparation: exit 2 naming it, at start."""
    import run_pretraining
    from groupbert.cli import main
    from groupbert.data.prepare import main as prepare_main

    tiny = [*tiny_overrides, *CLI]
    prepared = tmp_path / "prepared"
    assert prepare_main([a for s in tiny for a in ("--set", s)] + ["--output", str(prepared), "--quiet"]) == 0
    manifest = json.loads((prepared / "manifest.json").read_text())
    shard = prepared / manifest["shards"]["train"][0]["path"]
    good = shard.read_bytes()

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("{}\n")   # every setting from --set

    def train(name):
        argv = [a for s in tiny + [f"data.prepared={prepared}", "train.max_steps=2"] for a in ("--set", s)]
        code = main("pretrain", run_pretraining._pretrain,
                    ["--config", str(recipe), *argv, "--output-dir", str(tmp_path / name), "--quiet"])
        return code, capsys.readouterr().err

    shard.write_bytes(good[:-7])
    code, err = train("truncated")
    assert code == 2 and shard.name in err and "truncated" in err
    shard.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    code, err = train("altered")
    assert code == 2 and shard.name in err and "checksum" in err
    shard.unlink()
    code, err = train("missing")
    assert code == 2 and shard.name in err and "missing" in err
    shard.write_bytes(good)
    (prepared / "manifest.json").rename(prepared / "manifest.moved")
    code, err = train("unfinished")
    assert code == 2 and "unfinished preparation" in err
    (prepared / "manifest.moved").rename(prepared / "manifest.json")
    assert train("good")[0] == 0
    assert not any((tmp_path / n / "checkpoints").exists() for n in ("truncated", "altered", "missing", "unfinished"))
