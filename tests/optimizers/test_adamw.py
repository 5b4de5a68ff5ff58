"""AdamW against torch.optim.AdamW, a float64 loop of the no-momentum-bias-correction equations, and
first-step values worked out by hand."""
import inspect
import io
import re

import pytest
import torch

from groupbert.models import BertForPreTraining
from optimizers.adamw import AdamW


@pytest.fixture(scope="module")
def tiny_bert(tiny_model_config):
    return tiny_model_config("bert", max_positions=16)  # the batches are 12 tokens long


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _token_batches(n, B=4, T=12, P=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [dict(input_ids=torch.randint(1, 99, (B, T), generator=g),
                 token_type_ids=torch.randint(0, 2, (B, T), generator=g),
                 attention_mask=torch.ones(B, T, dtype=torch.long),
                 masked_lm_positions=torch.randint(0, T, (B, P), generator=g),
                 masked_lm_labels=torch.randint(1, 99, (B, P), generator=g),
                 next_sentence_label=torch.randint(0, 2, (B,), generator=g)) for _ in range(n)]


def _train_tiny_bert(config, make_optimizer, steps=100):
    torch.manual_seed(0)
    model = BertForPreTraining(config)
    matrices = [p for p in model.parameters() if p.dim() >= 2]  # tied decoder weight appears once
    vectors = [p for p in model.parameters() if p.dim() < 2]
    opt = make_optimizer([{"params": matrices, "weight_decay": 0.1}, {"params": vectors, "weight_decay": 0.0}])
    batches = _token_batches(4)  # cycled, so the loss can fall
    losses = []
    for step in range(steps):
        batch = batches[step % len(batches)]
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, opt, losses


HP = dict(lr=3e-3, betas=(0.9, 0.98), eps=1e-8)


@pytest.fixture(scope="module")
def torch_adamw_run(tiny_bert):
    return _train_tiny_bert(tiny_bert, lambda groups: torch.optim.AdamW(groups, **HP))  # single-tensor path on CPU


@pytest.mark.parametrize("foreach", [True, False])
def test_matches_torch_adamw_on_tiny_bert(foreach, torch_adamw_run, tiny_bert):
    ref_model, ref_opt, ref_losses = torch_adamw_run
    model, opt, losses = _train_tiny_bert(tiny_bert, lambda groups: AdamW(groups, foreach=foreach, **HP))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert ref_losses[-1] < 0.8 * ref_losses[0]
    # Same op order as torch, so on CPU the results are bitwise equal; the tolerance allows one ulp.
    tight = dict(rtol=1e-6, atol=0.0)
    torch.testing.assert_close(losses, ref_losses, **tight)
    for (name, p), ref_p in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, ref_p, **tight, msg=name)
        state, ref_state = opt.state[p], ref_opt.state[ref_p]
        assert state["step"].dtype == torch.float32 and state["step"].item() == ref_state["step"].item() == 100
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state[key], ref_state[key], **tight, msg=f"{name} {key}")


@pytest.mark.parametrize("foreach", [True, False])
def test_maximize_and_zero_decay_match_torch(foreach):
    torch.manual_seed(0)
    params = [torch.randn(6, 5), torch.randn(7)]
    ours = [p.clone().requires_grad_() for p in params]
    ref = [p.clone().requires_grad_() for p in params]
    opt = AdamW([{"params": ours[:1]}, {"params": ours[1:], "lr": 1e-2, "weight_decay": 0.0}],
                lr=3e-2, maximize=True, foreach=foreach)
    ref_opt = torch.optim.AdamW([{"params": ref[:1]}, {"params": ref[1:], "lr": 1e-2, "weight_decay": 0.0}],
                                lr=3e-2, maximize=True)
    for _ in range(20):
        for a, b in zip(ours, ref):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        opt.step()
        ref_opt.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0.0)


def _reference_adamw_no_momentum_bc(params, grads_per_step, groups):
    """Float64 loop of the equations with m used as is and v bias-corrected (Kosson et al. ablation)."""
    params = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, (p, g) in enumerate(zip(params, grads)):
            hp = groups[i]
            b1, b2 = hp["betas"]
            p = p * (1 - hp["lr"] * hp["weight_decay"])
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            v_hat = v[i] / (1 - b2 ** t)
            params[i] = p - hp["lr"] * m[i] / (v_hat.sqrt() + hp["eps"])
    return params


@pytest.mark.parametrize("foreach", [True, False])
def test_no_bias_correction_matches_float64_loop(foreach):
    torch.manual_seed(0)
    params = [torch.randn(6, 5, dtype=torch.float64), torch.randn(7, dtype=torch.float64),
              torch.randn(3, 4, dtype=torch.float64)]
    grads_per_step = [[torch.randn_like(p) for p in params] for _ in range(30)]
    decay = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    no_decay = dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0)
    expected = _reference_adamw_no_momentum_bc(params, grads_per_step, [decay, decay, no_decay])

    ours = [p.clone() for p in params]
    opt = AdamW([{"params": ours[:2]}, {"params": ours[2:], **no_decay}], **decay, bias_correction=False,
                foreach=foreach)
    for grads in grads_per_step:
        for p, g in zip(ours, grads):
            p.grad = g
        opt.step()
    for p, e in zip(ours, expected):
        torch.testing.assert_close(p, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bias_correction, expected_step", [(True, 1.0), (False, 1 - 0.9)])
@pytest.mark.parametrize("foreach", [True, False])
def test_first_step_size_by_hand(bias_correction, expected_step, foreach):
    # m_1 = (1-β1) g and v̂_1 = g². With ε -> 0: Δ = -lr·sign(g) with bias correction,
    # Δ = -lr(1-β1)·sign(g) without.
    lr = 1e-2
    g = torch.tensor([3.0, -0.02, 1e3, -7.0], dtype=torch.float64)
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = AdamW([p], lr=lr, eps=1e-30, weight_decay=0.0, bias_correction=bias_correction, foreach=foreach)
    p.grad = g
    opt.step()
    torch.testing.assert_close(p.detach(), -lr * expected_step * g.sign(), rtol=1e-12, atol=0.0)


def test_decay_is_applied_before_the_moments_and_scaled_by_lr():
    p = torch.full((3,), 2.0, dtype=torch.float64, requires_grad=True)
    opt = AdamW([p], lr=0.1, eps=1e-30, weight_decay=0.5)
    p.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 2.0 * (1 - 0.1 * 0.5) - 0.1, dtype=torch.float64))


def _rosenbrock(xy):
    return (1 - xy[0]) ** 2 + 100 * (xy[1] - xy[0] ** 2) ** 2


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("foreach", [True, False])
def test_rosenbrock_descent(bias_correction, foreach):
    xy = torch.tensor([1.5, 1.5], requires_grad=True)
    solution = torch.ones(2)
    start_loss, start_dist = _rosenbrock(xy).item(), xy.detach().dist(solution).item()
    opt = AdamW([xy], lr=0.1, weight_decay=0.0, bias_correction=bias_correction, foreach=foreach)
    for _ in range(300):
        opt.zero_grad()
        _rosenbrock(xy).backward()
        opt.step()
    assert _rosenbrock(xy).item() < 0.01 * start_loss
    assert xy.detach().dist(solution).item() < 0.8 * start_dist


def _mlp_steps(model, opt, inputs):
    for x in inputs:
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("bias_correction", [True, False])
def test_state_dict_round_trip(bias_correction):
    torch.manual_seed(0)
    inputs = [torch.randn(8, 5) for _ in range(10)]

    def make():
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
        groups = [{"params": [model[0].weight, model[2].weight]},
                  {"params": [model[0].bias, model[2].bias], "weight_decay": 0.0, "lr": 5e-3}]
        return model, AdamW(groups, lr=1e-2, betas=(0.8, 0.99), bias_correction=bias_correction)

    model, opt = make()
    _mlp_steps(model, opt, inputs[:4])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    _mlp_steps(model, opt, inputs[4:])

    buf.seek(0)
    saved = torch.load(buf)
    resumed_model, resumed_opt = make()
    resumed_model.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["opt"])
    assert resumed_opt.param_groups[1]["lr"] == 5e-3
    assert resumed_opt.param_groups[0]["bias_correction"] is bias_correction
    _mlp_steps(resumed_model, resumed_opt, inputs[4:])
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
        assert torch.equal(opt.state[a]["exp_avg_sq"], resumed_opt.state[b]["exp_avg_sq"])
        assert resumed_opt.state[b]["step"].dtype == torch.float32


def test_skips_params_without_grad():
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(3, requires_grad=True)
    opt = AdamW([a, b], lr=0.1)
    a.grad = torch.ones(3)
    opt.step()
    assert b not in opt.state and torch.equal(b.detach(), torch.ones(3))
    assert opt.state[a]["step"].item() == 1.0


def test_sparse_grad_rejected():
    p = torch.ones(3, requires_grad=True)
    p.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        AdamW([p]).step()


@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=0.0), "lr"), (dict(lr=-1e-3), "lr"),
    (dict(betas=(1.0, 0.999)), "betas"), (dict(betas=(0.9, -0.1)), "betas"),
    (dict(eps=0.0), "eps"), (dict(weight_decay=-0.1), "weight_decay"),
])
def test_invalid_hyperparameters_name_the_argument(kwargs, name):
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=rf"Invalid {name}"):
        AdamW([p], **kwargs)
    with pytest.raises(ValueError, match=rf"Invalid {name}"):  # a group override is checked too
        AdamW([{"params": [p], **kwargs}])


def test_docstring_args_match_signature():
    doc_args = re.findall(r"^ {8}(\w+):", AdamW.__doc__.split("Args:")[1], flags=re.M)
    assert doc_args == list(inspect.signature(AdamW.__init__).parameters)[1:]
