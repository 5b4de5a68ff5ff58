"""BERT / GroupBERT pretraining: masked LM + next-sentence prediction (Devlin et al. 2018, section 3.1).

Batches are ``groupbert.data.columns.MASKED_LM`` rows, or ``PACKED_MASKED_LM`` rows with ``data.packing``;
the validation split is always one sequence per row, so ``eval_loss`` compares across runs. The
evaluation's MLM loss is token-weighted and its NSP loss sequence-weighted over the whole split (or its
first ``train.eval_batches`` batches).
"""
from __future__ import annotations

from typing import Optional

import torch

from groupbert.data.loader import sequential_batches
from groupbert.metrics import masked_lm_correct, next_sentence_correct
from groupbert.tasks._outputs import write_eval_results
from groupbert.training.task import Sums

UNPACKED_KEYS = ("input_ids", "token_type_ids", "attention_mask", "masked_lm_positions", "masked_lm_labels",
                 "next_sentence_label")
PACKED_KEYS = UNPACKED_KEYS + ("segment_ids", "position_ids", "cls_positions")


class MaskedLMTask:
    name = "mlm_nsp"
    sum_names = ("loss", "mlm_loss", "nsp_loss", "mlm_ok", "mlm_n", "nsp_ok", "nsp_n")
    progress_keys = ("loss", "mlm_acc")
    best = ("eval_loss", "min")

    def __init__(self, packed: bool = False, validation=None, batch_size: int = 32,
                 max_batches: Optional[int] = None):
        self.batch_keys = PACKED_KEYS if packed else UNPACKED_KEYS
        self.validation, self.batch_size, self.max_batches = validation, batch_size, max_batches

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
    def evaluate(self, model, runtime) -> Optional[dict]:
        if self.validation is None:
            return None
        mlm_loss_sum = nsp_loss_sum = 0.0
        mlm_ok = mlm_n = nsp_ok = nsp_n = 0.0
        for batch in sequential_batches(self.validation, self.batch_size, self.max_batches):
            batch = {k: batch[k].to(runtime.device) for k in self.batch_keys if k in batch}
            with runtime.autocast():
                out = model(**batch)
            _, _, _, c, n, nc, nn_ = self.sums(out, batch).tolist()
            mlm_ok, mlm_n, nsp_ok, nsp_n = mlm_ok + c, mlm_n + n, nsp_ok + nc, nsp_n + nn_
            mlm_loss_sum += float(out.mlm_loss) * n  # mean over this batch's masked tokens -> token-weighted
            nsp_loss_sum += float(out.nsp_loss) * nn_
        mlm_loss, nsp_loss = mlm_loss_sum / max(mlm_n, 1), nsp_loss_sum / max(nsp_n, 1)
        return {"eval_loss": mlm_loss + nsp_loss, "eval_mlm_loss": mlm_loss, "eval_nsp_loss": nsp_loss,
                "eval_mlm_acc": mlm_ok / max(mlm_n, 1), "eval_nsp_acc": nsp_ok / max(nsp_n, 1),
                "eval_sequences": int(nsp_n)}

    def describe_eval(self, r: dict) -> str:
        return f"MLM loss {r['eval_mlm_loss']:.3f}, MLM acc {r['eval_mlm_acc']:.3f}, NSP acc {r['eval_nsp_acc']:.3f}"

    def finish(self, run_dir, record: Optional[dict]) -> dict:
        return write_eval_results(run_dir, record)
