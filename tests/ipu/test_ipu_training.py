"""The application's IPU code path on the emulator: pipelined GroupBERT trained through PopTorch's
trainingModel equals plain CPU training on the same samples (Mean reduction)."""
import json

import pytest
import torch

import custom_ops
from groupbert.config import ConfigError, load_config
from groupbert.training.checkpoint import read_checkpoint
from groupbert.tasks.pretraining import pretrain
from safetensors.torch import load_file

# what these runs add to the shared tiny run (conftest.py): 4 layers to pipeline over 4 IPUs
IPU = ["model.num_layers=4", "data.max_documents=8", "train.micro_batch_size=2", "train.checkpoint_every=0",
       "schedule.name=constant", "schedule.warmup_steps=0"]


@pytest.fixture
def ipu_config(tiny_config):
    return lambda *extra: tiny_config(*IPU, *extra)


def _records(run, kind):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == kind]


@pytest.mark.parametrize("optimizer,packing", [("adamw", False), ("lamb", False), ("adamw", True)])
def test_emulated_pipeline_equals_plain_training(tmp_path, optimizer, packing, ipu_config):
    common = [f"optimizer.name={optimizer}", "optimizer.lr=2e-3", "train.max_steps=4", "train.gradient_accumulation=9",
              "ipu.replication_factor=2", "logging.log_every=2", "train.max_grad_norm=0", f"data.packing={packing}"]
    ipu_run, cpu_run = tmp_path / "ipu", tmp_path / "cpu"
    pretrain(ipu_config(*common, "runtime.backend=ipu-model", "ipu.device_iterations=2",
                        "ipu.layers_per_ipu=[1,1,1,1]"), ipu_run)
    try:  # the same arithmetic on both sides: nn.Conv1d and the Python update (the C++ ops round differently)
        pretrain(ipu_config(*common, "runtime.backend=cpu", "runtime.custom_ops=off"), cpu_run)
    finally:
        custom_ops.set_mode(None)

    a = load_file(str(read_checkpoint(ipu_run).path / "model.safetensors"))
    b = load_file(str(read_checkpoint(cpu_run).path / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    la = [r["loss"] for r in _records(ipu_run, "train")]
    lb = [r["loss"] for r in _records(cpu_run, "train")]
    assert la == pytest.approx(lb, rel=1e-5)
    assert len(la) == 2
    assert _records(ipu_run, "eval")[-1]["eval_mlm_loss"] == pytest.approx(
        _records(cpu_run, "eval")[-1]["eval_mlm_loss"], rel=1e-5)


def test_ipu_backend_rules_are_checked_before_any_work(tmp_path, ipu_config):
    """PopTorch's rules live in groupbert.ipu.rules; a job checks them first, before it prepares data."""
    from groupbert.ipu.rules import check_run_config

    def cfg(*sets):
        return load_config(None, ["runtime.backend=ipu-model", *sets])

    with pytest.raises(ConfigError, match="multiple of ipu.device_iterations"):
        check_run_config(cfg("ipu.device_iterations=3", "train.max_steps=10"))
    with pytest.raises(ConfigError, match="cannot run on the IPU") as e:
        check_run_config(cfg("optimizer.name=lion"))
    assert e.value.key == "optimizer.name"
    with pytest.raises(ConfigError, match="no gradient clipping"):
        check_run_config(cfg("optimizer.name=lamb"))
    with pytest.raises(ConfigError, match="at least 2 x 5 - 1 = 9") as e:
        check_run_config(cfg("ipu.layers_per_ipu=[3,3,3,3]", "train.gradient_accumulation=4"))
    assert e.value.key == "train.gradient_accumulation"
    with pytest.raises(ConfigError, match="use ipu.half"):
        check_run_config(cfg("runtime.precision=fp16"))
    with pytest.raises(ConfigError, match="no gradient clipping"):
        pretrain(ipu_config("runtime.backend=ipu-model", "optimizer.name=lamb",
                            f"data.cache_dir={tmp_path / 'never'}"), tmp_path / "run")
    assert not (tmp_path / "never").exists() and not (tmp_path / "run").exists()


def test_hardware_backend_without_an_ipu_is_a_clear_error(tmp_path, ipu_config):
    with pytest.raises(ConfigError, match="ipu-model"):
        pretrain(ipu_config("runtime.backend=ipu", "train.max_steps=1"), tmp_path / "x")


def test_ipu_run_resumes_exactly(tmp_path, ipu_config):
    extra = ["runtime.backend=ipu-model", "ipu.device_iterations=2", "ipu.layers_per_ipu=[2,2]",
             "train.gradient_accumulation=5", "train.max_steps=6", "train.checkpoint_every=2",
             "logging.log_every=2"]
    full = tmp_path / "full"
    pretrain(ipu_config(*extra), full)
    import shutil
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-2", cut / "checkpoints" / "step-2")
    (cut / "checkpoints" / "latest").write_text("step-2\n")
    shutil.copy(full / "config.yaml", cut / "config.yaml")
    pretrain(ipu_config(*extra), cut, resume=True)
    a = {r["step"]: r["loss"] for r in _records(full, "train")}
    b = {r["step"]: r["loss"] for r in _records(cut, "train")}
    assert b[4] == pytest.approx(a[4], rel=1e-6) and b[6] == pytest.approx(a[6], rel=1e-6)


def test_a_model_too_big_for_its_ipus_fails_naming_the_ipu(tmp_path, ipu_config):
    from groupbert.ipu.emulator.errors import OutOfMemoryError
    with pytest.raises(OutOfMemoryError, match="IPU"):
        pretrain(ipu_config("runtime.backend=ipu-model", "ipu.layers_per_ipu=[2,2]", "train.max_steps=1",
                            "train.gradient_accumulation=5", "ipu.ipu_memory_mb=2", "train.eval_at_start=false"),
                 tmp_path / "oom")
    assert not (tmp_path / "oom" / "checkpoints").exists()
