"""PopRun / PopDist on the IPU path: the environment PopRun exports, the options popdist.poptorch.Options
would build, and two emulated instances (one process each, as mpirun starts them) training exactly like
one process driving all the replicas."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from groupbert.config import ConfigError, load_config
from groupbert.ipu import poptorch
from groupbert.ipu.options import build_options
from groupbert.ipu.popdist import check_popdist_config, popdist_env
from groupbert.tasks.pretraining import pretrain

ROOT = Path(__file__).resolve().parents[2]
POD = {"POPDIST_NUM_TOTAL_REPLICAS": "16", "POPDIST_NUM_LOCAL_REPLICAS": "4", "POPDIST_NUM_IPUS_PER_REPLICA": "4",
       "POPDIST_REPLICA_INDEX_OFFSET": "8"}  # instance 2 of 4 on a POD64: replicas 8..11


def _set(monkeypatch, env):
    for k in list(os.environ):
        if k.startswith(("POPDIST_", "OMPI_COMM_WORLD")):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def test_environment_gives_instance_and_replicas(monkeypatch):
    _set(monkeypatch, {})
    assert popdist_env() is None
    _set(monkeypatch, POD)
    env = popdist_env()
    assert (env.num_instances, env.instance_index, env.local_replicas, env.total_replicas) == (4, 2, 4, 16)
    _set(monkeypatch, {**POD, "OMPI_COMM_WORLD_RANK": "1"})
    with pytest.raises(ConfigError, match="OMPI_COMM_WORLD_RANK=1 disagrees"):
        popdist_env()
    _set(monkeypatch, {**POD, "POPDIST_NUM_LOCAL_REPLICAS": "5"})
    with pytest.raises(ConfigError, match="not a multiple"):
        popdist_env()


def test_options_are_popdist_options(monkeypatch):
    _set(monkeypatch, POD)
    cfg = load_config(None, ["runtime.backend=ipu-model", "ipu.replication_factor=16", "ipu.layers_per_ipu=[3,3,3,3]",
                             "train.gradient_accumulation=16", "optimizer.name=lamb", "train.max_grad_norm=0"])
    check_popdist_config(cfg, popdist_env())
    opts = build_options(cfg)
    assert opts.replication_factor == 4  # this instance's replicas, not the pod's
    assert (opts.Distributed.processId, opts.Distributed.numProcesses) == (2, 4)
    bad = load_config(None, ["runtime.backend=ipu-model", "ipu.replication_factor=4", "ipu.layers_per_ipu=[3,3,3,3]",
                             "train.gradient_accumulation=16", "optimizer.name=lamb", "train.max_grad_norm=0"])
    with pytest.raises(ConfigError, match="poprun launched 16 replicas") as e:
        check_popdist_config(bad, popdist_env())
    assert e.value.key == "ipu.replication_factor"
    with pytest.raises(ConfigError, match="--ipus-per-replica 2") as e:
        check_popdist_config(load_config(None, ["ipu.replication_factor=16", "ipu.layers_per_ipu=[6,6]"]), popdist_env())
    assert e.value.key == "ipu.layers_per_ipu"


def test_emulator_refuses_instances_without_a_process_group(monkeypatch):
    import torch
    _set(monkeypatch, {})
    opts = poptorch.Options()
    opts.Distributed.configureProcessId(0, 2)
    class Model(torch.nn.Module):  # a training model needs a loss (PopTorch: "Couldn't find a loss in graph!")
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, x):
            return poptorch.identity_loss(self.lin(x).sum(), reduction="sum")

    model = Model()
    ex = poptorch.trainingModel(model, opts, poptorch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match="initialise a process group of 2 ranks"):
        ex(torch.ones(1, 2))


# what these runs add to the shared tiny run (conftest.py): 4 layers pipelined over 4 IPUs, 2 replicas
POD_RUN = ["model.num_layers=4", "data.max_documents=8", "train.micro_batch_size=2", "train.checkpoint_every=0",
       "train.max_steps=2", "schedule.name=constant", "schedule.warmup_steps=0", "runtime.threads=1",
       "optimizer.name=lamb", "optimizer.lr=2e-3", "train.max_grad_norm=0", "runtime.backend=ipu-model",
       "ipu.layers_per_ipu=[1,1,1,1]", "train.gradient_accumulation=9", "ipu.replication_factor=2"]


def _train(run):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


@pytest.mark.slow  # ~40 s on 2 shared cores: one reference process, then two instance processes
def test_two_emulated_instances_equal_one_process(tmp_path, tiny_overrides):
    sets = [*tiny_overrides, *POD_RUN, f"data.cache_dir={tmp_path / 'cache'}"]
    pretrain(load_config(None, sets), tmp_path / "one")  # 2 replicas in one process (no PopRun)
    (tmp_path / "empty.yaml").write_text("{}\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for instance in range(2):  # what poprun --num-instances 2 --num-replicas 2 --ipus-per-replica 4 exports
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
               "POPDIST_NUM_TOTAL_REPLICAS": "2", "POPDIST_NUM_LOCAL_REPLICAS": "1",
               "POPDIST_NUM_IPUS_PER_REPLICA": "4", "POPDIST_REPLICA_INDEX_OFFSET": str(instance),
               "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": str(instance),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(
            [sys.executable, str(ROOT / "run_pretraining.py"), "--config", str(tmp_path / "empty.yaml"),
             "--output-dir", str(tmp_path / "pod"), *[a for s in sets for a in ("--set", s)]],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    one, pod = _train(tmp_path / "one"), _train(tmp_path / "pod")
    assert [r["step"] for r in pod] == [r["step"] for r in one] == [1, 2]
    for a, b in zip(one, pod):
        for key in ("loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    from safetensors.torch import load_file
    wa = load_file(tmp_path / "one" / "checkpoints" / "step-2" / "model.safetensors")
    wb = load_file(tmp_path / "pod" / "checkpoints" / "step-2" / "model.safetensors")
    import torch
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)
