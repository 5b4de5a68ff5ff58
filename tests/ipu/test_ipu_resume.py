"""IPU checkpoints hold the optimizer's device state in PopTorch 3.4's layout, and a resumed IPU run equals
the uninterrupted one.

PopTorch 3.4 (graphcore/poptorch@sdk-release-3.4): after a run, ``optimizer.state_dict()`` of a
``poptorch.optim`` optimizer reads the device state (python/_poplar_executor.py ``_get_optim_state_dict``,
python/poptorch.cpp ``readOptimizerState``) as ``{"ipu_state", "ipu_param", "state", "param_groups"}``,
``ipu_state`` keyed by PopART's names (``Accl1___<weight>``, ``Accl2___<weight>``, ``Step___<weight>``;
graphcore/popart willow/src/patterns/adamdecompose.cpp, no ``Step___`` for LAMB without bias correction);
``load_state_dict`` accepts only that layout (python/optim.py ``Optimizer.set_state_dict``) and a state
loaded before ``trainingModel`` is written to the device on attach (``_on_device_attach``).
"""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from groupbert.ipu import emulator as poptorch
from groupbert.tasks.pretraining import pretrain
from groupbert.training import checkpoint as ckpt_io
from groupbert.training.checkpoint import CheckpointError, read_checkpoint

# the shared tiny run (conftest.py) with 4 layers pipelined over 2 IPUs, each replicated twice
PIPELINED_REPLICATED = [
    "model.num_layers=4", "data.max_documents=8", "train.micro_batch_size=2", "schedule.name=linear",
    "schedule.warmup_steps=2", "runtime.backend=ipu-model", "ipu.layers_per_ipu=[2,2]", "ipu.replication_factor=2",
    "ipu.device_iterations=2", "train.gradient_accumulation=5", "train.max_steps=4", "train.checkpoint_every=2",
    "train.eval_every=0", "train.eval_at_start=false", "logging.log_every=2", "train.max_grad_norm=0",
    "optimizer.lr=2e-3"]


def _losses(run):
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in records if r.get("kind") == "train"}


def _cut(full, cut, step):
    """``cut``: the run directory as if killed right after checkpoint ``step`` of ``full``."""
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / f"step-{step}", cut / "checkpoints" / f"step-{step}")
    (cut / "checkpoints" / "latest").write_text(f"step-{step}\n")
    shutil.copy(full / "config.yaml", cut / "config.yaml")


@pytest.mark.parametrize("optimizer", [["optimizer.name=adamw"],
                                       ["optimizer.name=lamb", "optimizer.bias_correction=false"]],
                         ids=["adamw", "lamb_no_bias"])
def test_ipu_run_resumed_from_a_checkpoint_equals_the_uninterrupted_run(tmp_path, tiny_config, optimizer):
    """runtime.backend=ipu-model, pipelined (2 IPUs) and replicated (2): the checkpoint at step 2 stores the
    optimizer's device state in PopTorch's layout; the run resumed from it has the losses, weights and
    optimizer state of the uninterrupted run."""
    cfg = tiny_config(*PIPELINED_REPLICATED, *optimizer)
    full, cut = tmp_path / "full", tmp_path / "cut"
    pretrain(cfg, full)

    ckpt = read_checkpoint(full / "checkpoints" / "step-2")
    meta = ckpt.state["optimizer"]
    assert meta["format"] == "poptorch" and meta["class"].rsplit(".", 1)[1].lower() == optimizer[0].split("=")[1]
    tensors = load_file(str(ckpt.path / "optimizer.safetensors"))
    state = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("ipu_state/")}
    params = {k.split("/", 1)[1] for k in tensors if k.startswith("ipu_param/")}
    assert len(state) == meta["ipu_state"] and len(params) == meta["ipu_param"] > 0
    weight = "model.bert.encoder.layer.0.attn.value.weight"
    assert f"Accl1___{weight}" in state and f"Accl2___{weight}" in state and state[f"Accl1___{weight}"].abs().sum() > 0
    bias_corrected = "optimizer.bias_correction=false" not in optimizer
    assert (f"Step___{weight}" in state) == bias_corrected  # LAMB without bias correction keeps no step count
    if bias_corrected:
        assert float(state[f"Step___{weight}"]) == 2.0
    assert f"learningRate___specific___{weight}" in params
    assert not any("." in k.split("/")[0] for k in tensors)  # torch's own (empty) state: nothing else

    _cut(full, cut, 2)
    pretrain(cfg, cut, resume=True)
    a, b = _losses(full), _losses(cut)
    assert sorted(b) == [4]  # the cut run has no records before its checkpoint
    assert b[4] == pytest.approx(a[4], rel=1e-6, abs=1e-7)
    for name in ("model.safetensors", "optimizer.safetensors"):
        x = load_file(str(full / "checkpoints" / "step-4" / name))
        y = load_file(str(cut / "checkpoints" / "step-4" / name))
        assert x.keys() == y.keys()
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=1e-6, atol=1e-7, msg=f"{name} {k}")


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x):
        return poptorch.identity_loss(self.lin(x).square().mean(), reduction="mean")


def _save(tmp_path, model, optimizer, step=1):
    ckpt_io.save_checkpoint(tmp_path, step, model, optimizer, {"task": "t"})
    return read_checkpoint(tmp_path / "checkpoints" / f"step-{step}")


def test_a_checkpoint_of_one_optimizer_format_is_refused_by_the_other(tmp_path):
    """A host (CPU/CUDA) optimizer's checkpoint on the IPU backend, and the other way round, is refused
    with a CheckpointError naming both formats (PopTorch itself refuses a CPU state: "Only IPU optimizer
    states can be loaded onto the IPU.", python/optim.py ``Optimizer.set_state_dict``)."""
    torch.manual_seed(0)
    model = _Tiny()
    host = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).backward()
    host.step()
    cpu_ckpt = _save(tmp_path / "cpu", model, host)
    assert cpu_ckpt.state["optimizer"]["format"] == "torch"
    with pytest.raises(CheckpointError, match="host optimizer's .* takes a PopTorch optimizer's"):
        ckpt_io.load_optimizer_state(poptorch.optim.AdamW(model.parameters(), lr=0.1), cpu_ckpt)

    ipu_opt = poptorch.optim.AdamW(model.parameters(), lr=0.1)
    pm = poptorch.trainingModel(model, optimizer=ipu_opt)
    pm(torch.randn(4, 3))
    ipu_ckpt = _save(tmp_path / "ipu", model, ipu_opt)
    assert ipu_ckpt.state["optimizer"]["format"] == "poptorch"
    with pytest.raises(CheckpointError, match="PopTorch optimizer's .* takes a host optimizer's"):
        ckpt_io.load_optimizer_state(torch.optim.AdamW(model.parameters(), lr=0.1), ipu_ckpt)


def test_poptorch_state_round_trips_through_a_checkpoint(tmp_path):
    """Saved after a run and loaded into a new ``poptorch.optim`` optimizer, the state (tensors, step
    counts, parameter groups) is what ``state_dict()`` returned; a state saved before compilation (both IPU
    entries None, as PopTorch returns them) loads as None again."""
    torch.manual_seed(0)
    model = _Tiny()
    fresh = poptorch.optim.LAMB(model.parameters(), lr=0.1)
    before = _save(tmp_path / "before", model, fresh)
    assert before.state["optimizer"]["ipu_state"] is None
    again = poptorch.optim.LAMB(model.parameters(), lr=0.1)
    ckpt_io.load_optimizer_state(again, before)
    assert again.state_dict()["ipu_state"] is None and not again.has_state()

    opt = poptorch.optim.LAMB(model.parameters(), lr=0.1)
    pm = poptorch.trainingModel(model, optimizer=opt)
    for _ in range(3):
        pm(torch.randn(4, 3))
    saved = opt.state_dict()
    ckpt = _save(tmp_path / "after", model, opt)
    pm.destroy()
    loaded = poptorch.optim.LAMB(model.parameters(), lr=0.5)
    ckpt_io.load_optimizer_state(loaded, ckpt)
    got = loaded.state_dict()
    for part in ("ipu_state", "ipu_param"):
        assert got[part].keys() == saved[part].keys()
        for k, v in saved[part].items():
            assert torch.equal(got[part][k], v), k
    assert float(got["ipu_state"]["Step___lin.weight"]) == 3.0
    assert got["param_groups"][0]["lr"] == 0.1 and got["param_groups"][0]["betas"] == (0.9, 0.999)
    assert loaded.ipu_state_is_dirty  # PopTorch writes it when the next model attaches
