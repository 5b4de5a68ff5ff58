"""Blocks rewritten for speed equal their plain reference in float64 (values and gradients).

Each reference is the textbook formulation written out here, independently of the code under test.
"""
import torch
import torch.nn.functional as F

from groupbert.models.gpt2 import causal_lm_loss

def _reference_causal_lm_loss(logits, labels):
    """HF's original formulation: slice the logits to positions 0..T-2 and score them against labels 1..T-1."""
    shift_logits = logits[:, :-1, :].contiguous()
    shift_labels = labels[:, 1:].contiguous()
    return F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1), ignore_index=-100)

def test_causal_lm_loss_shifting_labels_equals_slicing_logits_in_float64():
    g = torch.Generator().manual_seed(0)
    B, T, V = 3, 7, 11
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, 4:] = -100            # padding at the end of a row
    labels[2, 1:3] = -100           # ignored tokens inside a row
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64, requires_grad=True)
    ref_logits = logits.detach().clone().requires_grad_(True)

    ours = causal_lm_loss(logits, labels)
    ref = _reference_causal_lm_loss(ref_logits, labels)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)

    ours.backward()
    ref.backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=1e-12, atol=1e-12)
    assert torch.all(logits.grad[:, -1] == 0)  # the last position predicts nothing

def test_causal_lm_loss_with_every_label_ignored_is_zero_not_nan():
    logits = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    loss = causal_lm_loss(logits, torch.full((2, 5), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)

def test_padded_vocab_logits_equal_the_plain_linear_in_float64():
    from groupbert.models.gpt2 import VOCAB_ALIGN, padded_vocab_logits

    g = torch.Generator().manual_seed(1)
    V, H = 203, 16   # odd, as GPT-2's 50257
    weight = torch.randn(V, H, generator=g, dtype=torch.float64, requires_grad=True)
    hidden = torch.randn(2, 5, H, generator=g, dtype=torch.float64, requires_grad=True)
    padded = padded_vocab_logits(hidden, weight)
    assert padded.shape[-1] % VOCAB_ALIGN == 0 and padded.shape[-1] > V
    torch.testing.assert_close(padded[..., :V], hidden @ weight.T, rtol=1e-12, atol=1e-12)
    assert torch.all(padded[..., V:] == float("-inf"))

def test_gpt2_padded_head_gives_the_plain_heads_loss_logits_and_gradients_in_float64(tiny_model_config):
    """The model with ``pad_vocab`` (host fast path) against ``pad_vocab=False`` (the plain nn.Linear head,
    what the IPU runs): same loss, logits and every gradient, float64, with ignored labels."""

    from groupbert.models.gpt2 import GPT2LMHeadModel

    cfg = tiny_model_config(type="gpt2", vocab_size=203)
    torch.manual_seed(0)
    fast = GPT2LMHeadModel(cfg).double().train()
    plain = GPT2LMHeadModel(cfg).double().train()
    plain.load_state_dict(fast.state_dict())
    plain.pad_vocab = False
    ids = torch.randint(0, 203, (2, 9))
    labels = ids.clone()
    labels[1, 6:] = -100
    out_fast, out_plain = fast(ids, labels=labels), plain(ids, labels=labels)
    assert out_fast.logits.shape == out_plain.logits.shape == (2, 9, 203)
    torch.testing.assert_close(out_fast.logits, out_plain.logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_fast.loss, out_plain.loss, rtol=1e-12, atol=1e-12)
    out_fast.loss.backward()
    out_plain.loss.backward()
    grads = dict(plain.named_parameters())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-10, atol=1e-12, msg=name)
