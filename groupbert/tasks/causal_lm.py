"""GPT-2 pretraining: next-token prediction on contiguous blocks (``groupbert.data.columns.CAUSAL_LM``).
The evaluation's loss is token-weighted over the held-out documents' blocks; perplexity is its exp."""
from __future__ import annotations

import math
from typing import Optional

import torch

from groupbert.data.loader import sequential_batches
from groupbert.metrics import next_token_correct
from groupbert.tasks._outputs import write_eval_results
from groupbert.training.task import Sums


class CausalLMTask:
    name = "causal_lm"
    batch_keys = ("input_ids", "labels")
    sum_names = ("loss", "ok", "n")
    progress_keys = ("loss", "acc")
    best = ("eval_loss", "min")

    def __init__(self, validation=None, batch_size: int = 16, max_batches: Optional[int] = None):
        self.validation, self.batch_size, self.max_batches = validation, batch_size, max_batches

    def sequences(self, s: Sums) -> None:
        return None  # one block per row

    @torch.no_grad()
    def sums(self, out, batch) -> torch.Tensor:
        return torch.stack([out.loss.float(), *next_token_correct(out.logits, batch["labels"])])

    def train_record(self, s: Sums) -> dict:
        return {"loss": s["loss"] / max(s.micro, 1), "acc": s["ok"] / max(s["n"], 1)}

    @torch.no_grad()
    def evaluate(self, model, runtime) -> Optional[dict]:
        if self.validation is None:
            return None
        loss_sum = ok = n = 0.0
        for batch in sequential_batches(self.validation, self.batch_size, self.max_batches):
            batch = {k: batch[k].to(runtime.device) for k in self.batch_keys}
            with runtime.autocast():
                out = model(**batch)
            loss, c, k = self.sums(out, batch).tolist()
            loss_sum, ok, n = loss_sum + loss * k, ok + c, n + k  # token-weighted mean
        loss = loss_sum / max(n, 1)
        return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), "eval_acc": ok / max(n, 1),
                "eval_tokens": int(n)}

    def describe_eval(self, r: dict) -> str:
        return f"loss {r['eval_loss']:.3f}, perplexity {r['eval_ppl']:.1f}, next-token acc {r['eval_acc']:.3f}"

    def finish(self, run_dir, record: Optional[dict]) -> dict:
        return write_eval_results(run_dir, record)
