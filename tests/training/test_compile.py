"""``runtime.compile``: the compiled model computes what the eager one does, a run with it trains like the eager
run (same losses, checkpoints, update metrics, evaluation, --resume), and the IPU backends refuse it.

Tolerance (fp32, train mode, dropout 0): rtol 1e-5, atol 1e-6 on the loss and on every parameter's gradient
(torch.testing.assert_close semantics), and rel/abs 1e-5 on a run's losses over a few optimizer steps.

Inductor takes 20-70 s per tiny model on 2 shared cores with a cold cache, so the fast tests compile with
``aot_eager``: dynamo's capture (``fullgraph=True``: no graph break, the custom op inside the graph) and
AOTAutograd's joint forward/backward trace through the op's fake and autograd kernels, which is where a
custom op breaks; only inductor's code generation is left out. The ``slow`` tests run ``model.compile()``
as ``runtime.compile`` does, with inductor.
"""
import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import custom_ops
from groupbert.config import ConfigError, load_config
from groupbert.ipu.rules import check_run_config
from groupbert.models import build_model
from groupbert.tasks.pretraining import pretrain
from groupbert.training.checkpoint import read_checkpoint
from groupbert.training.runtime import compile_model

ROOT = Path(__file__).resolve().parents[2]
RTOL, ATOL = 1e-5, 1e-6           # loss and gradients, compiled vs eager (fp32)
RUN_REL, RUN_ABS = 1e-5, 1e-5     # a run's losses over a few steps, compiled vs eager


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles new model instances: start from an empty dynamo cache (no recompile limit reached,
    no guard left from another test) and leave none behind."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def custom_ops_mode():
    """``custom_ops_mode(mode)``: this process's custom-ops mode for the test (over GROUPBERT_CUSTOM_OPS)."""
    yield custom_ops.set_mode
    custom_ops.set_mode(None)


def _batch(model_type: str, B: int = 3, T: int = 16, P: int = 4, seed: int = 0) -> dict:
    """A pretraining batch with padding (and ignored labels) in it, so masking is part of the comparison."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 99, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, T - 5:] = 0
    if model_type == "gpt2":
        return {"input_ids": ids, "labels": ids.masked_fill(mask == 0, -100), "attention_mask": mask}
    labels = torch.randint(0, 99, (B, P), generator=g)
    labels[0, -1] = -100  # an empty prediction slot
    return {"input_ids": ids, "token_type_ids": (torch.arange(T) >= T // 2).long().expand(B, T).clone(),
            "attention_mask": mask, "masked_lm_positions": torch.randint(0, T - 5, (B, P), generator=g),
            "masked_lm_labels": labels, "next_sentence_label": torch.randint(0, 2, (B,), generator=g)}


def _recording_backend(seen: list):
    """aot_eager that records the call targets of every graph dynamo hands it."""
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return aot_eager(gm, example_inputs)
    return backend


def _assert_same_loss_and_gradients(eager, compiled, batch: dict) -> None:
    """One forward/backward of each on ``batch``: the loss and every parameter's gradient agree to RTOL/ATOL.
    The compiled model runs first: the custom op's first call may then be inside the trace."""
    loss_c = compiled(**batch).loss
    loss_c.backward()
    loss_e = eager(**batch).loss
    loss_e.backward()
    torch.testing.assert_close(loss_c, loss_e, rtol=RTOL, atol=ATOL)
    for (name, p), (_, q) in zip(eager.named_parameters(), compiled.named_parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("model_type,ops", [("bert", "auto"), ("groupbert", "auto"), ("groupbert", "off"),
                                            ("gpt2", "auto")])
def test_compiled_loss_and_gradients_equal_eager(model_type, ops, tiny_model_config, custom_ops_mode):
    custom_ops_mode(ops)
    if model_type == "groupbert" and ops == "auto" and not custom_ops.available("grouped_conv1d"):
        pytest.skip(f"the grouped_conv1d C++ op is not built here: {custom_ops.errors().get('grouped_conv1d')}")
    torch.manual_seed(0)
    eager = build_model(tiny_model_config(model_type, hidden_dropout=0.0, attention_dropout=0.0)).train()
    compiled = copy.deepcopy(eager)
    seen = []
    compiled.compile(backend=_recording_backend(seen), fullgraph=True)  # fullgraph: a graph break is an error
    _assert_same_loss_and_gradients(eager, compiled, _batch(model_type))
    assert list(compiled.state_dict()) == list(eager.state_dict())  # in place: no "_orig_mod." prefix
    if model_type == "groupbert":  # the C++ op is one opaque node of the graph, or absent when off
        assert any("groupbert.grouped_conv1d" in t for t in seen) == (ops == "auto")


def test_packed_rows_op_compiles_without_graph_breaks(custom_ops_mode):
    """The segment-aware op (data.packing) has its fake and autograd kernels too."""
    custom_ops_mode("auto")
    if not custom_ops.available("grouped_conv1d"):
        pytest.skip("the grouped_conv1d C++ op is not built here")
    torch.manual_seed(0)
    x = torch.randn(2, 12, 16, requires_grad=True)
    w = torch.randn(16, 4, 5, requires_grad=True)
    b = torch.randn(16, requires_grad=True)
    seg = torch.tensor([[0] * 5 + [1] * 4 + [2] * 3, [0] * 12])
    seen = []
    fn = torch.compile(lambda x, w, b: custom_ops.grouped_conv1d(x, w, b, 4, segment_ids=seg).square().sum(),
                       backend=_recording_backend(seen), fullgraph=True)
    got = torch.autograd.grad(fn(x, w, b), (x, w, b))
    want = torch.autograd.grad(custom_ops.grouped_conv1d(x, w, b, 4, segment_ids=seg).square().sum(), (x, w, b))
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=RTOL, atol=ATOL)
    assert any("groupbert.grouped_conv1d_segments" in t for t in seen)


def test_first_call_in_a_fresh_process_traces_one_graph(tmp_path):
    """In a fresh process (the op never called, its library not loaded), the compiled model's first call is
    what loads the library and registers the op's fake and autograd kernels: that must not break the graph
    (custom_ops.grouped_conv.ops_ready runs eagerly at trace time)."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import torch, custom_ops\n"
        "from groupbert.config import load_config\n"
        "from groupbert.models import build_model\n"
        "from groupbert.training.runtime import compile_model\n"
        "from custom_ops import _build\n"
        "custom_ops.set_mode('auto')\n"
        "assert not _build._loaded, 'the library is already loaded: the probe tests nothing'\n"
        "cfg = load_config(None, ['runtime.compile=true', 'model.vocab_size=99', 'model.hidden_size=32',\n"
        "                         'model.num_layers=1', 'model.num_heads=2', 'model.intermediate_size=64',\n"
        "                         'model.conv_group_size=8'])\n"
        "model = build_model(cfg.model)\n"
        "compile_with = torch.nn.Module.compile\n"
        "torch.nn.Module.compile = lambda self, **kw: compile_with(self, backend='eager', fullgraph=True, **kw)\n"
        "compile_model(model, cfg)\n"
        "ids = torch.randint(0, 99, (2, 8))\n"
        "model(ids, masked_lm_positions=torch.zeros(2, 1, dtype=torch.long), masked_lm_labels=ids[:, :1]).loss.backward()\n"
        "print('c++' if custom_ops.available('grouped_conv1d') else 'reference')\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), GROUPBERT_CUSTOM_OPS="auto")
    r = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    if r.stdout.strip() != "c++":
        pytest.skip("the grouped_conv1d C++ op is not built here (the reference path compiled)")


# --------------------------------------------------------------------------------------------------
# The IPU backends refuse it (PopTorch compiles the graph itself)

def test_ipu_backends_refuse_runtime_compile():
    for backend in ("ipu", "ipu-model"):
        with pytest.raises(ConfigError, match="PopTorch compiles the graph itself") as e:
            check_run_config(load_config(None, [f"runtime.backend={backend}", "runtime.compile=true"]))
        assert e.value.key == "runtime.compile" and "--set" in str(e.value)
    check_run_config(load_config(None, ["runtime.backend=ipu-model", "runtime.compile=false"]))


def test_cli_exits_2_naming_runtime_compile_on_ipu(tmp_path):
    recipe = tmp_path / "ipu.yaml"
    recipe.write_text("runtime:\n  backend: ipu-model\n  compile: true\n")
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "run_pretraining.py"), "--config", str(recipe),
                        "--output-dir", str(tmp_path / "out")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "runtime.compile" in r.stderr and "ipu.yaml" in r.stderr and "PopTorch" in r.stderr
    assert not (tmp_path / "out").exists()  # refused before any work


# --------------------------------------------------------------------------------------------------
# End to end: the tiny pretraining run (conftest.py) with and without runtime.compile

RUN = ["train.max_steps=4", "train.checkpoint_every=2", "optimizer.lr=2e-3", "schedule.warmup_steps=1",
       "logging.update_metrics_every=2", "train.eval_batches=2"]


def _records(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == kind]


def _assert_runs_match(eager_run, compiled_run):
    for kind, key in (("train", "loss"), ("eval", "eval_mlm_loss"), ("update", None)):
        a, b = _records(eager_run, kind), _records(compiled_run, kind)
        assert [r["step"] for r in a] == [r["step"] for r in b] and a, kind
        for ra, rb in zip(a, b):
            assert set(rb) == set(ra), (kind, sorted(set(ra) ^ set(rb))[:5])  # update metrics: every layer's
            keys = [key] if key else [k for k, v in ra.items() if isinstance(v, float)]
            for k in keys:
                assert rb[k] == pytest.approx(ra[k], rel=RUN_REL, abs=RUN_ABS), (kind, ra["step"], k)
    ckpt_e, ckpt_c = read_checkpoint(eager_run), read_checkpoint(compiled_run)
    assert ckpt_c.step == ckpt_e.step == 4
    we, wc = load_file(ckpt_e.path / "model.safetensors"), load_file(ckpt_c.path / "model.safetensors")
    assert sorted(wc) == sorted(we)  # the same checkpoint format: no "_orig_mod." keys
    for k in we:
        torch.testing.assert_close(wc[k], we[k], rtol=RUN_REL, atol=RUN_ABS, msg=lambda m: f"{k}: {m}")


def _cut_at_step_2(run, cut):
    """``cut``: ``run`` as if killed after its step-2 checkpoint (what --resume continues)."""
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / "step-2", cut / "checkpoints" / "step-2")
    (cut / "checkpoints" / "latest").write_text("step-2\n")
    shutil.copy(run / "config.yaml", cut / "config.yaml")


def _assert_resumed_losses(full_run, resumed_run):
    full = {r["step"]: r["loss"] for r in _records(full_run, "train")}
    resumed = {r["step"]: r["loss"] for r in _records(resumed_run, "train")}
    for step in (3, 4):
        assert resumed[step] == pytest.approx(full[step], rel=RUN_REL, abs=RUN_ABS), step


@pytest.fixture(scope="module")
def eager_run(tmp_path_factory, tiny_config_at):
    tmp = tmp_path_factory.mktemp("eager")
    pretrain(tiny_config_at(tmp, *RUN), tmp / "run")
    return tmp, tmp / "run"


def test_run_with_compile_matches_eager_run(eager_run, tiny_config_at, monkeypatch, caplog):
    """The engine path (compile_model, the stepper, update metrics, evaluation, checkpoints, --resume of an
    eager run with compile switched on) with the fast aot_eager backend; inductor's run is the slow test."""
    compile_with = torch.nn.Module.compile
    calls = []

    def compile_aot_eager(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return compile_with(self, *args, **{**kwargs, "backend": "aot_eager"})
    monkeypatch.setattr(torch.nn.Module, "compile", compile_aot_eager)
    tmp, eager = eager_run
    compiled = tmp / "compiled-aot"
    with caplog.at_level("INFO", logger="groupbert.training.runtime"):
        pretrain(tiny_config_at(tmp, *RUN, "runtime.compile=true"), compiled)
    assert calls == ["GroupBertForPreTraining"]
    assert any("runtime.compile" in r.getMessage() and "compile time" in r.getMessage() for r in caplog.records)
    _assert_runs_match(eager, compiled)
    # runtime.compile may change on --resume (like runtime.custom_ops: how a step computes, not what)
    cut = tmp / "eager-resumed-compiled"
    _cut_at_step_2(eager, cut)
    torch._dynamo.reset()
    pretrain(tiny_config_at(tmp, *RUN, "runtime.compile=true"), cut, resume=True)
    assert len(calls) == 2
    _assert_resumed_losses(eager, cut)


@pytest.mark.slow  # inductor on 2 shared cores: ~30-60 s (training and evaluation graphs, twice: run and resume)
def test_inductor_run_matches_eager_and_resumes(eager_run, tiny_config_at):
    tmp, eager = eager_run
    compiled = tmp / "compiled"
    cfg = lambda: tiny_config_at(tmp, *RUN, "runtime.compile=true")  # noqa: E731
    pretrain(cfg(), compiled)
    _assert_runs_match(eager, compiled)
    # --resume from the compiled run's step-2 checkpoint: the same losses as the uninterrupted run
    cut = tmp / "cut"
    _cut_at_step_2(compiled, cut)
    torch._dynamo.reset()
    pretrain(cfg(), cut, resume=True)
    _assert_resumed_losses(compiled, cut)


@pytest.mark.slow  # inductor: 20-70 s per model on 2 cores with a cold cache
@pytest.mark.parametrize("model_type,ops", [("bert", "auto"), ("groupbert", "auto"), ("groupbert", "off"),
                                            ("gpt2", "auto")])
def test_inductor_loss_and_gradients_equal_eager(model_type, ops, tiny_model_config, custom_ops_mode):
    custom_ops_mode(ops)
    if model_type == "groupbert" and ops == "auto" and not custom_ops.available("grouped_conv1d"):
        pytest.skip("the grouped_conv1d C++ op is not built here")
    torch.manual_seed(0)
    eager = build_model(tiny_model_config(model_type, hidden_dropout=0.0, attention_dropout=0.0)).train()
    compiled = copy.deepcopy(eager)
    cfg = load_config(None, ["runtime.compile=true"])
    compile_model(compiled, cfg)  # model.compile(): inductor, as runtime.compile runs it
    _assert_same_loss_and_gradients(eager, compiled, _batch(model_type))
