"""The warmup study end to end at toy size: every output is written, a second invocation reruns nothing,
and it works from any working directory."""
import json
import math

import pytest

from groupbert.experiments import warmup_study as warmup

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_study_runs_reports_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repo root: --config and the run directories must still resolve
    monkeypatch.setenv("WANDB_MODE", "disabled")
    argv = ["--out", "study", "--optimizers", "adamw,lion_ar", "--warmups", "0.5", "--lr-multipliers", "1",
            "--steps", "4", "--batch-size", "2", "--seq-len", "16", "--vocab-size", "300", "--workers", "2",
            "--update-every", "1"]
    assert warmup.main(argv) == 0
    out = tmp_path / "study"
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert sorted((c["optimizer"], c["warmup"]) for c in cells) == [("adamw", 0.5), ("lion_ar", 0.5)]
    assert all(c["status"] == "done" and math.isfinite(c["final_loss"]) for c in cells)
    table = (out / "results.md").read_text()
    assert "| AdamW | 0.001 | 50% |" in table and "| LionAR | 0.00025 | 50% |" in table
    assert (out / "results.csv").read_text().count("\n") == 1 + len(cells)
    for png in ("loss_vs_lr.png", "update_sizes.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = (out / "runs" / "adamw-w0.5-lr0.001" / "metrics.jsonl").read_text()
    assert '"kind": "update"' in metrics  # update-size metrics were logged for the plot

    logs = {p.name: p.stat().st_size for p in (out / "runs").glob("*.log")}
    assert warmup.main(argv) == 0  # everything finished: nothing runs again
    assert {p.name: p.stat().st_size for p in (out / "runs").glob("*.log")} == logs
