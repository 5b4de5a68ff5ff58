"""Mixed precision on the host path: fp16 loss scaling (static and dynamic) with our optimizers, and the
config keys. Expected values are worked out by hand in the comments or come from torch.optim.AdamW on the
unscaled fp32 gradients."""
import copy
import json
import shutil

import pytest
import torch

from groupbert.config import ConfigError, load_config
from groupbert.training.precision import LossScaler, autocast_dtype
from optimizers import LAMB, AdamW

CPU = torch.device("cpu")


def _state(opt):
    return {i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
            for i, s in enumerate(opt.state.values())}


def _assert_state_equal(a, b):
    assert a.keys() == b.keys()
    for i in a:
        assert a[i].keys() == b[i].keys()
        for k in a[i]:
            assert torch.equal(torch.as_tensor(a[i][k]), torch.as_tensor(b[i][k])), (i, k)


def test_one_scaled_step_is_the_unscaled_update_by_hand():
    # loss = 3 w, w0 = 1: g = 3 whatever the scale (1024 is a power of two, so unscaling is exact).
    # AdamW step 1 (bias-corrected): m_hat = g, v_hat = g^2, w1 = w0 - lr * g / (|g| + eps) = 1 - 0.1 * 3 / 3 = 0.9
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = AdamW([w], lr=0.1, weight_decay=0.0, eps=1e-8)
    scaler = LossScaler(CPU, enabled=True, loss_scale="dynamic", init_scale=1024.0, growth_interval=2)
    scaler.backward((3 * w).sum())
    assert w.grad.item() == 3 * 1024  # scaled gradient
    grad_norm, skipped = scaler.step(opt, [w], max_norm=float("inf"))
    assert not skipped and grad_norm == 3.0  # clipping sees the unscaled gradient
    assert w.item() == pytest.approx(0.9, abs=1e-7)
    assert scaler.scale == 1024.0 and scaler.skipped_steps == 0


@pytest.mark.parametrize("optimizer", ["adamw", "lamb"])
def test_dynamic_scale_skips_an_overflowing_step_and_halves(optimizer):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    make = {"adamw": lambda p: AdamW(p, lr=1e-2, weight_decay=0.01),
            "lamb": lambda p: LAMB(p, lr=1e-2, weight_decay=0.01)}[optimizer]
    opt = make(model.parameters())
    scaler = LossScaler(CPU, enabled=True, loss_scale="dynamic", init_scale=2.0 ** 10, growth_interval=2)
    x = torch.randn(4, 5)

    def micro_step(factor=1.0):  # gradient accumulation over two micro-batches, as HostStepper does
        opt.zero_grad(set_to_none=True)
        for half in (x[:2], x[2:]):
            scaler.backward(model(half).pow(2).mean() * factor / 2)
        return scaler.step(opt, model.parameters(), max_norm=1.0)

    # scale per step, by hand: 1024 (good, 1 in a row) -> overflow: 512, skipped -> good -> good: 2 in a row, x2
    assert micro_step()[1] is False and scaler.scale == 1024.0
    weights, state = copy.deepcopy(model.state_dict()), _state(opt)
    _, skipped = micro_step(factor=1e38)  # 1e38 x 1024 overflows fp32: inf gradients
    assert skipped and scaler.skipped_steps == 1 and scaler.scale == 512.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), f"{k} changed on a skipped step"
    _assert_state_equal(_state(opt), state)  # moments and step counters untouched
    assert micro_step()[1] is False and scaler.scale == 512.0
    assert micro_step()[1] is False and scaler.scale == 1024.0  # grown after 2 good steps in a row
    assert scaler.skipped_steps == 1
    assert scaler.record() == {"loss_scale": 1024.0, "skipped_steps": 1}


def test_static_scale_skips_but_keeps_its_value():
    w = torch.nn.Parameter(torch.ones(3))
    opt = AdamW([w], lr=0.1)
    scaler = LossScaler(CPU, enabled=True, loss_scale=128.0)
    scaler.backward((w * float("inf")).sum())
    _, skipped = scaler.step(opt, [w], max_norm=1.0)
    assert skipped and torch.equal(w.detach(), torch.ones(3)) and scaler.scale == 128.0
    assert opt.state == {} or all(not s for s in opt.state.values())
    for _ in range(3):
        opt.zero_grad()
        scaler.backward(w.sum())
        assert scaler.step(opt, [w], max_norm=1.0)[1] is False
    assert scaler.scale == 128.0 and scaler.skipped_steps == 1


def test_scaled_training_equals_torch_adamw_on_unscaled_gradients():
    torch.manual_seed(1)
    ours, ref = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
    ref.load_state_dict(ours.state_dict())
    opt = AdamW(ours.parameters(), lr=1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    scaler = LossScaler(CPU, enabled=True, loss_scale="dynamic", init_scale=2.0 ** 12, growth_interval=3)
    for i in range(6):
        x = torch.randn(8, 6)
        opt.zero_grad()
        scaler.backward(ours(x).pow(2).mean())
        scaler.step(opt, ours.parameters(), max_norm=float("inf"))
        ref_opt.zero_grad()
        ref(x).pow(2).mean().backward()
        ref_opt.step()
    for (k, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)
    assert scaler.scale == 2.0 ** 14  # doubled after steps 3 and 6 (growth_interval 3)


def test_config_keys_are_strict():
    assert load_config(None, ["runtime.precision=fp16"]).runtime.loss_scale == "dynamic"
    assert load_config(None, ["runtime.precision=fp16", "runtime.loss_scale=1024"]).runtime.loss_scale == 1024.0
    for bad in ("banana", "0", "-8"):
        with pytest.raises(ConfigError, match="runtime.loss_scale"):
            load_config(None, ["runtime.precision=fp16", f"runtime.loss_scale={bad}"])
    with pytest.raises(ConfigError, match="runtime.precision"):
        load_config(None, ["runtime.precision=fp8"])
    from groupbert.ipu.rules import check_run_config   # PopTorch's rules: checked when a job starts
    with pytest.raises(ConfigError, match="runtime.precision.*ipu.half"):
        check_run_config(load_config(None, ["runtime.precision=fp16", "runtime.backend=ipu-model"]))
    with pytest.raises(ConfigError, match="runtime.loss_scale_growth_interval"):
        load_config(None, ["runtime.loss_scale_growth_interval=0"])


def test_autocast_dtypes():
    """Explicit settings; what ``auto`` picks depends on the hardware (tests/training/test_precision_auto.py)."""
    assert autocast_dtype("fp32", CPU) is None
    assert autocast_dtype("bf16", CPU) == torch.bfloat16 and autocast_dtype("fp16", CPU) == torch.float16


def test_fp16_pretraining_logs_scale_and_skips_and_resumes(tmp_path, tiny_config):
    """A tiny fp16 run whose first scale (2^23) overflows: the first steps are skipped and the scale
    halves each time until the gradients fit (here at step 6); the checkpoint carries the scaler state."""
    from groupbert.training.checkpoint import read_checkpoint
    from groupbert.tasks.pretraining import pretrain
    # test_pretrain.py's tiny run (rate, warmup, a checkpoint at step 4), 6 steps in fp16
    cfg = tiny_config("optimizer.lr=2e-3", "schedule.warmup_steps=2", "train.max_steps=6", "train.checkpoint_every=4",
                      "train.eval_batches=1", "runtime.precision=fp16",
                      "runtime.loss_scale_init=8388608", "runtime.loss_scale_growth_interval=3")
    pretrain(cfg, tmp_path / "run")
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["kind"] == "train"]
    skipped = [r["skipped_steps"] for r in train]
    scales = [r["loss_scale"] for r in train]
    assert skipped[0] == 1 and skipped == sorted(skipped) and skipped[-1] < 6 and all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
    for prev, cur, (s0, s1) in zip(skipped, skipped[1:], zip(scales, scales[1:])):
        if cur > prev:
            assert s1 == s0 / 2  # every skipped step halves the scale
    state = read_checkpoint(tmp_path / "run").state["loss_scaler"]
    assert state["skipped_steps"] == skipped[-1] and state["scale"] == scales[-1]

    # resume from step 4: the scaler state comes back, so steps 5-6 repeat exactly
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "run" / "checkpoints" / "step-4", cut / "checkpoints" / "step-4")
    (cut / "checkpoints" / "latest").write_text("step-4\n")
    pretrain(cfg, cut, resume=True)
    resumed = {r["step"]: r for r in map(json.loads, (cut / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "train"}
    for r in train[4:]:
        assert resumed[r["step"]]["loss"] == pytest.approx(r["loss"], rel=1e-6)
        assert (resumed[r["step"]]["loss_scale"], resumed[r["step"]]["skipped_steps"]) == (r["loss_scale"],
                                                                                         r["skipped_steps"])
