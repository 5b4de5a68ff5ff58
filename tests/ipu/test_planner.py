"""IPU memory/throughput planner: stage layout, exact parameter counts, activation and FLOP counts
checked against torch's own bookkeeping (saved-tensor hooks, FlopCounterMode), memory errors,
the published-throughput calibration and the command's exit codes."""
from pathlib import Path

import pytest
import torch

from groupbert.config import ConfigError, ModelConfig, load_config
from groupbert.ipu import planner
from groupbert.ipu.planner import IPUOutOfMemoryError, check_memory, format_plan, plan, stage_layout
from groupbert.models import build_model

ROOT = Path(__file__).resolve().parents[2]
PHASE1 = str(ROOT / "configs/groupbert/base_phase1.yaml")
PHASE2 = str(ROOT / "configs/groupbert/base_phase2.yaml")
BERT1 = str(ROOT / "configs/bert/base_phase1.yaml")


@pytest.fixture(scope="module")
def phase1():
    return load_config(PHASE1)


def _meta_param_count(model_cfg: ModelConfig) -> int:
    with torch.device("meta"):
        model = build_model(model_cfg)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


# ---------------------------------------------------------------------------------------------
# Stage layout


def test_groupbert_base_layout_has_five_forward_stages_and_returns_to_ipu0():
    stages = stage_layout([1, 3, 4, 4], 12)
    assert [s.ipu for s in stages] == [0, 1, 2, 3, 0]
    assert stages[0].embeddings and stages[0].layers == [0] and not stages[0].heads
    assert [s.layers for s in stages[1:4]] == [[1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert stages[4].heads and stages[4].layers == [] and not stages[4].embeddings
    assert [s.in_flight for s in stages] == [9, 7, 5, 3, 1]  # 2 (n - s) - 1


def test_bert_base_layout_keeps_only_embeddings_and_heads_on_ipu0(phase1):
    stages = stage_layout([0, 4, 4, 4], 12)
    assert [s.ipu for s in stages] == [0, 1, 2, 3, 0]
    assert stages[0].embeddings and stages[0].layers == []
    assert stages[1].layers == [0, 1, 2, 3]
    p = plan(load_config(BERT1))
    assert (p.forward_stages, p.training_stages, p.total_ipus) == (5, 9, 16)
    assert p.ipus[0].layers == [] and [s.index for s in p.ipus[0].stages] == [0, 4]


def test_no_pipeline_is_one_stage_on_one_ipu():
    stages = stage_layout(None, 4)
    assert len(stages) == 1 and stages[0].layers == [0, 1, 2, 3] and stages[0].in_flight == 1
    assert stages[0].embeddings and stages[0].heads


@pytest.mark.parametrize("split", [[1, 3, 4], [1, 3, 4, 5], [-1, 5, 4, 4], []])
def test_invalid_layers_per_ipu_names_the_key(split):
    with pytest.raises(ValueError, match=r"ipu\.layers_per_ipu"):
        stage_layout(split, 12)
    cfg = load_config(PHASE1)
    cfg.ipu.layers_per_ipu = split  # bypass the loader's own check: plan() validates too
    with pytest.raises(ConfigError, match=r"ipu\.layers_per_ipu"):
        plan(cfg)


def test_pipeline_needs_gradient_accumulation_of_at_least_the_training_stages():
    cfg = load_config(PHASE1, ["train.gradient_accumulation=8"])
    with pytest.raises(ConfigError, match=r"train\.gradient_accumulation.*>= 9"):
        plan(cfg)
    plan(load_config(PHASE1, ["train.gradient_accumulation=9"]))


def test_memory_proportion_list_must_have_one_entry_per_ipu():
    cfg = load_config(PHASE1)
    cfg.ipu.available_memory_proportion = [0.2, 0.2]  # the loader rejects it too; plan() must not rely on that
    with pytest.raises(ConfigError, match=r"ipu\.available_memory_proportion"):
        plan(cfg)


# ---------------------------------------------------------------------------------------------
# Memory


@pytest.mark.parametrize("config", [PHASE1, BERT1])
def test_weights_sum_to_the_models_exact_parameter_count(config):
    cfg = load_config(config)
    p = plan(cfg)
    exact = _meta_param_count(cfg.model)
    assert sum(ipu.parameters for ipu in p.ipus) == p.parameters == exact
    assert sum(ipu.weights_bytes for ipu in p.ipus) == 2 * exact  # fp16
    # The tied decoder is counted once, on IPU 0 with the word embedding.
    with torch.device("meta"):
        naive = sum(t.numel() for _, t in build_model(cfg.model).named_parameters(remove_duplicate=False))
    assert naive - exact == cfg.model.vocab_size * cfg.model.hidden_size


def test_groupbert_base_parameter_count_matches_the_reference_arithmetic(phase1):
    assert plan(phase1).parameters == pytest.approx(160.8e6, rel=1e-3)  # Graphcore/groupbert-base-uncased: 322 MB in fp16


def test_first_stage_stashes_the_most_micro_batches():
    p = plan(load_config(BERT1))  # equal stages on IPUs 1-3: only the in-flight count differs
    in_flight = [s.in_flight for s in p.stages]
    assert in_flight[0] == 2 * p.forward_stages - 1 == max(in_flight)
    assert in_flight == sorted(in_flight, reverse=True)
    acts = [ipu.activation_bytes for ipu in p.ipus[1:]]
    assert acts[0] > acts[1] > acts[2]
    assert acts[0] - acts[1] == pytest.approx(2 * p.stages[1].stash_bytes)  # 7 vs 5 micro-batches


def test_optimizer_state_offchip_removes_it_from_the_ipus(phase1):
    on = plan(load_config(PHASE1, ["ipu.optimizer_state_offchip=false"]))
    off = plan(phase1)
    assert all(ipu.optimizer_bytes == 0 for ipu in off.ipus)
    for a, b in zip(on.ipus, off.ipus):
        assert a.optimizer_bytes == a.parameters * 2 * 4  # LAMB: two fp32 moments
        assert a.total_bytes - b.total_bytes == a.optimizer_bytes


def test_accumulators_only_with_gradient_accumulation():
    p = plan(load_config(None, ["model.num_layers=2", "train.gradient_accumulation=1"]))
    assert p.ipus[0].accumulator_bytes == 0
    p = plan(load_config(None, ["model.num_layers=2", "train.gradient_accumulation=2"]))
    assert p.ipus[0].accumulator_bytes == 4 * p.parameters


def test_recompute_stashes_layer_inputs_only(phase1):
    off = plan(load_config(PHASE1, ["ipu.recompute=false"]))
    on = plan(phase1)
    m, b, T = phase1.model, phase1.train.micro_batch_size, phase1.data.seq_len
    assert on.stages[2].stash_bytes == 4 * b * T * m.hidden_size * 2
    assert off.stages[2].stash_bytes == 4 * planner.layer_activation_elements(m, b, T) * 2
    assert all(a.activation_bytes > b.activation_bytes for a, b in zip(off.ipus[1:], on.ipus[1:]))


def test_over_memory_names_the_ipu_and_its_stage():
    p = plan(load_config(PHASE1, ["ipu.optimizer_state_offchip=false"]))
    with pytest.raises(IPUOutOfMemoryError) as err:
        check_memory(p)
    message = str(err.value)
    assert "IPU 2 [stage 2 (layers 4-7)]" in message and "IPU 3" in message
    assert "IPU 0" not in message and "of 900 MB" in message and "optimizer 362.1" in message
    assert isinstance(err.value, ValueError)


def test_shipped_recipes_fit(phase1):
    for cfg in (phase1, load_config(PHASE2), load_config(BERT1)):
        check_memory(plan(cfg))


# ---------------------------------------------------------------------------------------------
# Analytic counts against torch's own bookkeeping (tiny, odd sizes, fp32, CPU)

# the shared tiny model (conftest.py) at other odd sizes: hidden 48 in 3 heads, 4 FFN groups, 3 conv groups
ODD = dict(hidden_size=48, num_heads=3, intermediate_size=96, vocab_size=101, conv_group_size=16, ffn_groups=4)


def _saved_elements(module, *args):
    """Floating-point elements autograd saves for backward, each storage once, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if t.is_floating_point() and ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes() // t.element_size()
        return t

    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(*args)  # the math path materialises the softmax, as the IPU does
    return sum(seen.values())


@pytest.mark.parametrize("model_type", ["groupbert", "bert"])
def test_layer_activation_count_equals_autograds_saved_tensors(model_type, tiny_model_config):
    from groupbert.models.bert import BertLayer
    from groupbert.models.groupbert import GroupBertLayer

    m = tiny_model_config(model_type, **ODD)
    b, T = 3, 17
    x = torch.randn(b, T, m.hidden_size, requires_grad=True)
    attn_mask = torch.zeros(b, 1, 1, T)
    if model_type == "groupbert":
        saved = _saved_elements(GroupBertLayer(m), x, attn_mask, torch.ones(b, T, dtype=torch.bool))
    else:
        saved = _saved_elements(BertLayer(m), x, attn_mask)
    assert saved == planner.layer_activation_elements(m, b, T)


def test_heads_activation_count_equals_autograds_saved_tensors(tiny_model_config):
    from groupbert.models.bert import BertPooler, BertPreTrainingHeads, pretraining_loss

    m = tiny_model_config("groupbert", **ODD)
    b, T, P = 3, 17, 5
    positions = torch.randint(0, T, (b, P))

    class HeadsStage(torch.nn.Module):  # what the last pipeline stage runs
        def __init__(self):
            super().__init__()
            self.pooler, self.heads = BertPooler(m), BertPreTrainingHeads(m)

        def forward(self, hidden):
            mlm, nsp = self.heads(hidden, self.pooler(hidden), positions)
            return pretraining_loss(mlm, nsp, torch.randint(0, m.vocab_size, (b, P)), torch.randint(0, 2, (b,)))

    x = torch.randn(b, T, m.hidden_size, requires_grad=True)
    saved_bytes = 4 * _saved_elements(HeadsStage(), x)
    scalars = 4 * 2  # the two loss reductions' scalar outputs
    assert saved_bytes == planner.heads_activation_bytes(m, b, T, P, dtype_bytes=4) + scalars


@pytest.mark.parametrize("model_type", ["groupbert", "bert"])
def test_forward_flops_equal_torch_flop_counter(model_type, tiny_model_overrides):
    from torch.utils.flop_counter import FlopCounterMode

    cfg = load_config(None, tiny_model_overrides(model_type, **ODD) + [
        "data.seq_len=24", "data.max_predictions=5", "train.micro_batch_size=3",
        "train.gradient_accumulation=5", "ipu.layers_per_ipu=[0,2]"])
    m, b, T, P = cfg.model, 3, 24, 5
    with torch.device("meta"):
        model = build_model(m)
        ids = torch.zeros(b, T, dtype=torch.long)
        positions = torch.zeros(b, P, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        model(ids, masked_lm_positions=positions)
    assert sum(s.forward_flops for s in plan(cfg).stages) == counter.get_total_flops()


# ---------------------------------------------------------------------------------------------
# Throughput


def test_calibration_reproduces_the_published_throughput():
    cfg = planner.published_config()
    published = planner.PUBLISHED_RUN["samples_per_second"]
    assert cfg.global_batch_size == 16384 and cfg.data.seq_len == 512
    t = plan(cfg).throughput
    assert t.samples_per_second == pytest.approx(published, rel=0.01)
    assert planner.calibrate_efficiency(cfg, published) == pytest.approx(planner.SUSTAINED_EFFICIENCY, rel=0.01)
    peak = plan(cfg, efficiency=1.0).throughput.samples_per_second
    assert 3.0 < peak / published < 3.7  # the uncalibrated (pure peak) estimate is ~3.3x too fast


def test_throughput_composition(phase1):
    p = plan(phase1)
    t = p.throughput
    ga, n = phase1.train.gradient_accumulation, p.training_stages
    assert t.bubble_efficiency == pytest.approx(ga / (ga + n - 1))
    assert t.samples_per_second == pytest.approx(4 * t.samples_per_second_per_replica)
    assert t.tokens_per_second == pytest.approx(t.samples_per_second * 128)
    assert t.seconds_per_step == pytest.approx(p.global_batch_size / t.samples_per_second)
    busiest = max(ipu.seconds_per_micro_batch for ipu in p.ipus)
    assert t.cycle_seconds == pytest.approx(busiest + t.exchange_seconds_per_micro_batch)
    assert 0 < t.allreduce_seconds_per_step and 0 < t.optimizer_seconds_per_step < 0.01 * t.seconds_per_step
    single = plan(load_config(PHASE1, ["ipu.replication_factor=1"])).throughput
    assert single.allreduce_seconds_per_step == 0
    # Replicas share the pipeline time; they add the all-reduce and shard the off-chip optimizer state.
    assert single.seconds_per_step - single.optimizer_seconds_per_step == pytest.approx(
        t.seconds_per_step - t.optimizer_seconds_per_step - t.allreduce_seconds_per_step)
    assert single.optimizer_seconds_per_step > t.optimizer_seconds_per_step


def test_format_plan_shows_a_row_per_ipu(phase1):
    text = format_plan(plan(phase1))
    lines = text.splitlines()
    assert "weights MB" in lines[1] and "% of 900" in lines[1]
    assert [line.split("|")[0].strip() for line in lines[3:7]] == ["0", "1", "2", "3"]
    assert "samples/s" in text and "tokens/s" in text and "s/step" in text


# ---------------------------------------------------------------------------------------------
# Command


def test_cli_prints_the_plan_and_exits_0(capsys):
    assert planner.main(["--config", PHASE1]) == 0
    out = capsys.readouterr().out
    assert "layers 4-7" in out and "samples/s" in out


def test_cli_exits_2_when_an_ipu_is_out_of_memory(capsys):
    assert planner.main(["--config", PHASE1, "--set", "ipu.optimizer_state_offchip=false"]) == 2
    err = capsys.readouterr().err
    assert "IPU 2" in err and "stage 2" in err and "MB" in err


@pytest.mark.parametrize("args, key", [
    (["--config", PHASE1, "--set", "ipu.layers_per_ipu=[1,3,4]"], "ipu.layers_per_ipu"),
    (["--config", PHASE1, "--set", "ipu.no_such_key=1"], "ipu.no_such_key"),
    (["--config", "does/not/exist.yaml"], "does/not/exist.yaml"),
])
def test_cli_exits_2_on_a_bad_config(capsys, args, key):
    assert planner.main(args) == 2
    assert key in capsys.readouterr().err


def test_cli_calibration_report(capsys):
    assert planner.main(["--calibration"]) == 0
    out = capsys.readouterr().out
    assert "1454.3" in out and "at 100% of peak" in out
