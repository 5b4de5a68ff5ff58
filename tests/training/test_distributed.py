"""torchrun + DDP on CPU (gloo, 2 processes): the same global batch gives the 1-process run's losses, the
data are sharded without overlap, a 2-process checkpoint resumes on 1 process, and a global batch that
does not split over the ranks is a configuration error (exit 2)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch

from groupbert.config import ConfigError, load_config
from groupbert.data.loader import EpochBatches
from groupbert.training.distributed import check_world_size
from groupbert.tasks.pretraining import pretrain

ROOT = Path(__file__).resolve().parents[2]
# what these runs add to the shared tiny run (conftest.py): global batch 4 micro-batches x 4 sequences;
# 2 ranks run 2 micro-batches each (no_sync on the first)
DDP = ["optimizer.lr=2e-3", "schedule.warmup_steps=2", "train.gradient_accumulation=4", "train.micro_batch_size=4",
       "train.max_steps=6", "train.checkpoint_every=3", "runtime.threads=1", "runtime.backend=cpu"]


def _train_losses(run_dir):
    recs = map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r for r in recs if r["kind"] == "train"}


def _torchrun(nproc, args, cwd, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "run_pretraining.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_round_robin_shards_cover_each_sequence_once_per_epoch():
    ds = datasets.Dataset.from_dict({"x": list(range(22))})  # 5 micro-batches of 4, 2 sequences dropped
    one = EpochBatches(ds, 4, seed=3)
    ranks = [EpochBatches(ds, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    single = [next(one)["x"].tolist() for _ in range(10)]  # two epochs
    dealt = []
    for _ in range(5):
        dealt += [next(ranks[0])["x"].tolist(), next(ranks[1])["x"].tolist()]
    assert dealt == single  # the ranks together draw what one process draws, in the same order
    seen = sorted(x for b in dealt[:5] for x in b)
    assert len(seen) == len(set(seen)) == 20  # one epoch: no sequence twice
    assert ranks[0].state_dict() == one.state_dict()  # the position is global: resumable on any world size


def test_global_batch_must_split_over_the_ranks():
    cfg = load_config(None, ["train.gradient_accumulation=3"])
    assert check_world_size(cfg, 3) == 1
    with pytest.raises(ConfigError, match="train.gradient_accumulation.*does not split over 2 processes"):
        check_world_size(cfg, 2)


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, tiny_config_at):
    tmp = tmp_path_factory.mktemp("ddp")
    pretrain(tiny_config_at(tmp, *DDP), tmp / "single")
    (tmp / "tiny.yaml").write_text("{}\n")
    return tmp


@pytest.mark.slow  # ~90 s on 2 shared cores: a 1-process run, a 2-process torchrun, a 1-process resume
def test_two_gloo_processes_equal_one_process_and_resume_on_one(one_process_run, tmp_path, tiny_overrides,
                                                                tiny_config_at):
    tmp = one_process_run
    sets = [a for s in [*tiny_overrides, f"data.cache_dir={tmp / 'cache'}", *DDP] for a in ("--set", s)]
    out = _torchrun(2, ["--config", str(tmp / "tiny.yaml"), "--output-dir", str(tmp_path / "ddp"), *sets], tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    single, ddp = _train_losses(tmp / "single"), _train_losses(tmp_path / "ddp")
    assert sorted(ddp) == sorted(single) == list(range(1, 7))
    for step in single:
        for key in ("loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "grad_norm"):
            assert ddp[step][key] == pytest.approx(single[step][key], rel=2e-5, abs=1e-6), (step, key)
    run_rec = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()][0]
    assert run_rec["world_size"] == 2
    # rank 0 alone wrote the run directory; the final weights equal the 1-process run's
    from safetensors.torch import load_file
    a = load_file(tmp / "single" / "checkpoints" / "step-6" / "model.safetensors")
    b = load_file(tmp_path / "ddp" / "checkpoints" / "step-6" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)

    # the 2-process checkpoint at step 3 continues on 1 process with the 1-process run's losses
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "ddp" / "checkpoints" / "step-3", cut / "checkpoints" / "step-3")
    (cut / "checkpoints" / "latest").write_text("step-3\n")
    shutil.copy(tmp_path / "ddp" / "config.yaml", cut / "config.yaml")
    pretrain(tiny_config_at(tmp, *DDP), cut, resume=True)
    resumed = _train_losses(cut)
    for step in (4, 5, 6):
        assert resumed[step]["loss"] == pytest.approx(single[step]["loss"], rel=2e-5), step


def test_indivisible_global_batch_exits_2_under_torchrun(tmp_path):
    (tmp_path / "tiny.yaml").write_text("{}\n")
    out = _torchrun(2, ["--config", str(tmp_path / "tiny.yaml"), "--output-dir", str(tmp_path / "bad"),
                        "--set", "train.gradient_accumulation=3", "--quiet"], tmp_path)
    assert out.returncode != 0
    assert "train.gradient_accumulation" in out.stderr and "does not split over 2 processes" in out.stderr
    assert "exitcode  : 2" in out.stderr  # torchrun's report of the rank that failed first
    assert not (tmp_path / "bad").exists()
