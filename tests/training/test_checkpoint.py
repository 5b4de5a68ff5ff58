"""Checkpoints: exact round trip, atomic writes, corruption and mismatch detection."""
import json

import pytest
import torch

from groupbert.training import checkpoint as ck


class Tied(torch.nn.Module):
    def __init__(self, n=7):
        super().__init__()
        self.emb = torch.nn.Embedding(11, n)
        self.lin = torch.nn.Linear(n, n)
        self.out = torch.nn.Linear(n, 11, bias=False)
        self.out.weight = self.emb.weight  # tied, stored once


def _trained(steps=3):
    torch.manual_seed(0)
    model = Tied()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        model.out(model.lin(model.emb(torch.arange(5)))).sum().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    model, opt = _trained()
    torch.manual_seed(123)
    path = ck.save_checkpoint(tmp_path, 3, model, opt, {"data": {"epoch": 1}})
    expected_draw = torch.rand(3)
    assert path.name == "step-3" and (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-3"

    fresh, fresh_opt = Tied(), None
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    c = ck.read_checkpoint(tmp_path)
    ck.load_model_weights(fresh, c)
    ck.load_optimizer_state(fresh_opt, c)
    ck.restore_rng(c)
    assert torch.equal(torch.rand(3), expected_draw)
    assert fresh.out.weight is fresh.emb.weight
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = opt.state_dict(), fresh_opt.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i in sa["state"]:
        for k in sa["state"][i]:
            assert torch.equal(torch.as_tensor(sa["state"][i][k]), torch.as_tensor(sb["state"][i][k]))
    assert c.state["data"] == {"epoch": 1} and c.step == 3


def test_crash_while_saving_leaves_previous_checkpoint_latest(tmp_path, monkeypatch):
    model, opt = _trained()
    ck.save_checkpoint(tmp_path, 1, model, opt, {})

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        ck.save_checkpoint(tmp_path, 2, model, opt, {})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step-1"]
    assert ck.read_checkpoint(tmp_path).step == 1


def test_corrupt_file_is_detected(tmp_path):
    model, opt = _trained()
    path = ck.save_checkpoint(tmp_path, 3, model, opt, {})
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ck.CheckpointError, match="corrupt"):
        ck.read_checkpoint(tmp_path)
    (path / "state.json").write_text("{not json")
    with pytest.raises(ck.CheckpointError, match="state.json"):
        ck.read_checkpoint(path)


def test_mismatched_model_and_optimizer_are_named(tmp_path):
    model, opt = _trained()
    ck.save_checkpoint(tmp_path, 3, model, opt, {})
    c = ck.read_checkpoint(tmp_path)
    with pytest.raises(ck.CheckpointError, match="does not match|cannot load"):
        ck.load_model_weights(Tied(n=9), c)
    with pytest.raises(ck.CheckpointError, match="SGD"):
        ck.load_optimizer_state(torch.optim.SGD(Tied().parameters(), lr=1.0), c)


def test_missing_checkpoint_errors(tmp_path):
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.read_checkpoint(tmp_path / "nope")
    (tmp_path / "run").mkdir()
    with pytest.raises(ck.CheckpointError, match="no checkpoint"):
        ck.read_checkpoint(tmp_path / "run")


def test_checkpoint_holds_no_pickles(tmp_path):
    model, opt = _trained()
    path = ck.save_checkpoint(tmp_path, 3, model, opt, {})
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "optimizer.safetensors",
                                                      "rng.safetensors", "state.json"]
    json.loads((path / "state.json").read_text())


def test_keep_prunes_old_checkpoints_but_never_the_newest(tmp_path):
    model, opt = _trained()
    for step in (1, 2, 3, 4):
        ck.save_checkpoint(tmp_path, step, model, opt, {}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-3", "step-4"]
