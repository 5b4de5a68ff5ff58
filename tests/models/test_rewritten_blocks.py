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
