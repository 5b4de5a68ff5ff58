"""Analytic model FLOPs: what one forward (and one training step) of our models computes, per token.

The count is the matmul and convolution work, 2 FLOPs per multiply-add, exactly what
``torch.utils.flop_counter.FlopCounterMode`` counts on these models (``tests/models/test_flops.py`` checks
equality on tiny BERT, GroupBERT and GPT-2): element-wise ops, softmax, LayerNorm, GELU, the embedding
lookups and the losses are left out, as they are in the published model-FLOPs figures below.

Per layer, on ``N = b x T`` tokens of hidden size ``H``, intermediate size ``I``, vocabulary ``V``:

- attention (BERT, GroupBERT, GPT-2): ``N (8 H^2 + 4 T H)``: the q, k, v and output projections
  (``4 x 2 H^2`` per token; GPT-2's fused ``c_attn`` Linear(H, 3H) is the same three) and the two
  attention matmuls ``Q K^T`` and ``P V`` (``2 x 2 T H`` per token). The full ``T x T`` products are
  counted even for GPT-2's causal attention: the counter counts SDPA with ``is_causal=True`` as the full
  product (its formula has no causal term), and so do Kaplan et al. and nanoGPT's ``estimate_mfu``;
- BERT / GPT-2 feed-forward: ``N 4 H I`` (H -> I -> H);
- GroupBERT (Chelombiev et al. 2021, arXiv:2106.05822): the conv module ``N (6 H^2 + 2 H K g)`` (GLU H -> 2H, the
  grouped conv of kernel K over groups of g channels, the dense H -> H) and two grouped FFNs of
  ``N (2 H I + 2 I H / G + 2 H^2)`` each (H -> I, grouped I -> H in G groups, the mixer H -> H);
- heads: BERT/GroupBERT pretraining: the MLM transform and vocabulary projection at the ``P`` masked
  positions the model computes (``data.max_predictions`` slots, padded or not; all T positions without
  positions), ``2 b P (H^2 + H V)``, and the pooler + NSP classifier ``2 b S (H^2 + 2 H)`` for the ``S``
  sequences of a row (1 unpacked; ``hf_bert``, Hugging Face's ``BertForPreTraining``, at all T positions
  whatever P); GPT-2's LM head ``2 N H V`` over all T positions; SQuAD's span head
  ``2 N H 2``.

Training: backward computes, for every matmul, the gradient of its input (dX) and of its weight (dW),
each as many FLOPs as the forward product, so a step is 3 x forward (the counter gives exactly this on
our models: the embeddings' output requires grad, so even the first layer's dX is computed). This is
the "6N" rule of Kaplan et al. 2020, "Scaling Laws for Neural Language Models" (arXiv:2001.08361,
section 2.1: C = 6 N per token with N the non-embedding parameters, plus the attention term), and the
model-FLOPs definition of MFU in Chowdhery et al. 2022, "PaLM" (arXiv:2204.02311, appendix B:
``6 N + 12 L H T`` per token, recomputation not counted). nanoGPT's ``estimate_mfu`` uses the same
``6 N + 12 L H T``; ours counts the heads as they run instead of the parameters.
"""
from __future__ import annotations

from typing import Optional

from groupbert.config import ModelConfig

#: what the model's head computes: ``pretraining`` (BERT/GroupBERT MLM + NSP), ``lm`` (GPT-2's causal LM
#: head over all positions), ``qa`` (SQuAD's start/end span head on every token)
HEADS = ("pretraining", "lm", "qa")


def layer_forward_flops(m: ModelConfig, b: int, T: int) -> float:
    """Matmul/conv FLOPs (2 per multiply-add) of one encoder/decoder layer's forward on b x T tokens."""
    N, H, I = b * T, m.hidden_size, m.intermediate_size
    attention = N * (8 * H * H + 4 * T * H)         # q, k, v, output projections; QK^T and PV
    if m.type in ("bert", "gpt2", "hf_bert"):
        return attention + N * 4 * H * I            # FFN / MLP H->I->H
    conv = N * (6 * H * H + 2 * H * m.conv_kernel_size * m.conv_group_size)  # GLU H->2H, grouped conv, H->H
    gffn = N * (2 * H * I + 2 * I * H // m.ffn_groups + 2 * H * H)           # H->I, grouped I->H, mixer
    return conv + 2 * gffn + attention


def heads_forward_flops(m: ModelConfig, b: int, P: int, sequences_per_row: int = 1) -> float:
    """BERT/GroupBERT pretraining heads on b rows: pooler and NSP per sequence, MLM transform and
    vocabulary projection at the P masked positions."""
    H, V = m.hidden_size, m.vocab_size
    return 2 * b * sequences_per_row * (H * H + 2 * H) + 2 * b * P * (H * H + H * V)


def forward_flops(model_cfg: ModelConfig, batch: int, seq_len: int, masked_positions: Optional[int] = None, *,
                  head: Optional[str] = None, sequences_per_row: int = 1) -> float:
    """FLOPs of the whole model's forward on ``batch`` rows of ``seq_len`` tokens (module docstring).

    ``masked_positions``: the MLM slots P per row (BERT/GroupBERT pretraining; None: the head runs at all
    ``seq_len`` positions, as the model does without ``masked_lm_positions``). ``head``: one of
    :data:`HEADS`; default ``lm`` for GPT-2, ``pretraining`` otherwise. ``sequences_per_row``: the pooler
    and NSP slots of a packed row (``cls_positions``' width).
    """
    m, b, T = model_cfg, batch, seq_len
    head = head or ("lm" if m.type == "gpt2" else "pretraining")
    if head not in HEADS:
        raise ValueError(f"head {head!r} is not one of {HEADS}")
    if (m.type == "gpt2") != (head == "lm"):
        raise ValueError(f"model.type {m.type!r} has no {head!r} head")
    body = m.num_layers * layer_forward_flops(m, b, T)
    if head == "lm":
        return body + 2 * b * T * m.hidden_size * m.vocab_size
    if head == "qa":
        return body + 2 * b * T * m.hidden_size * 2
    # Hugging Face's BertForPreTraining (model.type hf_bert) runs the MLM head at every position
    P = T if masked_positions is None or m.type == "hf_bert" else masked_positions
    return body + heads_forward_flops(m, b, P, sequences_per_row)


def train_flops_per_token(model_cfg: ModelConfig, seq_len: int, masked_positions: Optional[int] = None, *,
                          head: Optional[str] = None, sequences_per_row: int = 1) -> float:
    """Model FLOPs of one training step (forward + backward = 3 x forward) per token of the rows, the
    numerator of MFU (Chowdhery et al. 2022, appendix B). Arguments as :func:`forward_flops`."""
    return 3 * forward_flops(model_cfg, 1, seq_len, masked_positions, head=head,
                             sequences_per_row=sequences_per_row) / seq_len
