"""Memory and throughput planner for a pipelined, replicated run on Graphcore IPUs (GC200 Mk2).

An analytic model, not a compiler: it answers "does this recipe fit in 900 MB per IPU, and how fast
will it go on a pod?" before any graph is built, and names the IPU that overflows.

Pipeline layout, exactly as Graphcore's BERT app (graphcore/examples ``nlp/bert/pytorch/modeling.py``)
and optimum-graphcore's GroupBERT: the embeddings on IPU 0, encoder layer ``i`` on the IPU that
``ipu.layers_per_ipu`` gives it, and the pooler + tied MLM head + NSP head back on IPU 0, run with
``PipelinedExecution(AutoStage.AutoIncrement)``. Forward stages = IPU switches + 1 (consecutive blocks on
one IPU merge), so [1, 3, 4, 4] and [0, 4, 4, 4] both give 5 forward stages and 2 x 5 - 1 = 9 training
stages. Forward stage ``s`` of ``n`` holds ``2 (n - s) - 1`` micro-batches in flight between its forward
and its backward, so the first stage stashes the most.

Memory per IPU (bytes; MB below means 1e6 bytes, the unit of the 900 MB figure):
- weights: parameters counted exactly, by building the model on the ``meta`` device (tied decoder once),
  2 bytes each with ``ipu.half`` (the model is ``.half()``-ed, no fp32 master copy) else 4;
- optimizer state: fp32 moments, PopTorch's default ``first/second_order_momentum_accum_type``
  (2 for AdamW / LAMB, 1 for the Lion family); 0 on chip with ``ipu.optimizer_state_offchip``;
- gradient accumulators: fp32 per weight (PopTorch's default ``accum_type``) when GA > 1;
- activations: the tensors autograd keeps for backward, per micro-batch, from an analytic count per
  module that equals what ``torch.autograd.graph.saved_tensors_hooks`` sees on this repo's models
  (tests/ipu/test_planner.py checks it). With ``ipu.recompute`` (a checkpoint per layer, Graphcore's
  default) a stage stashes only its layers' inputs per in-flight micro-batch, plus one layer's full
  activations while that layer is recomputed; without it, every layer's full activations are stashed;
- code and exchange: a fixed ``CODE_AND_EXCHANGE_FRACTION`` of the IPU's memory (see the constant).

Throughput: per-stage matmul FLOPs (``groupbert.models.flops``, equal to ``torch.utils.flop_counter`` on
the real modules), training = 3 x forward (+1 forward of the layers when recomputing), at
``SUSTAINED_EFFICIENCY`` x peak; a pipeline cycle costs the busiest IPU's compute plus the inter-IPU
activation/gradient copies over IPU-Link; a step is ``GA + stages - 1`` cycles (ramp-up/ramp-down bubble),
plus the gradient all-reduce over replicas and the optimizer update.

Command: ``python -m groupbert.ipu.planner --config configs/groupbert/base_phase1.yaml [--set k=v ...]``
prints the per-IPU table and the throughput; exit code 2 on a bad config or an IPU out of memory.
``--calibration`` prints how the efficiency constant was fitted.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from dataclasses import dataclass
from typing import Optional

from groupbert.config import ConfigError, ModelConfig, RunConfig, load_config
from groupbert.errors import BadInput
from groupbert.models.flops import heads_forward_flops, layer_forward_flops  # the analytic FLOP counts

# ----------------------------------------------------------------------------------------------
# Hardware figures: Graphcore GC200 (Mk2 IPU) / IPU-M2000 public datasheet numbers.

IPU_MEMORY_MB = 900.0            # in-processor SRAM per GC200, spread over its tiles
IPU_TILES = 1472                 # tiles per GC200; each holds its own slice of the 900 MB
PEAK_FLOPS_FP16 = 250e12         # "AI compute" FP16.16 per GC200 (IPU-M2000: 1 PFLOPS over 4 IPUs)
PEAK_FLOPS_FP32 = 62.5e12        # FP32 per GC200


def ipu_peak(cfg: RunConfig) -> Optional[tuple[float, str, int]]:
    """(peak FLOP/s per IPU, where the figure comes from, IPUs in use) for a run on real IPUs, the MFU
    denominator (``groupbert.training.hardware``); None when the built-in emulator stands in for PopTorch:
    it computes every replica and stage on the host CPU, in fp32."""
    from groupbert.ipu import USING_EMULATOR
    if USING_EMULATOR:
        return None
    ipus = cfg.ipu.replication_factor * len(cfg.ipu.layers_per_ipu or [0])
    if cfg.ipu.half:
        return PEAK_FLOPS_FP16, f"Graphcore GC200: {PEAK_FLOPS_FP16 / 1e12:g} TFLOPS fp16 per IPU", ipus
    return PEAK_FLOPS_FP32, f"Graphcore GC200: {PEAK_FLOPS_FP32 / 1e12:g} TFLOPS fp32 per IPU", ipus
IPU_LINK_BYTES_PER_S = 64e9      # per IPU-Link; one link per neighbour pair assumed (no link aggregation)
SRAM_BYTES_PER_S = 47.5e12       # in-processor memory bandwidth per GC200 (optimizer update, on chip)
# Streaming (off-chip) memory bandwidth seen by one IPU: NOT a datasheet number, a round assumption
# for the IPU-M2000's DDR streaming memory reached over the gateway; it only matters for the optimizer
# state's load/store once per step with ``ipu.optimizer_state_offchip``, i.e. very little.
STREAMING_MEMORY_BYTES_PER_S = 20e9

# Poplar's compiled program lives in the same SRAM: vertex code, control code, exchange code and
# exchange buffers, plus temporaries outside the stashes. PopVision memory reports of BERT-size models
# put this at some 100-200 MB per IPU; 15 % of 900 MB = 135 MB is a chosen round figure, not a
# measurement. Matmul/conv temporaries (bounded by ``available_memory_proportion``) are assumed to fit in it.
CODE_AND_EXCHANGE_FRACTION = 0.15

# Fraction of peak matmul FLOPS sustained in steady state (everything not modelled: non-matmul ops,
# tile imbalance, on-tile exchange, host I/O, LayerNorm/softmax/GELU, partials). Fitted so that the
# published run below is reproduced (see ``calibrate_efficiency`` and ``--calibration``): at 100 % of
# peak this model predicts 3.34x the measured throughput.
SUSTAINED_EFFICIENCY = 0.292

# The one published IPU throughput of this model we found: Hugging Face ``Graphcore/groupbert-base-uncased``
# all_results.json, phase 2 with optimum-graphcore on 16 IPUs (4-IPU pipeline x 4 replicas),
# LAMB, seq 512, micro 2 x GA 2048 x 4 replicas = 16,384 sequences per step.
PUBLISHED_RUN = {
    "source": "huggingface.co/Graphcore/groupbert-base-uncased all_results.json",
    "samples_per_second": 1454.3,
    "overrides": [
        "model.type=groupbert", "model.hidden_size=768", "model.num_layers=12", "model.num_heads=12",
        "model.intermediate_size=3072", "data.seq_len=512", "data.max_predictions=76",
        "train.micro_batch_size=2", "train.gradient_accumulation=2048", "train.max_steps=2038",
        "optimizer.name=lamb", "optimizer.lr=0.01", "schedule.warmup_fraction=0.13",
        "ipu.layers_per_ipu=[1,3,4,4]", "ipu.replication_factor=4", "ipu.half=true",
        # optimum-graphcore's GroupBERT recipe: matmul_proportion 0.22; its ipu_config.json files for
        # Base-size models keep the optimizer state off chip with replicated tensor sharding.
        "ipu.available_memory_proportion=[0.22,0.22,0.22,0.22]", "ipu.optimizer_state_offchip=true",
    ],
}

_MB = 1e6


class IPUOutOfMemoryError(BadInput, ValueError):
    """An IPU's estimated memory exceeds its in-processor memory; the message names IPU, stage, sizes."""


# ----------------------------------------------------------------------------------------------
# Plan dataclasses


@dataclass
class Stage:
    """One forward pipeline stage: consecutive blocks on one IPU."""
    index: int
    ipu: int
    embeddings: bool
    layers: list[int]          # global encoder-layer indices
    heads: bool                # pooler + MLM + NSP
    in_flight: int = 1         # micro-batches stashed between this stage's forward and backward
    stash_bytes: float = 0.0   # stashed activations per micro-batch
    forward_flops: float = 0.0  # matmul FLOPs per micro-batch, forward
    train_flops: float = 0.0    # forward + backward (+ recompute)

    @property
    def name(self) -> str:
        parts = (["embeddings"] if self.embeddings else []) + ([_layer_range(self.layers)] if self.layers else []) \
            + (["heads"] if self.heads else [])
        return " + ".join(parts)


@dataclass
class IPUPlan:
    ipu: int
    stages: list[Stage]
    weights_bytes: float
    optimizer_bytes: float
    accumulator_bytes: float
    activation_bytes: float    # sum over stages of stash x in-flight, + the recompute working set
    recompute_bytes: float     # one layer's full activations while it is recomputed
    overhead_bytes: float      # code + exchange reserve
    memory_bytes: float        # the IPU's in-processor memory
    parameters: int
    train_flops: float         # per micro-batch, all stages on this IPU
    seconds_per_micro_batch: float
    available_memory_proportion: Optional[float] = None

    @property
    def layers(self) -> list[int]:
        return [i for s in self.stages for i in s.layers]

    @property
    def total_bytes(self) -> float:
        return (self.weights_bytes + self.optimizer_bytes + self.accumulator_bytes + self.activation_bytes
                + self.overhead_bytes)

    @property
    def fraction_used(self) -> float:
        return self.total_bytes / self.memory_bytes


@dataclass
class Throughput:
    samples_per_second: float             # whole pod (all replicas)
    samples_per_second_per_replica: float
    tokens_per_second: float
    seconds_per_step: float
    cycle_seconds: float                   # one pipeline cycle (one micro-batch through the busiest IPU)
    exchange_seconds_per_micro_batch: float
    bubble_efficiency: float               # GA / (GA + stages - 1)
    allreduce_seconds_per_step: float
    optimizer_seconds_per_step: float
    efficiency: float                      # fraction of peak FLOPS assumed
    peak_flops: float


@dataclass
class Plan:
    ipus: list[IPUPlan]
    stages: list[Stage]
    throughput: Throughput
    model_type: str
    parameters: int
    micro_batch_size: int
    seq_len: int
    gradient_accumulation: int
    replication_factor: int
    device_iterations: int
    half: bool
    recompute: bool
    optimizer_state_offchip: bool

    @property
    def forward_stages(self) -> int:
        return len(self.stages)

    @property
    def training_stages(self) -> int:
        return 2 * len(self.stages) - 1

    @property
    def total_ipus(self) -> int:
        return len(self.ipus) * self.replication_factor

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation * self.replication_factor


# ----------------------------------------------------------------------------------------------
# Stage layout


def stage_layout(layers_per_ipu: Optional[list[int]], num_layers: int) -> list[Stage]:
    """Forward stages for Graphcore's BERT placement; ``None`` means no pipeline (one IPU)."""
    split = [num_layers] if layers_per_ipu is None else list(layers_per_ipu)
    if not split or any(not isinstance(n, int) or n < 0 for n in split):
        raise ConfigError(f"{split} must be a non-empty list of non-negative integers", "ipu.layers_per_ipu")
    if sum(split) != num_layers:
        raise ConfigError(f"{split} sums to {sum(split)} layers but model.num_layers is {num_layers} "
                          f"(one entry per IPU: {len(split)} IPUs)", "ipu.layers_per_ipu")
    blocks = [("embeddings", 0)]
    blocks += [(i, ipu) for ipu, n in enumerate(split) for i in range(sum(split[:ipu]), sum(split[:ipu]) + n)]
    blocks += [("heads", 0)]
    stages: list[Stage] = []
    for block, ipu in blocks:
        if not stages or stages[-1].ipu != ipu:  # AutoStage.AutoIncrement: a new stage at each IPU switch
            stages.append(Stage(index=len(stages), ipu=ipu, embeddings=False, layers=[], heads=False))
        stage = stages[-1]
        if block == "embeddings":
            stage.embeddings = True
        elif block == "heads":
            stage.heads = True
        else:
            stage.layers.append(block)
    for stage in stages:
        stage.in_flight = 2 * (len(stages) - stage.index) - 1
    return stages


# ----------------------------------------------------------------------------------------------
# Parameter counts, FLOPs and activations per module


def _model_key(m: ModelConfig) -> tuple:
    return tuple(getattr(m, f.name) for f in dataclasses.fields(m) if f.name != "init_checkpoint")


@functools.lru_cache(maxsize=16)
def _parameter_groups(key: tuple) -> dict:
    import torch  # lazy: the planner's arithmetic needs torch only to count parameters

    from groupbert.models import build_model

    names = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "init_checkpoint"]
    model_cfg = ModelConfig(**dict(zip(names, key)))
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = build_model(model_cfg)
    groups: dict = {}
    for name, p in model.named_parameters():  # tied decoder weight appears once, as the word embedding
        if name.startswith("bert.embeddings."):
            group = "embeddings"
        elif name.startswith("bert.encoder.layer."):
            group = int(name.split(".")[3])
        elif name.startswith("bert.encoder."):  # GroupBERT's final LayerNorm, after the last layer
            group = "final_norm"
        else:
            group = "heads"                      # bert.pooler, cls.predictions, cls.seq_relationship
        groups[group] = groups.get(group, 0) + p.numel()
    return groups


def parameter_groups(model_cfg: ModelConfig) -> dict:
    """Exact parameter counts: ``embeddings``, layer index ``i``, ``final_norm`` (GroupBERT), ``heads``."""
    return dict(_parameter_groups(_model_key(model_cfg)))


def layer_activation_elements(m: ModelConfig, b: int, T: int) -> float:
    """Elements autograd keeps for one layer's backward (what ``saved_tensors_hooks`` sees).

    GroupBERT: conv 8 NH (LN in, GLU in, GLU pre-activation 2, conv in, LN in, SiLU in, dense in),
    each GFFN 3 NH + 2 NI, attention 6 NH + b A T^2 (softmax output, materialised on the IPU),
    plus mean/rstd of 5 LayerNorms and the padding mask. BERT: 8 NH + 2 NI + b A T^2 + 2 LayerNorms.
    """
    N, H, I, A = b * T, m.hidden_size, m.intermediate_size, m.num_heads
    if m.type == "bert":
        return N * (8 * H + 2 * I + 2 * 2) + b * A * T * T
    return N * (20 * H + 4 * I + 5 * 2 + 1) + b * A * T * T  # + 1: the conv's padding mask, as a float


def heads_activation_bytes(m: ModelConfig, b: int, T: int, P: int, dtype_bytes: int) -> float:
    """Heads stage: its input (kept by the gather; the pooler reads a slice of it), MLM transform 4 bPH
    + LayerNorm statistics, the pooler's tanh output (NSP input), and the fp32 log-softmax of the logits."""
    H, V = m.hidden_size, m.vocab_size
    half_like = b * T * H + 4 * b * P * H + 2 * b * P + b * H
    return half_like * dtype_bytes + (b * P * V + 2 * b) * 4


def _optimizer_moments(name: str) -> int:
    try:
        from optimizers.registry import resolve
        cls_name = resolve(name)[0].__name__.lower()
    except (ImportError, ValueError):
        cls_name = name.lower()
    if "lion" in cls_name:
        return 1          # one momentum buffer
    if "adam" in cls_name or "lamb" in cls_name:
        return 2          # first and second moments
    return 0              # plain SGD


# ----------------------------------------------------------------------------------------------
# The plan


def _ipu_setting(cfg: RunConfig, name: str, default):
    return getattr(cfg.ipu, name, default)  # fields the IPU layer adds to IPUConfig; defaults until then


def plan(cfg: RunConfig, efficiency: Optional[float] = None) -> Plan:
    """Per-IPU memory and pod throughput for ``cfg``; ``efficiency`` overrides ``SUSTAINED_EFFICIENCY``."""
    m, b, T, P = cfg.model, cfg.train.micro_batch_size, cfg.data.seq_len, cfg.data.max_predictions
    ga, replicas = cfg.train.gradient_accumulation, cfg.ipu.replication_factor
    half = bool(_ipu_setting(cfg, "half", True))
    recompute = bool(_ipu_setting(cfg, "recompute", True))
    offchip = bool(_ipu_setting(cfg, "optimizer_state_offchip", False))
    memory = float(_ipu_setting(cfg, "ipu_memory_mb", IPU_MEMORY_MB)) * _MB
    efficiency = SUSTAINED_EFFICIENCY if efficiency is None else efficiency
    if not 0 < efficiency <= 1:
        raise ValueError(f"efficiency must be in (0, 1], got {efficiency}")

    if m.type not in ("groupbert", "bert"):
        raise ConfigError(f"the IPU planner models groupbert and bert, not '{m.type}'", "model.type")
    layers_per_ipu = cfg.ipu.layers_per_ipu
    stages = stage_layout(layers_per_ipu, m.num_layers)
    num_ipus = 1 if layers_per_ipu is None else len(layers_per_ipu)
    if len(stages) > 1 and ga < 2 * len(stages) - 1:
        raise ConfigError(f"{ga} is too small for the pipeline: {len(stages)} forward stages have "
                          f"{2 * len(stages) - 1} training stages, so GA must be >= {2 * len(stages) - 1} "
                          "(PopTorch's rule)", "train.gradient_accumulation")
    proportions = _ipu_setting(cfg, "available_memory_proportion", None)
    if proportions is not None and len(proportions) != num_ipus:
        raise ConfigError(f"{list(proportions)} has {len(proportions)} entries for {num_ipus} IPUs",
                          "ipu.available_memory_proportion")

    dtype = 2 if half else 4
    peak = PEAK_FLOPS_FP16 if half else PEAK_FLOPS_FP32
    groups = parameter_groups(m)
    moments = _optimizer_moments(cfg.optimizer.name)
    ids_bytes = b * 3 * T * 4                         # input ids, token types, attention mask (int32)
    label_bytes = b * (2 * P + 1) * 4                 # masked positions and labels, NSP label
    layer_full = layer_activation_elements(m, b, T) * dtype
    layer_input = b * T * m.hidden_size * dtype

    params_per_stage, full_per_stage = [], []
    for st in stages:
        n_params = sum(groups[i] for i in st.layers)
        n_params += groups["embeddings"] if st.embeddings else 0
        n_params += groups["heads"] if st.heads else 0
        if m.num_layers - 1 in st.layers:
            n_params += groups.get("final_norm", 0)
        params_per_stage.append(n_params)
        heads_bytes = heads_activation_bytes(m, b, T, P, dtype) + label_bytes if st.heads else 0.0
        emb_full = (b * T * (m.hidden_size + 2) * dtype + ids_bytes) if st.embeddings else 0.0
        if recompute:  # checkpoint per layer: keep layer inputs; heads are the last stage, never recomputed
            st.stash_bytes = len(st.layers) * layer_input + (ids_bytes if st.embeddings else 0) + heads_bytes
        else:
            st.stash_bytes = len(st.layers) * layer_full + emb_full + heads_bytes
        full_per_stage.append(layer_full if st.layers else emb_full)
        layer_flops = len(st.layers) * layer_forward_flops(m, b, T)
        st.forward_flops = layer_flops + (heads_forward_flops(m, b, P) if st.heads else 0.0)
        st.train_flops = 3 * st.forward_flops + (layer_flops if recompute else 0.0)

    ipus: list[IPUPlan] = []
    for k in range(num_ipus):
        on_ipu = [s for s in stages if s.ipu == k]
        n_params = sum(params_per_stage[s.index] for s in on_ipu)
        stash = sum(s.stash_bytes * s.in_flight for s in on_ipu)
        working = max((full_per_stage[s.index] for s in on_ipu), default=0.0) if recompute else 0.0
        flops = sum(s.train_flops for s in on_ipu)
        ipus.append(IPUPlan(
            ipu=k, stages=on_ipu, weights_bytes=n_params * dtype,
            optimizer_bytes=0.0 if offchip else n_params * moments * 4,
            accumulator_bytes=n_params * 4 if ga > 1 else 0.0,
            activation_bytes=stash + working, recompute_bytes=working,
            overhead_bytes=CODE_AND_EXCHANGE_FRACTION * memory, memory_bytes=memory, parameters=n_params,
            train_flops=flops, seconds_per_micro_batch=flops / (peak * efficiency),
            available_memory_proportion=None if proportions is None else float(proportions[k])))

    throughput = _throughput(cfg, stages, ipus, efficiency, peak, dtype, moments, offchip)
    return Plan(ipus=ipus, stages=stages, throughput=throughput, model_type=m.type,
                parameters=sum(groups.values()), micro_batch_size=b, seq_len=T, gradient_accumulation=ga,
                replication_factor=replicas, device_iterations=cfg.ipu.device_iterations, half=half,
                recompute=recompute, optimizer_state_offchip=offchip)


def _throughput(cfg: RunConfig, stages: list[Stage], ipus: list[IPUPlan], efficiency: float, peak: float,
                dtype: int, moments: int, offchip: bool) -> Throughput:
    b, T, ga, replicas = cfg.train.micro_batch_size, cfg.data.seq_len, cfg.train.gradient_accumulation, \
        cfg.ipu.replication_factor
    # Each IPU switch copies b x T x H activations forward and their gradient back, once per micro-batch;
    # the copies of different boundaries run in parallel on different links, after the compute phase.
    crosses = sum(1 for a, c in zip(stages, stages[1:]) if a.ipu != c.ipu)
    exchange = (2 * b * T * cfg.model.hidden_size * dtype / IPU_LINK_BYTES_PER_S) if crosses else 0.0
    cycle = max(ipu.seconds_per_micro_batch for ipu in ipus) + exchange
    n_train = 2 * len(stages) - 1
    cycles = ga + n_train - 1                       # ramp-up and ramp-down of the pipeline
    # Ring all-reduce of the fp32 gradient accumulators: each IPU with its counterparts in the other
    # replicas, all IPUs in parallel; 2 (R - 1) / R of the bytes cross a link.
    grad_bytes = 4 if ga > 1 else dtype
    allreduce = max(2 * (replicas - 1) / replicas * ipu.parameters * grad_bytes / IPU_LINK_BYTES_PER_S
                    for ipu in ipus)
    # Optimizer: read weight, gradient and moments, write weight and moments, from SRAM; off chip the
    # moments also stream in and out, sharded over the replicas (replicated tensor sharding).
    def update_seconds(n: int) -> float:
        sram = n * (2 * dtype + grad_bytes + 2 * moments * 4) / SRAM_BYTES_PER_S
        stream = (n * 2 * moments * 4 / replicas / STREAMING_MEMORY_BYTES_PER_S) if offchip else 0.0
        return sram + stream
    optimizer = max(update_seconds(ipu.parameters) for ipu in ipus)
    step = cycles * cycle + allreduce + optimizer
    per_replica = b * ga / step
    return Throughput(samples_per_second=per_replica * replicas, samples_per_second_per_replica=per_replica,
                      tokens_per_second=per_replica * replicas * T, seconds_per_step=step, cycle_seconds=cycle,
                      exchange_seconds_per_micro_batch=exchange, bubble_efficiency=ga / cycles,
                      allreduce_seconds_per_step=allreduce, optimizer_seconds_per_step=optimizer,
                      efficiency=efficiency, peak_flops=peak)


def check_memory(p: Plan) -> None:
    """Raise :class:`IPUOutOfMemoryError` naming every IPU (with its stages and sizes) that overflows."""
    over = [ipu for ipu in p.ipus if ipu.total_bytes > ipu.memory_bytes]
    if not over:
        return
    lines = []
    for ipu in over:
        stages = ", ".join(f"stage {s.index} ({s.name})" for s in ipu.stages)
        lines.append(
            f"IPU {ipu.ipu} [{stages}] needs {ipu.total_bytes / _MB:.1f} MB of {ipu.memory_bytes / _MB:.0f} MB: "
            f"weights {ipu.weights_bytes / _MB:.1f}, optimizer {ipu.optimizer_bytes / _MB:.1f}, "
            f"accumulators {ipu.accumulator_bytes / _MB:.1f}, activations {ipu.activation_bytes / _MB:.1f}, "
            f"code/exchange {ipu.overhead_bytes / _MB:.1f} MB")
    hints = ["a smaller train.micro_batch_size"]
    hints += [] if p.optimizer_state_offchip else ["ipu.optimizer_state_offchip=true"]
    hints += [] if p.recompute else ["ipu.recompute=true"]
    hints += ["another ipu.layers_per_ipu"] if len(p.ipus) > 1 else []
    raise IPUOutOfMemoryError("out of memory: " + "; ".join(lines) + "; try " + ", ".join(hints))


# ----------------------------------------------------------------------------------------------
# Calibration


def published_config() -> RunConfig:
    """The configuration of the published run in ``PUBLISHED_RUN`` (GroupBERT Base phase 2, 16 IPUs)."""
    return load_config(None, PUBLISHED_RUN["overrides"])


def calibrate_efficiency(cfg: RunConfig, samples_per_second: float) -> float:
    """The fraction of peak at which ``plan(cfg)`` gives ``samples_per_second`` (step time is a/eff + c)."""
    p = plan(cfg, efficiency=1.0)
    t = p.throughput
    cycles = p.gradient_accumulation / t.bubble_efficiency
    compute = cycles * (t.cycle_seconds - t.exchange_seconds_per_micro_batch)  # scales with 1 / efficiency
    fixed = t.seconds_per_step - compute
    target = cfg.global_batch_size / samples_per_second
    if target <= fixed:
        raise ValueError(f"{samples_per_second} samples/s is faster than this model allows even at peak")
    return compute / (target - fixed)


def calibration_report() -> str:
    cfg = published_config()
    measured = PUBLISHED_RUN["samples_per_second"]
    peak = plan(cfg, efficiency=1.0).throughput.samples_per_second
    fitted = calibrate_efficiency(cfg, measured)
    now = plan(cfg).throughput.samples_per_second
    return "\n".join([
        f"published: {measured} samples/s ({PUBLISHED_RUN['source']})",
        "config: " + " ".join(PUBLISHED_RUN["overrides"]),
        f"at 100% of peak: {peak:.1f} samples/s = {peak / measured:.2f}x the published number",
        f"fitted efficiency: {fitted:.4f}; SUSTAINED_EFFICIENCY = {SUSTAINED_EFFICIENCY} gives {now:.1f} samples/s "
        f"({100 * (now / measured - 1):+.2f}%)",
    ])


# ----------------------------------------------------------------------------------------------
# Report and command


def format_plan(p: Plan) -> str:
    t = p.throughput
    head = (f"{p.model_type}, {p.parameters / 1e6:.2f}M parameters; micro {p.micro_batch_size} x seq {p.seq_len}, "
            f"GA {p.gradient_accumulation}, {p.replication_factor} replica(s) x {len(p.ipus)} IPU(s) = "
            f"{p.total_ipus} IPUs, global batch {p.global_batch_size} (x {p.device_iterations} device "
            f"iteration(s) per host call); {p.forward_stages} forward / "
            f"{p.training_stages} training stages; {'fp16' if p.half else 'fp32'}, "
            f"recompute {'on' if p.recompute else 'off'}, "
            f"optimizer state {'off' if p.optimizer_state_offchip else 'on'} chip")
    cols = ["IPU", "stages", "layers", "weights MB", "optim MB", "accum MB", "activations MB/mb x in-flight",
            "act MB", "code MB", "total MB", f"% of {p.ipus[0].memory_bytes / _MB:.0f}", "AMP", "GFLOP/mb",
            "ms/mb"]
    rows = []
    for ipu in p.ipus:
        stash = " + ".join(f"{_mb(s.stash_bytes)}x{s.in_flight}" for s in ipu.stages) or "-"
        if ipu.recompute_bytes:
            stash += f" + {_mb(ipu.recompute_bytes)} recompute"
        rows.append([str(ipu.ipu), ",".join(str(s.index) for s in ipu.stages) or "-",
                     _layer_range(ipu.layers) if ipu.layers else "-",
                     f"{ipu.weights_bytes / _MB:.1f}", f"{ipu.optimizer_bytes / _MB:.1f}",
                     f"{ipu.accumulator_bytes / _MB:.1f}", stash, f"{ipu.activation_bytes / _MB:.1f}",
                     f"{ipu.overhead_bytes / _MB:.1f}", f"{ipu.total_bytes / _MB:.1f}",
                     f"{100 * ipu.fraction_used:.1f}%",
                     "-" if ipu.available_memory_proportion is None else f"{ipu.available_memory_proportion:g}",
                     f"{ipu.train_flops / 1e9:.1f}",
                     f"{1e3 * ipu.seconds_per_micro_batch:.3f}"])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    table = [" | ".join(c.rjust(w) for c, w in zip(row, widths)) for row in [cols] + rows]
    table.insert(1, "-+-".join("-" * w for w in widths))
    summary = [
        f"throughput: {t.samples_per_second:.1f} samples/s ({t.samples_per_second_per_replica:.1f} per replica), "
        f"{t.tokens_per_second:,.0f} tokens/s, {t.seconds_per_step:.3f} s/step",
        f"  pipeline cycle {1e3 * t.cycle_seconds:.3f} ms "
        f"(IPU-Link exchange {1e3 * t.exchange_seconds_per_micro_batch:.3f} ms),"
        f" bubble efficiency {t.bubble_efficiency:.4f}, all-reduce {1e3 * t.allreduce_seconds_per_step:.2f} ms/step,"
        f" optimizer {1e3 * t.optimizer_seconds_per_step:.2f} ms/step",
        f"  at {100 * t.efficiency:.1f}% of {t.peak_flops / 1e12:.1f} TFLOPS peak per IPU (calibrated on "
        f"{PUBLISHED_RUN['samples_per_second']} samples/s, {PUBLISHED_RUN['source']})",
    ]
    return "\n".join([head, *table, *summary])


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / _MB:.1f}" if n_bytes >= 0.05 * _MB or n_bytes == 0 else f"{n_bytes / _MB:.2g}"


def _layer_range(layers: list[int]) -> str:
    return f"layer {layers[0]}" if len(layers) == 1 else f"layers {layers[0]}-{layers[-1]}"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m groupbert.ipu.planner", allow_abbrev=False,
                                     description="Per-IPU memory and pod throughput estimate for a pipelined run.")
    parser.add_argument("--config", help="YAML recipe (configs/...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable)")
    parser.add_argument("--calibration", action="store_true", help="print how the efficiency was fitted and exit")
    args = parser.parse_args(argv)
    if args.calibration:
        print(calibration_report())
        return 0
    try:
        p = plan(load_config(args.config, args.overrides))
    except ValueError as e:  # ConfigError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_plan(p))
    try:
        check_memory(p)
    except IPUOutOfMemoryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
