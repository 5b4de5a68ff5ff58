"""SQuAD v1.1 fine-tuning (``run_squad.py``): span prediction trained by the one engine, scored with the
official exact match and F1.

Training length is ``squad.epochs`` passes over the training features (``ceil(epochs x features / global
batch)`` optimizer steps; ``squad.epochs: null`` uses ``train.max_steps``), with the schedule's warmup
taken from those steps. The dev set is evaluated every ``train.eval_every`` steps (the checkpoint with
the best F1 is kept as ``checkpoints/best``) and at the end, which writes ``predictions.json`` (question
id -> answer), ``nbest_predictions.json`` (the ``squad.n_best`` answers per question with probabilities,
as Hugging Face's ``run_qa.py``) and ``eval_results.json`` (``exact_match``, ``f1`` in percent, plus the
first-sentence baseline's scores). :func:`evaluate` does the same for any fine-tuned run or checkpoint
(``run_squad.py --eval-only``).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from groupbert.config import ConfigError, RunConfig
from groupbert.data import bundled_vocab_file, load_wordpiece, special_ids, split_sentences, vocab_fingerprint
from groupbert.models.qa import BertForQuestionAnswering
from groupbert.squad.dataset import load_squad
from groupbert.squad.evaluate import score
from groupbert.squad.features import Features, build_features, pack_features
from groupbert.squad.postprocess import postprocess_predictions, write_predictions
from groupbert.training import engine
from groupbert.training.task import Sums

logger = logging.getLogger(__name__)

UNPACKED_KEYS = ("input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions")
PACKED_KEYS = UNPACKED_KEYS + ("segment_ids", "position_ids")


class SquadTask:
    name = "squad"
    sum_names = ("loss", "features")
    progress_keys = ("loss",)
    best = ("eval_f1", "max")

    def __init__(self, cfg: RunConfig, dev_examples: list[dict], dev_features: Features, pad_id: int,
                 dev_source: str):
        self.cfg, self.examples, self.features, self.pad_id = cfg, dev_examples, dev_features, pad_id
        self.dev_source = dev_source
        self.batch_keys = PACKED_KEYS if cfg.data.packing else UNPACKED_KEYS
        self._answers: Optional[tuple[dict, dict]] = None   # the last evaluation's predictions and n-best

    def sequences(self, s: Sums) -> float:
        return s["features"]   # several per packed row

    @torch.no_grad()
    def sums(self, out, batch) -> torch.Tensor:
        features = (batch["start_positions"] >= 0).sum()
        return torch.stack([out.loss.detach().float(), features.float()])

    def train_record(self, s: Sums) -> dict:
        return {"loss": s["loss"] / max(s.micro, 1)}

    def evaluate(self, model, runtime) -> dict:
        s, packing = self.cfg.squad, None
        if self.cfg.data.packing:
            packing = (self.pad_id, self.cfg.data.max_sequences_per_pack)
        start, end = predict_logits(model, self.features, self.cfg.train.micro_batch_size, runtime.device,
                                    runtime.autocast, packing)
        predictions, nbest = postprocess_predictions(self.examples, self.features, start, end, s.n_best,
                                                     s.max_answer_length)
        self._answers = predictions, nbest
        scores = score({ex["id"]: ex["answers"]["text"] for ex in self.examples}, predictions)
        return {"eval_exact_match": scores["exact_match"], "eval_f1": scores["f1"],
                "eval_questions": len(self.examples), "eval_features": len(self.features)}

    def describe_eval(self, r: dict) -> str:
        return f"EM {r['eval_exact_match']:.2f}, F1 {r['eval_f1']:.2f} over {r['eval_questions']} questions"

    def finish(self, run_dir, record: Optional[dict]) -> dict:
        """The answers and scores of the final evaluation, with the first-sentence baseline beside them."""
        run_dir = Path(run_dir)
        predictions, nbest = self._answers
        write_predictions(predictions, run_dir / "predictions.json")
        write_predictions(nbest, run_dir / "nbest_predictions.json")
        references = {ex["id"]: ex["answers"]["text"] for ex in self.examples}
        baseline = score(references, first_sentence_baseline(self.examples))
        results = {"exact_match": record["eval_exact_match"], "f1": record["eval_f1"], "step": record["step"],
                   "dev_questions": len(self.examples), "dev_features": len(self.features),
                   "baseline_first_sentence": baseline, "dev_file": self.dev_source,
                   "eval_seconds": record.get("eval_seconds"),
                   "dev_sequences_per_s": len(self.features) / max(record.get("eval_seconds") or 0.0, 1e-9)}
        if "checkpoint" in record:
            results["checkpoint"] = record["checkpoint"]
        (run_dir / "eval_results.json").write_text(json.dumps(results, indent=1) + "\n")
        logger.info("dev: EM %.2f F1 %.2f (first-sentence baseline EM %.2f F1 %.2f) over %d questions",
                    results["exact_match"], results["f1"], baseline["exact_match"], baseline["f1"],
                    len(self.examples))
        return results


def training_steps(cfg: RunConfig, n_rows: int) -> int:
    if cfg.squad.epochs is None:
        return cfg.train.max_steps
    return max(1, math.ceil(cfg.squad.epochs * n_rows / cfg.global_batch_size))


def first_sentence_baseline(examples: list[dict]) -> dict[str, str]:
    """The trivial reader: answer every question with the first sentence of its context."""
    out = {}
    for ex in examples:
        sentences = split_sentences(ex["context"])
        out[ex["id"]] = sentences[0] if sentences else ex["context"]
    return out


@torch.no_grad()
def predict_logits(model, features: Features, batch_size: int, device, autocast,
                   packing: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Start and end logits [features, T]. ``packing`` = (pad id, max features per row): run packed rows
    (fewer rows to compute) and hand back each feature's logits as if it had its own row."""
    was_training = model.training
    model.eval()
    starts, ends = [], []
    if packing is not None:
        cols, layout, _ = pack_features(features, packing[0], packing[1], with_labels=False)
        cols = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in cols.items()}
    else:
        cols = {k: torch.from_numpy(v) for k, v in features.model_inputs(with_labels=False).items()}
    n = len(cols["input_ids"])
    for i in range(0, n, batch_size):
        batch = {k: v[i:i + batch_size].to(device) for k, v in cols.items()}
        with autocast():
            out = model(**batch)
        starts.append(out.start_logits.float().cpu().numpy())
        ends.append(out.end_logits.float().cpu().numpy())
    model.train(was_training)
    start, end = np.concatenate(starts), np.concatenate(ends)
    if packing is not None:  # outside a feature's tokens nothing is read (post-processing uses its offsets)
        start, end = layout.unpack_tokens(start, -1e9), layout.unpack_tokens(end, -1e9)
    return start, end


def squad_job(cfg: RunConfig, runtime=None, training: bool = True) -> engine.Job:
    """Data, model and task of a fine-tuning run (``training=False``: the dev set only, for --eval-only)."""
    s, d = cfg.squad, cfg.data
    room = d.seq_len - s.max_query_length - 3
    if room <= s.doc_stride:
        raise ConfigError(f"{s.doc_stride} leaves no progress between windows: data.seq_len {d.seq_len} - "
                          f"squad.max_query_length {s.max_query_length} - 3 = {room} context tokens must exceed "
                          f"it", key="squad.doc_stride")
    vocab_file = Path(d.vocab_file) if d.vocab_file else bundled_vocab_file()
    tokenizer = load_wordpiece(vocab_file, lowercase=d.lowercase)
    if tokenizer.get_vocab_size() > cfg.model.vocab_size:
        raise ConfigError(f"the vocabulary {vocab_file} has {tokenizer.get_vocab_size()} tokens but the model's "
                          f"embedding table has {cfg.model.vocab_size}", key="model.vocab_size")
    pad_id = special_ids(tokenizer).pad
    feat_args = dict(seq_len=d.seq_len, doc_stride=s.doc_stride, max_query_length=s.max_query_length)
    dev_examples, dev_report = load_squad(s.dev_file, "dev", s.max_dev_examples)
    dev_features = build_features(dev_examples, tokenizer, training=False, **feat_args)
    task = SquadTask(cfg, dev_examples, dev_features, pad_id, dev_report.source)
    job = engine.Job(task=task, model=BertForQuestionAnswering(cfg.model), train_data=None, total_steps=0,
                     checkpoint_state={"vocab_sha256": vocab_fingerprint(vocab_file), "vocab_file": str(vocab_file)},
                     run_record={"dev_features": len(dev_features), "dev_data": dev_report.as_dict()})
    if not training:
        return job
    import datasets  # the Arrow table gives EpochBatches its resumable, seeded order

    train_examples, train_report = load_squad(s.train_file, "train", s.max_train_examples)
    train_features = build_features(train_examples, tokenizer, training=True, **feat_args)
    if d.packing:  # several features per row: epochs count features, steps count rows
        train_cols, _, plan = pack_features(train_features, pad_id, d.max_sequences_per_pack, seed=cfg.train.seed)
        logger.info("packed %d training features into %d rows (%.2f per row; real tokens %.1f%%)",
                    plan.num_sequences, plan.num_rows, plan.packing_factor, 100 * plan.efficiency)
    else:
        train_cols = train_features.model_inputs(True)
    job.train_data = datasets.Dataset.from_dict(train_cols)
    job.total_steps = training_steps(cfg, len(job.train_data))
    job.run_record.update(train_features=len(train_features), train_data=train_report.as_dict())
    logger.info("SQuAD: %d train questions -> %d features, %d dev questions -> %d features; %d steps of %d %s x "
                "%d tokens", len(train_examples), len(train_features), len(dev_examples), len(dev_features),
                job.total_steps, cfg.global_batch_size, "packed rows" if d.packing else "features", d.seq_len)
    return job


def finetune(cfg: RunConfig, output_dir, resume: bool = False) -> dict:
    """Fine-tune (or continue, with ``resume``) on SQuAD; returns the contents of ``eval_results.json``."""
    return engine.train(cfg, output_dir, resume, squad_job)


def evaluate(cfg: RunConfig, checkpoint, output_dir) -> dict:
    """Evaluate a fine-tuned run or checkpoint on the dev set; writes the three result files to ``output_dir``."""
    return engine.evaluate(cfg, checkpoint, output_dir, lambda c, r: squad_job(c, r, training=False))
