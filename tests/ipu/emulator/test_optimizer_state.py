"""The optimizer state as PopTorch 3.4 keeps it, on the emulator.

Each test restates behaviour of graphcore/poptorch@sdk-release-3.4 (and the PopART it builds on) that the
docstring names: ``python/optim.py`` (class ``Optimizer``: ``state_dict``, ``load_state_dict``,
``set_state_dict``), ``python/_poplar_executor.py`` (``setOptimizer``, ``_on_device_attach``,
``_get_optim_state_dict``, ``_read_optim_state_dict_if_needed``, ``_write_optim_state_dict_if_needed``),
``python/poptorch.cpp`` (``readOptimizerState``, ``writeOptimizerState``), ``tests/optimizers_test.py``,
and graphcore/popart's ``validReplacement`` checks.
"""
import logging

import pytest
import torch

from groupbert.ipu import emulator as poptorch

torch.set_num_threads(1)


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        self.out = torch.nn.Linear(3, 1)

    def forward(self, x, y):
        pred = self.out(torch.tanh(self.lin(x)))
        return pred, torch.nn.functional.mse_loss(pred, y)


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)


def _model(seed=0):
    torch.manual_seed(seed)
    return Model()


WEIGHTS = ["lin.weight", "lin.bias", "out.weight", "out.bias"]


@pytest.mark.parametrize("cls", [poptorch.optim.AdamW, poptorch.optim.LAMB, poptorch.optim.Adam])
def test_state_dict_is_the_ipu_layout_read_from_the_device(cls):
    """``tests/optimizers_test.py::test_read_ipu_state``: ``ipu_state``/``ipu_param`` are None before
    compilation; once compiled (``_on_device_attach`` marks the host copy stale) ``state_dict()`` reads
    PopART's variables ``Accl1___<w>``, ``Accl2___<w>``, ``Step___<w>`` (adamdecompose.cpp) and the
    variable hyper-parameters ``learningRate___specific___<w>``, ``weightDecay___specific___<w>``,
    ``lossScaling_FLOAT``; a run changes the state; torch's own ``state`` stays empty (the Python
    ``step()`` never runs)."""
    model = _model()
    opt = cls(model.parameters(), lr=0.05, weight_decay=0.025, loss_scaling=0.75)
    pm = poptorch.trainingModel(model, optimizer=opt)
    empty = opt.state_dict()
    assert empty["ipu_state"] is None and empty["ipu_param"] is None and empty["state"] == {}
    x, y = _data(2, 1)
    pm.compile(x, y)
    s0 = opt.state_dict()
    assert sorted(s0) == ["ipu_param", "ipu_state", "param_groups", "state"]
    assert set(s0["ipu_state"]) == {f"{p}{w}" for p in ("Accl1___", "Accl2___", "Step___") for w in WEIGHTS}
    assert all(not t.any() for t in s0["ipu_state"].values())
    step = s0["ipu_state"]["Step___lin.weight"]
    assert step.shape == () and step.dtype == torch.float32
    assert s0["ipu_state"]["Accl1___lin.weight"].dtype == torch.float32
    for w in WEIGHTS:
        torch.testing.assert_close(s0["ipu_param"][f"learningRate___specific___{w}"], torch.tensor(0.05))
        torch.testing.assert_close(s0["ipu_param"][f"weightDecay___specific___{w}"], torch.tensor(0.025))
    torch.testing.assert_close(s0["ipu_param"]["lossScaling_FLOAT"], torch.tensor(0.75))
    pm(x, y)
    s1 = opt.state_dict()
    assert s1["state"] == {}
    assert all(not torch.equal(s0["ipu_state"][k], s1["ipu_state"][k]) for k in s0["ipu_state"])
    assert float(s1["ipu_state"]["Step___out.bias"]) == 1.0


def test_state_is_cached_until_the_device_runs(caplog):
    """``test_read_ipu_state_cached``: a second ``state_dict()`` without a run in between uses the cached
    copy ("Using cached optimiser state dict"); the host copy is a snapshot, not a view of the device."""
    model = _model()
    opt = poptorch.optim.AdamW(model.parameters(), lr=0.01)
    pm = poptorch.trainingModel(model, optimizer=opt)
    x, y = _data(2, 1)
    pm(x, y)
    first = opt.state_dict()["ipu_state"]["Accl1___lin.weight"]
    with caplog.at_level(logging.DEBUG, logger="groupbert.ipu.emulator.executor"):
        opt.state_dict()
    assert "Using cached optimiser state dict" in caplog.text
    pm(x, y)
    assert not torch.equal(first, opt.state_dict()["ipu_state"]["Accl1___lin.weight"])


def test_a_cpu_state_is_refused():
    """``test_write_ipu_state_from_cpu`` and ``Optimizer.set_state_dict``: a torch optimizer's state dict
    raises "Only IPU optimizer states can be loaded onto the IPU."; an empty one "Cannot load optimizer
    state dictionary because it is empty."."""
    lin = torch.nn.Linear(2, 1)
    cpu = torch.optim.Adam(lin.parameters())
    lin(torch.ones(2)).sum().backward()
    cpu.step()
    ipu = poptorch.optim.Adam(lin.parameters())
    with pytest.raises(RuntimeError, match="Only IPU optimizer states can be loaded onto the IPU."):
        ipu.load_state_dict(cpu.state_dict())
    with pytest.raises(RuntimeError, match="because it is empty"):
        ipu.set_state_dict({})


@pytest.mark.parametrize("incomplete", [False, True])
def test_a_loaded_state_is_written_and_read_back(incomplete, caplog):
    """``test_write_ipu_state``: values loaded with ``load_state_dict`` are what ``state_dict()`` returns;
    the next run writes them to the device first (``__call__`` → ``_write_optim_state_dict_if_needed``)
    and updates from them; names left out keep the device's values with PopTorch's warning
    "writeOptimizerState: ignoring missing state ..." (python/poptorch.cpp)."""
    model = _model()
    opt = poptorch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.0)
    pm = poptorch.trainingModel(model, optimizer=opt)
    x, y = _data(2, 1)
    pm(x, y)
    s0 = opt.state_dict()
    device_before = {k: v.clone() for k, v in s0["ipu_state"].items()}
    loaded = {k: torch.rand_like(v) + 1.0 for k, v in s0["ipu_state"].items()}
    if incomplete:
        del loaded["Accl2___out.weight"]
    opt.load_state_dict({**s0, "ipu_state": loaded})
    s1 = opt.state_dict()
    for k, v in loaded.items():
        assert torch.equal(s1["ipu_state"][k], v)
    with caplog.at_level(logging.WARNING):
        pm(x, y)
    assert ("ignoring missing state Accl2___out.weight" in caplog.text) == incomplete
    s2 = opt.state_dict()
    step = float(loaded["Step___lin.weight"]) + 1  # the run continued from the loaded step count
    assert float(s2["ipu_state"]["Step___lin.weight"]) == pytest.approx(step)
    if incomplete:  # the device kept its own second moment of out.weight, then updated it
        assert not torch.equal(s2["ipu_state"]["Accl2___out.weight"], device_before["Accl2___out.weight"])
        beta2 = opt.param_groups[0]["betas"][1]
        assert (s2["ipu_state"]["Accl2___out.weight"] >= beta2 * device_before["Accl2___out.weight"] - 1e-7).all()


def _train(pm, calls, seed):
    for i in range(calls):
        pm(*_data(8, seed + i))


def _options():
    opts = poptorch.Options().deviceIterations(2).replicationFactor(2)
    opts.Training.gradientAccumulation(2)
    return opts


@pytest.mark.parametrize("cls,kwargs", [(poptorch.optim.AdamW, {}),
                                        (poptorch.optim.LAMB, {"bias_correction": False})])
def test_checkpoint_and_resume_equals_the_uninterrupted_run(cls, kwargs):
    """The checkpoint recipe of PopTorch 3.4 (B5; graphcore/examples nlp/bert/pytorch ``checkpointing.py``):
    ``optimizer.state_dict()`` of the trained model (device state), then in a new process a new model and
    optimizer, ``optimizer.load_state_dict(...)`` *before* ``trainingModel``; ``_on_device_attach`` writes
    the state on the first call. The resumed run equals the uninterrupted one, weights and moments."""
    def make(model):
        return cls(model.parameters(), lr=0.02, weight_decay=0.01, **kwargs)

    full = _model()
    pm = poptorch.trainingModel(full, _options(), make(full))
    _train(pm, 4, seed=10)
    reference = {k: v.clone() for k, v in full.state_dict().items()}

    first = _model()
    opt = make(first)
    pm = poptorch.trainingModel(first, _options(), opt)
    _train(pm, 2, seed=10)
    weights = {k: v.clone() for k, v in first.state_dict().items()}  # implicit copyWeightsToHost
    saved = opt.state_dict()
    assert saved["state"] == {} and "Accl1___lin.weight" in saved["ipu_state"]
    assert ("Step___lin.weight" in saved["ipu_state"]) == kwargs.get("bias_correction", True)  # LambNoBias: none
    pm.destroy()

    resumed = _model(seed=1)  # other initial weights: everything must come from the checkpoint
    resumed.load_state_dict(weights)
    opt = make(resumed)
    opt.load_state_dict(saved)
    pm = poptorch.trainingModel(resumed, _options(), opt)
    _train(pm, 2, seed=12)
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, reference[k]), k


def test_resume_without_the_optimizer_state_differs():
    """The counter-check of the test above: new moments (a fresh optimizer) give another run."""
    full = _model()
    pm = poptorch.trainingModel(full, _options(), poptorch.optim.AdamW(full.parameters(), lr=0.02))
    _train(pm, 4, seed=10)
    first = _model()
    pm = poptorch.trainingModel(first, _options(), poptorch.optim.AdamW(first.parameters(), lr=0.02))
    _train(pm, 2, seed=10)
    weights = {k: v.clone() for k, v in first.state_dict().items()}
    pm.destroy()
    resumed = _model()
    resumed.load_state_dict(weights)
    pm = poptorch.trainingModel(resumed, _options(), poptorch.optim.AdamW(resumed.parameters(), lr=0.02))
    _train(pm, 2, seed=12)
    assert not torch.equal(resumed.lin.weight.detach(), full.lin.weight.detach())


def test_state_survives_destroy_and_a_new_wrapper():
    """``test_write_ipu_state_before_override``: the state read after a run, loaded into a new optimizer
    of a new ``trainingModel`` of the same module, is on the device after compilation."""
    model = _model()
    opt = poptorch.optim.Adam(model.parameters())
    pm = poptorch.trainingModel(model, optimizer=opt)
    x, y = _data(2, 1)
    pm(x, y)
    s1 = opt.state_dict()
    pm.destroy()
    new_opt = poptorch.optim.Adam(model.parameters())
    new_opt.load_state_dict(s1)
    pm = poptorch.trainingModel(model, optimizer=new_opt)
    pm.compile(x, y)
    s2 = new_opt.state_dict()
    for k, v in s1["ipu_state"].items():
        assert torch.equal(s2["ipu_state"][k], v)


def test_a_new_optimizer_object_keeps_the_device_moments():
    """``setOptimizer`` with another object after compilation: the old one's state is read back and it is
    detached (its ``state_dict`` is its own again); the new one, without state, does not reset the device
    (``_write_optim_state_dict_if_needed`` writes only a state the optimizer has)."""
    model = _model()
    old = poptorch.optim.AdamW(model.parameters(), lr=0.01)
    pm = poptorch.trainingModel(model, optimizer=old)
    x, y = _data(2, 1)
    pm(x, y)
    new = poptorch.optim.AdamW(model.parameters(), lr=0.01)
    pm.setOptimizer(new)
    assert float(old.state_dict()["ipu_state"]["Step___lin.weight"]) == 1.0
    pm(x, y)
    assert float(new.state_dict()["ipu_state"]["Step___lin.weight"]) == 2.0
    assert float(old.state_dict()["ipu_state"]["Step___lin.weight"]) == 1.0  # detached: no more reads


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # as on PopTorch
def test_lr_from_a_scheduler_reaches_ipu_param_after_set_optimizer():
    """``test_write_ipu_state_from_checkpoint``: after ``setOptimizer`` the device's learning rate tensor
    (``learningRate___specific___<w>``) is the one of the optimizer's group."""
    model = _model()
    opt = poptorch.optim.Adam(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.5)
    pm = poptorch.trainingModel(model, optimizer=opt)
    x, y = _data(2, 1)
    pm(x, y)
    sched.step()
    pm.setOptimizer(opt)
    pm(x, y)
    s = opt.state_dict()
    assert s["param_groups"][0]["lr"] == 0.5
    torch.testing.assert_close(s["ipu_param"]["learningRate___specific___lin.bias"], torch.tensor(0.5))


def _compiled(opt_factory, options=None):
    model = _model()
    opt = opt_factory(model)
    pm = poptorch.trainingModel(model, options, opt)
    pm(*_data(2, 1))
    return pm, model, opt


@pytest.mark.parametrize("first,second,message", [
    (lambda m: poptorch.optim.AdamW(m.parameters(), lr=0.01),
     lambda m: poptorch.optim.SGD(m.parameters(), lr=0.01),
     "Can not replace optimizer of type Adam with new optimizer of type SGD"),
    (lambda m: poptorch.optim.AdamW(m.parameters(), lr=0.01),
     lambda m: poptorch.optim.LAMB(m.parameters(), lr=0.01),
     "Adam modes do not match"),
    (lambda m: poptorch.optim.LAMB(m.parameters(), lr=0.01),
     lambda m: poptorch.optim.LAMB(m.parameters(), lr=0.01, bias_correction=False),
     "Adam modes do not match"),
    (lambda m: poptorch.optim.AdamW(m.parameters(), lr=0.01),
     lambda m: poptorch.optim.Adam(m.parameters(), lr=0.01),
     "Weight decay modes do not match"),
    (lambda m: poptorch.optim.AdamW(m.parameters(), lr=0.01),
     lambda m: poptorch.optim.AdamW(m.parameters(), lr=0.01, max_grad_norm=1.0),
     "Clip norm settings do not match."),
    (lambda m: poptorch.optim.AdamW(m.parameters(), lr=0.01, max_grad_norm=1.0),
     lambda m: poptorch.optim.AdamW(m.parameters(), lr=0.01, max_grad_norm=2.0),
     "Clip norm settings at index 0 do not match."),
    # lr not passed: a constant (python/optim.py _parseArgs: only explicit arguments are variable)
    (lambda m: poptorch.optim.AdamW(m.parameters()),
     lambda m: poptorch.optim.AdamW(m.parameters(), lr=0.5),
     "Problem with learning rates. Default value is not a valid replacement. Can not replace a constant "
     "value with a non constant value."),
    (lambda m: poptorch.optim.AdamW(m.parameters(), lr=0.01, loss_scaling=8.0),
     lambda m: poptorch.optim.AdamW(m.parameters(), lr=0.01),
     "Problem with loss scaling. Can not replace a constant value with a non constant value."),
])
def test_set_optimizer_refuses_what_popart_refuses(first, second, message):
    """PopART's ``validReplacement`` (willow/src/optimizer.cpp, adam.cpp, optimizervalue.cpp,
    optimizervaluemap.cpp), run by ``updateOptimizers`` from ``setOptimizer`` on a compiled model: no
    other optimizer class or Adam mode (AdamW / LAMB / LAMB without bias correction), no other weight
    decay mode (Adam's L2), no added or changed gradient clipping, no change of a constant value."""
    pm, model, _ = _compiled(first)
    with pytest.raises(poptorch.Error, match=message.replace(".", r"\.").replace("(", r"\(")):
        pm.setOptimizer(second(model))


def test_set_optimizer_refuses_changing_a_constant_value():
    """``OptimizerValue::validReplacement``: "Values are constant but do not match." for a constant
    hyper-parameter (here an lr built without ``lr=``, so constant) changed on the host."""
    pm, model, opt = _compiled(lambda m: poptorch.optim.AdamW(m.parameters()))
    opt.param_groups[0]["lr"] = 0.5
    with pytest.raises(poptorch.Error, match="Problem with learning rates. Default value is not a valid "
                       "replacement. Values are constant but do not match.|Problem with learning rates. "
                       "OptimizerValue for tensor lin.bias is not a valid replacement.Values are constant"):
        pm.setOptimizer(opt)
    opt.param_groups[0]["lr"] = 1e-3
    pm.setOptimizer(opt)  # back to the compiled value: accepted


def test_set_optimizer_accum_types():
    """``convertOptimizerToDict``: ``accum_type=torch.float16`` after compilation needs
    ``MeanReductionStrategy.Running`` ("... but the executable is already compiled", ValueError;
    ``test_setOptimizer_frozen_options_broken``), and before compilation switches the options to it
    (``test_setOptimizer_frozen_options_ok``); the moment types are not part of PopART's replacement
    check, so changing them is accepted and has no effect on the compiled graph."""
    pm, model, opt = _compiled(lambda m: poptorch.optim.Adam(m.parameters(), lr=0.5))
    opt.accum_type = torch.float16
    with pytest.raises(ValueError, match="is already compiled"):
        pm.setOptimizer(opt)
    opt.accum_type = torch.float32
    opt.first_order_momentum_accum_type = torch.float16
    pm.setOptimizer(opt)
    pm(*_data(2, 2))
    assert opt.state_dict()["ipu_state"]["Accl1___lin.weight"].dtype == torch.float32

    model = _model()
    half = poptorch.optim.Adam(model.parameters(), lr=0.5, accum_type=torch.float16)
    pm = poptorch.trainingModel(model, optimizer=half)
    assert pm.options.Training.meanAccumulationAndReplicationReductionStrategy == \
        poptorch.MeanReductionStrategy.Running


def test_adamw_ignores_bias_correction_false_and_lamb_honours_it():
    """B6: ``poptorch.optim.AdamW(bias_correction=False)`` is the type ADAMW_NO_BIAS, for which
    ``CompilerImpl::getPopartOptimizer`` (popart_compiler/source/CompilerImpl.cpp) has no branch: PopART
    gets ``AdamMode::Adam``, the bias-corrected update. LAMB's flag selects ``AdamMode::LambNoBias``."""
    def run(cls, bias_correction):
        model = _model()
        pm = poptorch.trainingModel(model, _options(), cls(model.parameters(), lr=0.02,
                                                           bias_correction=bias_correction))
        _train(pm, 2, seed=3)
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(poptorch.optim.AdamW, False), run(poptorch.optim.AdamW, True)):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(run(poptorch.optim.LAMB, False),
                                                     run(poptorch.optim.LAMB, True)))
