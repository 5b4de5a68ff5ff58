"""run_squad.py under torchrun (gloo, 2 CPU processes) trains on the same global batch as one process:
equal losses and gradient norms per step, and rank 0 alone writes predictions and checkpoints."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from groupbert.config import load_config
from groupbert.tasks.squad import finetune
from squad_fixtures import write_nested

ROOT = Path(__file__).resolve().parents[2]
# what these runs add to the tiny fine-tuning run (conftest.py): global batch 2 micro-batches of 2 features;
# under torchrun each rank runs one
DDP = ["train.gradient_accumulation=2", "train.micro_batch_size=2", "train.max_steps=3", "runtime.threads=1"]


def _train(run):
    recs = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r for r in recs if r["kind"] == "train"}


@pytest.mark.slow  # ~30 s on 2 shared cores (two interpreters importing torch)
def test_two_process_squad_equals_one_process(tmp_path, squad_overrides):
    data = write_nested(tmp_path / "squad.json")
    sets = [*squad_overrides, *DDP, f"squad.train_file={data}", f"squad.dev_file={data}"]
    finetune(load_config(None, sets), tmp_path / "single")
    (tmp_path / "empty.yaml").write_text("{}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "run_squad.py"), "--config", str(tmp_path / "empty.yaml"), "--output-dir",
                          str(tmp_path / "ddp"), *[a for s in sets for a in ("--set", s)]],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    single, ddp = _train(tmp_path / "single"), _train(tmp_path / "ddp")
    assert sorted(ddp) == sorted(single) == [1, 2, 3]
    for step in single:
        for key in ("loss", "grad_norm"):
            assert ddp[step][key] == pytest.approx(single[step][key], rel=2e-5, abs=1e-6), (step, key)
    a = json.loads((tmp_path / "single" / "eval_results.json").read_text())
    b = json.loads((tmp_path / "ddp" / "eval_results.json").read_text())
    assert (a["exact_match"], a["f1"]) == pytest.approx((b["exact_match"], b["f1"]))
