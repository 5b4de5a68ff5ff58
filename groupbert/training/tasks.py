"""What the shared pretraining loop needs to know about an objective: batch columns, logging sums,
the train/eval records, and the module that runs on the IPU.

- :class:`MaskedLMTask`: BERT / GroupBERT masked LM + next-sentence prediction (``groupbert.data.pretraining``).
- :class:`CausalLMTask`: GPT-2 next-token prediction on contiguous blocks (``groupbert.data.causal``).

Each micro-batch yields a short vector of sums (``sum_names``; "loss" first) computed on the device, so
the host syncs once per step; records divide them out over a logging window.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from groupbert.data.loader import sequential_batches
from groupbert.metrics import masked_lm_correct, next_sentence_correct, next_token_correct


class Sums:
    """Named sums over micro-batches, added up between two log records."""

    def __init__(self, names: tuple[str, ...], values=None, micro: int = 0):
        self.names, self.micro = names, micro
        self.values = dict(zip(names, values)) if values is not None else dict.fromkeys(names, 0.0)

    def __iadd__(self, other: "Sums") -> "Sums":
        for k in self.names:
            self.values[k] += other.values[k]
        self.micro += other.micro
        return self

    def __getitem__(self, name: str) -> float:
        return self.values[name]


class MaskedLMTask:
    """``packed``: training rows hold several sequences (``groupbert.data.packing``), which adds the
    ``position_ids`` and ``cls_positions`` columns; evaluation rows may be either kind."""
    name = "mlm_nsp"
    sum_names = ("loss", "mlm_loss", "nsp_loss", "mlm_ok", "mlm_n", "nsp_ok", "nsp_n")
    progress_keys = ("loss", "mlm_acc")

    def __init__(self, packed: bool = False):
        self.batch_keys = ("input_ids", "token_type_ids", "attention_mask", "masked_lm_positions",
                           "masked_lm_labels", "next_sentence_label") + (
                               ("position_ids", "cls_positions", "segment_ids") if packed else ())

    def sequences(self, s: Sums) -> float:
        return s["nsp_n"]  # one NSP label per sequence, packed or not

    @torch.no_grad()
    def sums(self, out, batch) -> torch.Tensor:
        return torch.stack([out.loss.float(), out.mlm_loss.float(), out.nsp_loss.float(),
                            *masked_lm_correct(out.mlm_logits, batch["masked_lm_labels"]),
                            *next_sentence_correct(out.nsp_logits, batch["next_sentence_label"])])

    def train_record(self, s: Sums) -> dict:
        m = max(s.micro, 1)
        return {"loss": s["loss"] / m, "mlm_loss": s["mlm_loss"] / m, "nsp_loss": s["nsp_loss"] / m,
                "mlm_acc": s["mlm_ok"] / max(s["mlm_n"], 1), "nsp_acc": s["nsp_ok"] / max(s["nsp_n"], 1)}

    @torch.no_grad()
    def evaluate(self, model, dataset, batch_size, max_batches, device, autocast) -> dict:
        mlm_loss_sum = nsp_loss_sum = 0.0
        mlm_ok = mlm_n = nsp_ok = nsp_n = 0.0
        for batch in sequential_batches(dataset, batch_size, max_batches):
            batch = {k: batch[k].to(device) for k in self.batch_keys if k in batch}
            with autocast():
                out = model(**batch)
            _, _, _, c, n, nc, nn_ = self.sums(out, batch).tolist()
            mlm_ok, mlm_n, nsp_ok, nsp_n = mlm_ok + c, mlm_n + n, nsp_ok + nc, nsp_n + nn_
            mlm_loss_sum += float(out.mlm_loss) * n  # mean over this batch's masked tokens → token-weighted
            nsp_loss_sum += float(out.nsp_loss) * nn_
        mlm_loss, nsp_loss = mlm_loss_sum / max(mlm_n, 1), nsp_loss_sum / max(nsp_n, 1)
        return {"eval_loss": mlm_loss + nsp_loss, "eval_mlm_loss": mlm_loss, "eval_nsp_loss": nsp_loss,
                "eval_mlm_acc": mlm_ok / max(mlm_n, 1), "eval_nsp_acc": nsp_ok / max(nsp_n, 1),
                "eval_sequences": int(nsp_n)}

    def describe_eval(self, r: dict) -> str:
        return f"MLM loss {r['eval_mlm_loss']:.3f}, MLM acc {r['eval_mlm_acc']:.3f}, NSP acc {r['eval_nsp_acc']:.3f}"

    def device_module(self, model: nn.Module, poptorch) -> nn.Module:
        return _MaskedLMOnDevice(model, poptorch)


class CausalLMTask:
    name = "causal_lm"
    batch_keys = ("input_ids", "labels")
    sum_names = ("loss", "ok", "n")
    progress_keys = ("loss", "acc")

    def sequences(self, s: Sums) -> None:
        return None  # one block per row

    @torch.no_grad()
    def sums(self, out, batch) -> torch.Tensor:
        return torch.stack([out.loss.float(), *next_token_correct(out.logits, batch["labels"])])

    def train_record(self, s: Sums) -> dict:
        return {"loss": s["loss"] / max(s.micro, 1), "acc": s["ok"] / max(s["n"], 1)}

    @torch.no_grad()
    def evaluate(self, model, dataset, batch_size, max_batches, device, autocast) -> dict:
        loss_sum = ok = n = 0.0
        for batch in sequential_batches(dataset, batch_size, max_batches):
            batch = {k: batch[k].to(device) for k in self.batch_keys}
            with autocast():
                out = model(**batch)
            loss, c, k = self.sums(out, batch).tolist()
            loss_sum, ok, n = loss_sum + loss * k, ok + c, n + k  # token-weighted mean
        loss = loss_sum / max(n, 1)
        return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), "eval_acc": ok / max(n, 1),
                "eval_tokens": int(n)}

    def describe_eval(self, r: dict) -> str:
        return f"loss {r['eval_loss']:.3f}, perplexity {r['eval_ppl']:.1f}, next-token acc {r['eval_acc']:.3f}"

    def device_module(self, model: nn.Module, poptorch) -> nn.Module:
        return _CausalLMOnDevice(model, poptorch)


class _MaskedLMOnDevice(nn.Module):
    """What runs on the IPU: the loss for backward plus the logging sums, so no logits cross to the
    host. With ``OutputMode.Sum`` every output comes back summed over the host call."""

    def __init__(self, model: nn.Module, poptorch):
        super().__init__()
        self.model, self._poptorch = model, poptorch

    def forward(self, input_ids, token_type_ids, attention_mask, masked_lm_positions, masked_lm_labels,
                next_sentence_label, position_ids=None, cls_positions=None, segment_ids=None):
        out = self.model(input_ids, token_type_ids, attention_mask, masked_lm_positions, masked_lm_labels,
                         next_sentence_label, position_ids, cls_positions, segment_ids)
        # sum_names order; the loss (identity_loss) goes last, as PopTorch wants it
        return (out.mlm_loss, out.nsp_loss, *masked_lm_correct(out.mlm_logits, masked_lm_labels),
                *next_sentence_correct(out.nsp_logits, next_sentence_label),
                self._poptorch.identity_loss(out.loss, reduction="none"))


class _CausalLMOnDevice(nn.Module):
    def __init__(self, model: nn.Module, poptorch):
        super().__init__()
        self.model, self._poptorch = model, poptorch

    def forward(self, input_ids, labels):
        out = self.model(input_ids, labels)
        return *next_token_correct(out.logits, labels), self._poptorch.identity_loss(out.loss, reduction="none")


def task_for(model_type: str, packed: bool = False):
    return CausalLMTask() if model_type == "gpt2" else MaskedLMTask(packed)
