"""benchmarks/gpu_check.sh, the prepared GPU pass: it parses, refuses bad arguments, and (slow) its CPU dry run
goes through every stage and writes report.json."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _env(**extra):
    return dict(os.environ, PYTHON=sys.executable, WANDB_MODE="disabled", **extra)


def test_script_parses():
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_help_and_bad_arguments(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, env=_env(), timeout=30)
    assert r.returncode == 0 and "--dry-run" in r.stdout and "report.json" in r.stdout
    r = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True, env=_env(), timeout=30)
    assert r.returncode == 2 and "--fast" in r.stderr
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30,
                       env=_env(GPU_CHECK_DEVICE="tpu", OUT=str(tmp_path / "out")))
    assert r.returncode == 2 and "GPU_CHECK_DEVICE" in r.stderr
    assert not (tmp_path / "out").exists()  # refused before writing anything


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure without CUDA")
def test_without_cuda_fails_clearly_and_still_reports(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=_env(OUT=str(out)), timeout=120)
    assert r.returncode == 1
    assert "no CUDA" in r.stdout + r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] is False and report["failed_stages"] == ["device"]
    assert report["torch"] and report["cuda_available"] is False


def test_stages_left_out_and_the_device_stage_kept(tmp_path):
    out = tmp_path / "out"
    rest = "tests,bench_train_step,bench_gpt2_step,bench_precision,pretrain,squad"
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=120,
                       env=_env(OUT=str(out), GPU_CHECK_SKIP=rest))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] and list(report["stages"]) == ["device"] and report["dry_run"]
    assert sum("left out" in n for n in report["notes"]) == 6
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=30,
                       env=_env(OUT=str(out), GPU_CHECK_SKIP="device"))
    assert r.returncode == 2 and "device" in r.stderr


@pytest.mark.slow  # the whole pass on CPU at smoke sizes: ~40 s on 2 shared cores
def test_cpu_dry_run_writes_the_report(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, cwd=tmp_path,
                       env=_env(OUT=str(out)), timeout=1200)
    report = json.loads((out / "report.json").read_text())
    assert r.returncode == 0, (report.get("failed_stages"), r.stdout[-3000:], r.stderr[-3000:])
    assert report["ok"] and report["dry_run"] and report["device"] == "cpu"
    assert set(report["stages"]) == {"device", "tests", "bench_train_step", "bench_gpt2_step", "bench_precision",
                                     "pretrain", "squad"}
    assert all(s["exit_code"] == 0 and s["seconds"] >= 0 for s in report["stages"].values())
    assert set(report["benchmarks"]) == {"bench_train_step", "bench_gpt2_step", "bench_precision"}
    assert report["benchmarks"]["bench_gpt2_step"]["headline"]["hf_over_ours_time"] > 0
    assert (out / "pytest.xml").exists()
    for run in ("pretrain", "squad"):
        assert report["runs"][run]["status"] == "finished" and report["runs"][run]["backend"] == "cpu"
        assert report["runs"][run]["final_eval"], run
