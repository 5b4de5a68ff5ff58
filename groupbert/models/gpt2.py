"""GPT-2: the classic decoder-only Transformer language model (learned positions, pre-norm, tied head).

Radford, Wu, Child, Luan, Amodei, Sutskever 2019, "Language Models are Unsupervised Multitask
Learners", https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf.
Agrees with OpenAI's released ``gpt-2/src/model.py``, Hugging Face ``transformers.GPT2LMHeadModel``
and nanoGPT ``model.py`` (the readable anchor). Each of the L blocks is::

    x = x + Drop(c_proj(CausalMHSA(c_attn(ln_1(x)))))   # attn: fused QKV Linear(H, 3H), SDPA is_causal
    x = x + Drop(c_proj(GELU_tanh(c_fc(ln_2(x)))))      # mlp:  Linear(H, I) -> gelu_new -> Linear(I, H)

followed by a final ``ln_f`` and ``lm_head`` (no bias), whose weight is the token embedding ``wte``.

State-dict names mirror HF/OpenAI (``transformer.wte``, ``transformer.h.N.attn.c_attn``, ``ln_1``,
``mlp.c_fc``, ``transformer.ln_f``, ``lm_head``), so HF ``gpt2*`` checkpoints load key for key with
:func:`load_hf_state_dict`. The only conversion is the declared list :data:`TRANSPOSED`: HF (and
OpenAI's TF code) store those projections as ``Conv1D`` weights [in, out], we use ``nn.Linear``
[out, in] (as nanoGPT ``from_pretrained``).

Choices that differ from HF without changing the numbers:
- attention is always ``F.scaled_dot_product_attention``; without ``attention_mask`` it runs with
  ``is_causal=True``, with one it takes a boolean causal-and-padding mask in which every query also
  sees itself, so fully padded rows (left padding) stay finite instead of NaN;
- position ids are ``0..T-1`` unless ``position_ids`` are given (left-padded batches in generation,
  ``groupbert.infer``, pass HF ``generate``'s ``cumsum(attention_mask) - 1``); there is no KV cache and
  no ``token_type_ids``;
- the LM loss is sum / count over labels != -100, so a batch with every label ignored gives 0, not NaN;
- on the host the LM head multiplies by the tied weight padded to a multiple of 64 rows, with -inf logits
  in the extra columns (:func:`padded_vocab_logits`: same loss and gradients, a faster GEMM); ``logits``
  is then a [B, T, V] view of the padded [B, T, V'] tensor.
"""
from __future__ import annotations

import logging
import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groupbert.config import ModelConfig
from groupbert.data.columns import IGNORE_INDEX
from groupbert.models.bert import _from_pretrained_dir as _load_pretrained_dir

logger = logging.getLogger(__name__)


class CausalLMOutput(NamedTuple):
    loss: Optional[Tensor]  # mean next-token CE over labels[:, 1:] != -100, or None without labels
    logits: Tensor          # [B, T, V]


# ----------------------------------------------------------------------------------------------
# Leaf blocks


class GPT2Attention(nn.Module):
    """Causal multi-head self-attention with a fused QKV projection ``c_attn`` and output ``c_proj``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        H = config.hidden_size
        self.num_heads = config.num_heads
        self.c_attn = nn.Linear(H, 3 * H)
        self.c_proj = nn.Linear(H, H)  # residual projection: scaled init (GPT2Model._init_weights)
        self.resid_dropout = nn.Dropout(config.hidden_dropout)
        self.dropout_p = config.attention_dropout

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        B, T, H = x.shape
        nh = self.num_heads
        q, k, v = self.c_attn(x).split(H, dim=2)  # B, T, 3H -> 3 x B, T, H
        # B, T, H -> B, nh, T, hd
        q, k, v = (t.view(B, T, nh, H // nh).transpose(1, 2) for t in (q, k, v))
        dropout_p = self.dropout_p if self.training else 0.0
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:  # [B, 1, T, T] bool, True = attend; already causal
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, H)  # B, nh, T, hd -> B, T, H
        return self.resid_dropout(self.c_proj(y))


class GPT2MLP(nn.Module):
    """``c_fc`` Linear(H, I) -> GELU (tanh approximation, HF ``gelu_new``) -> ``c_proj`` Linear(I, H)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.hidden_size, config.intermediate_size)
        self.c_proj = nn.Linear(config.intermediate_size, config.hidden_size)  # residual projection
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


# ----------------------------------------------------------------------------------------------
# The layer


class GPT2Block(nn.Module):
    """Pre-norm: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.eps)
        self.attn = GPT2Attention(config)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.eps)
        self.mlp = GPT2MLP(config)

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


# ----------------------------------------------------------------------------------------------
# Base model


def causal_padding_mask(attention_mask: Tensor) -> Tensor:
    """HF-style [B, T] padding mask (1 = token, 0 = padding) -> [B, 1, T, T] bool, True = attend.

    Query i sees keys j <= i that are tokens, and always itself, so a padded query's row is never
    empty (SDPA would return NaN there); its output is unused (its label should be -100).
    """
    T = attention_mask.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()  # T, T
    eye = torch.eye(T, dtype=torch.bool, device=attention_mask.device)
    keys = attention_mask.bool()[:, None, None, :]  # B, 1, 1, T
    return (causal & keys) | eye  # B, 1, T, T


def _check_sizes(config: ModelConfig) -> None:
    if config.hidden_size % config.num_heads != 0:
        raise ValueError(f"model.hidden_size ({config.hidden_size}) must be divisible by "
                         f"model.num_heads ({config.num_heads})")


class GPT2Model(nn.Module):
    """Token + learned position embeddings -> dropout -> L pre-norm blocks -> ``ln_f``; HF ``GPT2Model`` names."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        _check_sizes(config)
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_positions, config.hidden_size)
        self.drop = nn.Dropout(config.hidden_dropout)
        self.h = nn.ModuleList([GPT2Block(config) for _ in range(config.num_layers)])
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.eps)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, σ = initializer_range) weights and embeddings, zero biases, LayerNorm γ=1 β=0.

        Residual projections (both ``c_proj``) use σ / sqrt(2·L), per GPT-2 paper ("scale the weights of
        residual layers at initialization by a factor of 1/√N", N = 2 residual branches per block), as
        nanoGPT and HF. ``apply`` visits children first, so the attn/mlp case overrides the Linear one.
        """
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, (GPT2Attention, GPT2MLP)):
            nn.init.normal_(module.c_proj.weight, mean=0.0, std=std / math.sqrt(2 * self.config.num_layers))

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None,
                position_ids: Optional[Tensor] = None) -> Tensor:
        """[B, T] token ids (T <= max_positions) -> [B, T, H] final hidden states. ``position_ids`` [B, T]
        (default ``0..T-1``): a left-padded row's tokens start at 0 after its padding, as HF ``generate``."""
        T = input_ids.size(1)
        if T > self.config.max_positions:
            raise ValueError(f"sequence length {T} exceeds model.max_positions ({self.config.max_positions})")
        positions = torch.arange(T, device=input_ids.device) if position_ids is None else position_ids
        x = self.drop(self.wte(input_ids) + self.wpe(positions))  # B, T, H + (T, H or B, T, H)
        attn_mask = None if attention_mask is None else causal_padding_mask(attention_mask)
        for block in self.h:
            x = block(x, attn_mask)
        return self.ln_f(x)

    @classmethod
    def from_pretrained_dir(cls, path: str, strict: bool = True) -> "GPT2Model":
        """Build from a HF checkpoint directory (``config.json`` + ``model.safetensors``), in eval mode like HF."""
        return _from_pretrained_dir(cls, path, strict)


# ----------------------------------------------------------------------------------------------
# LM head


VOCAB_ALIGN = 64  # rows of the padded LM-head weight (nanoGPT pads GPT-2's 50257 to 50304 for the same reason)


def padded_vocab_logits(hidden: Tensor, weight: Tensor) -> Tensor:
    """``hidden @ weight.T`` with the vocabulary padded to a multiple of :data:`VOCAB_ALIGN`: [..., V'] logits
    whose first V columns are the real ones and whose extra columns are -inf (a bias), so softmax, the
    cross-entropy and its gradient are exactly those over the V real columns.

    Why: GPT-2's vocabulary (50257) is odd, and the CPU GEMM writing rows of an odd length runs at about
    half speed (``h @ W.T`` for 1024 x 768 tokens: 1.23 s at 50257 columns, 0.53 s at 50304, 2-core AMD
    EPYC); the padded weight is one copy of W, and the gradient reaches ``weight`` through the concatenation.
    """
    V, H = weight.shape
    pad = -V % VOCAB_ALIGN
    weight = torch.cat([weight, weight.new_zeros(pad, H)])  # V', H
    bias = torch.zeros(V + pad, dtype=weight.dtype, device=weight.device)
    bias[V:] = float("-inf")
    return F.linear(hidden, weight, bias)


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token CE: position t predicts ``labels[:, t + 1]`` (HF: pass ``labels = input_ids``), -100 ignored.

    The labels are shifted, not the logits (the last position gets -100, as HF's ``ForCausalLMLoss``):
    slicing ``logits[:, :-1]`` would copy the [B, T, V] logits forward and zero-fill and copy them again
    in backward, the largest tensors of the step.
    """
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)  # B*T
    # fp32 at least (bf16/fp16 logits under autocast), float64 kept
    logits = logits.reshape(targets.numel(), -1).to(torch.promote_types(logits.dtype, torch.float32))
    total = F.cross_entropy(logits, targets,
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


class GPT2LMHeadModel(nn.Module):
    """GPT-2 with the language-model head; ``lm_head.weight`` is ``transformer.wte.weight``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied; initialised as wte
        # Host fast path (:func:`padded_vocab_logits`); the IPU pipeline turns it off (PopTorch lowers the Linear).
        self.pad_vocab = True

    def forward(self, input_ids: Tensor, labels: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None, position_ids: Optional[Tensor] = None) -> CausalLMOutput:
        """``input_ids`` [B, T]; ``labels`` [B, T] unshifted (usually ``input_ids`` with -100 at padding)."""
        hidden = self.transformer(input_ids, attention_mask, position_ids)  # B, T, H
        V = self.config.vocab_size
        if self.pad_vocab and V % VOCAB_ALIGN:
            padded = padded_vocab_logits(hidden, self.lm_head.weight)  # B, T, V' (V' > V)
            loss = causal_lm_loss(padded, labels) if labels is not None else None  # the -inf columns add 0
            return CausalLMOutput(loss, padded[..., :V])  # B, T, V view
        logits = self.lm_head(hidden)  # B, T, V
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return CausalLMOutput(loss, logits)

    @classmethod
    def from_pretrained_dir(cls, path: str, strict: bool = True) -> "GPT2LMHeadModel":
        """As :meth:`GPT2Model.from_pretrained_dir`."""
        return _from_pretrained_dir(cls, path, strict)


# ----------------------------------------------------------------------------------------------
# Checkpoint conversion (Hugging Face <-> ours)

# Weights that HF/OpenAI store as Conv1D [in, out]; ours are nn.Linear [out, in] (nanoGPT `transposed`).
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Activations HF names that are GPT-2's tanh-approximated GELU.
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")


def from_hf_config(hf_config) -> ModelConfig:
    """A ``transformers.GPT2Config`` (or its ``config.json`` dict) -> ``ModelConfig(type="gpt2")``.

    ``embd_pdrop`` and ``resid_pdrop`` both become ``hidden_dropout`` (they are equal in every
    released GPT-2; if not, ``resid_pdrop`` wins, with a warning).
    """
    hf = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
    unsupported = [
        (hf.get("activation_function", "gelu_new") not in _TANH_GELUS,
         f"activation_function={hf.get('activation_function')!r} (only {_TANH_GELUS})"),
        (not hf.get("scale_attn_weights", True), "scale_attn_weights=False"),
        (hf.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx=True"),
        (hf.get("add_cross_attention", False), "add_cross_attention=True"),
        (not hf.get("tie_word_embeddings", True), "tie_word_embeddings=False"),
    ]
    for bad, what in unsupported:
        if bad:
            raise ValueError(f"GPT-2 config with {what} is not supported")
    missing = [k for k in ("vocab_size", "n_embd", "n_layer", "n_head", "n_positions") if k not in hf]
    if missing:
        raise ValueError(f"HF config lacks {missing}")
    resid, embd = hf.get("resid_pdrop", 0.1), hf.get("embd_pdrop", 0.1)
    if resid != embd:
        logger.warning("embd_pdrop (%s) != resid_pdrop (%s); using resid_pdrop for model.hidden_dropout", embd, resid)
    return ModelConfig(
        type="gpt2",
        vocab_size=hf["vocab_size"],
        hidden_size=hf["n_embd"],
        num_layers=hf["n_layer"],
        num_heads=hf["n_head"],
        intermediate_size=hf.get("n_inner") or 4 * hf["n_embd"],  # n_inner None means 4H
        max_positions=hf["n_positions"],
        hidden_dropout=resid,
        attention_dropout=hf.get("attn_pdrop", 0.1),
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        initializer_range=hf.get("initializer_range", 0.02),
    )


def to_hf_config(cfg: ModelConfig):
    """``ModelConfig(type="gpt2")`` -> ``transformers.GPT2Config``."""
    if cfg.type != "gpt2":
        raise ValueError(f"to_hf_config needs model.type 'gpt2', got {cfg.type!r}")
    import transformers  # lazy: only checkpoint conversion needs it

    eos = cfg.vocab_size - 1  # GPT-2's <|endoftext|> is the last id (50256); HF's default checks it is in range
    return transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.max_positions, n_embd=cfg.hidden_size,
        n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.intermediate_size,
        activation_function="gelu_new", resid_pdrop=cfg.hidden_dropout, embd_pdrop=cfg.hidden_dropout,
        attn_pdrop=cfg.attention_dropout, layer_norm_epsilon=cfg.eps,
        initializer_range=cfg.initializer_range, bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=True,
    )


def _is_hf_buffer(key: str) -> bool:
    """Causal-mask buffers older HF checkpoints store: ``h.N.attn.bias`` and ``h.N.attn.masked_bias``."""
    return key.split(".")[-2:] in (["attn", "bias"], ["attn", "masked_bias"])


def load_hf_state_dict(model: nn.Module, state_dict: dict, strict: bool = True) -> None:
    """Load a HF ``GPT2LMHeadModel`` or ``GPT2Model`` state dict into ``model`` (either of ours).

    Key for key, with the weights in :data:`TRANSPOSED` transposed. Keys may carry the
    ``transformer.`` prefix or not; HF's ``attn.bias``/``attn.masked_bias`` buffers are skipped;
    ``lm_head.weight`` may be absent (it is ``wte``), is dropped for a headless model, and must equal
    ``wte`` when present. With ``strict``, missing, unexpected and shape-mismatched keys raise
    ``ValueError`` listing them, before anything is copied.
    """
    own = model.state_dict()
    prefix = "transformer." if any(k.startswith("transformer.") for k in own) else ""
    renamed, untied = {}, []
    for key, value in state_dict.items():
        if _is_hf_buffer(key):
            continue
        if key == "lm_head.weight":  # tied: the values come from wte (dropped for a headless model)
            wte = state_dict.get("transformer.wte.weight", state_dict.get("wte.weight"))
            if prefix and wte is not None and (wte.shape != value.shape or not torch.equal(wte, value)):
                untied.append(key)
            continue
        if key.endswith(TRANSPOSED) and value.dim() == 2:
            value = value.t()
        key = prefix + key.removeprefix("transformer.")
        renamed[key] = value

    missing = sorted(k for k in own.keys() - renamed.keys() if k != "lm_head.weight")
    unexpected = sorted(renamed.keys() - own.keys())
    mismatched = sorted(k for k in renamed.keys() & own.keys() if renamed[k].shape != own[k].shape)
    shapes = [f"{k} checkpoint {tuple(renamed[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched]
    problems = [f"{name}: {keys}" for name, keys in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes),
                 ("lm_head not tied to wte", untied)) if keys]
    if problems and strict:
        raise ValueError("state dict does not match the model; " + "; ".join(problems))
    if problems:
        logger.warning("loading non-strictly; %s", "; ".join(problems))
    for k in mismatched + unexpected:
        del renamed[k]
    model.load_state_dict(renamed, strict=False)


def to_hf_state_dict(model: nn.Module) -> dict:
    """Our ``GPT2LMHeadModel`` / ``GPT2Model`` -> the HF state dict of the same class (Conv1D layout).

    Loads into ``transformers.GPT2LMHeadModel`` / ``GPT2Model`` with ``load_state_dict(strict=True)``;
    ``lm_head.weight`` is included (the same tensor as ``wte``), as HF's own ``state_dict()`` has it.
    """
    return {k: (v.t().contiguous() if k.endswith(TRANSPOSED) else v) for k, v in model.state_dict().items()}


def _from_pretrained_dir(cls, path: str, strict: bool):
    """config.json + model.safetensors (never pickle) -> ``cls`` instance in eval mode."""
    return _load_pretrained_dir(cls, path, strict, config_from=from_hf_config, load_weights=load_hf_state_dict)
