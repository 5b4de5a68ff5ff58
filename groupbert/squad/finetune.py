"""SQuAD v1.1 fine-tuning on CPU / CUDA: data, QA model, optimizer, loop, checkpoints, evaluation.

The run contract is pretraining's (``groupbert.training.pretrain``): ``config.yaml``, ``metrics.jsonl`` and
W&B through :class:`RunLog`, atomic ``checkpoints/step-N/`` with optimizer, RNG and data position so that
``--resume`` continues exactly. Training length is ``squad.epochs`` passes over the training features
(``ceil(epochs x features / global batch)`` optimizer steps; ``squad.epochs: null`` uses
``train.max_steps``), with ``schedule.warmup`` as a fraction of those steps. At the end the dev set is
evaluated: ``predictions.json`` (question id -> answer) and ``eval_results.json`` (``exact_match``, ``f1``
in percent, official v1.1 semantics, plus the first-sentence baseline's scores for comparison).
"""
from __future__ import annotations

import json
import logging
import math
import platform
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from groupbert.config import ConfigError, RunConfig, save_config
from groupbert.data import bundled_vocab_file, load_wordpiece, special_ids, split_sentences, vocab_fingerprint
from groupbert.data.loader import EpochBatches
from groupbert.models.qa import BertForQuestionAnswering, load_qa_init
from groupbert.squad.dataset import load_squad
from groupbert.squad.evaluate import score
from groupbert.squad.features import Features, build_features, pack_features
from groupbert.squad.postprocess import postprocess_predictions, write_predictions
from groupbert.training import checkpoint as ckpt_io
from groupbert.training.checkpoint import CheckpointError
from groupbert.training.pretrain import _git_commit
from groupbert.training.distributed import (NullRunLog, check_world_size, cleanup, no_sync, setup_distributed,
                                            wrap_model)
from groupbert.training.precision import advance_schedule, build_loss_scaler
from groupbert.training.runtime import build_run_optimizer, open_run, restore_run, setup_runtime
from groupbert.training.run_log import RunLog
from groupbert.training.steppers import QAIPUStepper
from optimizers import build_schedule

logger = logging.getLogger(__name__)

QA_KEYS = ("input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions", "position_ids",
           "segment_ids")


def training_steps(cfg: RunConfig, n_features: int) -> int:
    if cfg.squad.epochs is None:
        return cfg.train.max_steps
    return max(1, math.ceil(cfg.squad.epochs * n_features / cfg.global_batch_size))


def first_sentence_baseline(examples: list[dict]) -> dict[str, str]:
    """The trivial reader: answer every question with the first sentence of its context."""
    out = {}
    for ex in examples:
        sentences = split_sentences(ex["context"])
        out[ex["id"]] = sentences[0] if sentences else ex["context"]
    return out


def _check_squad_config(cfg: RunConfig) -> None:
    s, d = cfg.squad, cfg.data
    room = d.seq_len - s.max_query_length - 3
    if room <= s.doc_stride:
        raise ConfigError(f"{s.doc_stride} leaves no progress between windows: data.seq_len {d.seq_len} - "
                          f"squad.max_query_length {s.max_query_length} - 3 = {room} context tokens must exceed "
                          f"it", key="squad.doc_stride")


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


def evaluate_dev(model, examples, features, cfg: RunConfig, device, autocast, pad_id: int = 0) -> tuple[dict, dict]:
    """(predictions, scores) on the dev examples."""
    s = cfg.squad
    packing = (pad_id, cfg.data.max_sequences_per_pack) if cfg.data.packing else None
    start_logits, end_logits = predict_logits(model, features, cfg.train.micro_batch_size, device, autocast, packing)
    predictions = postprocess_predictions(examples, features, start_logits, end_logits, s.n_best,
                                          s.max_answer_length)
    references = {ex["id"]: ex["answers"]["text"] for ex in examples}
    return predictions, score(references, predictions)


def finetune(cfg: RunConfig, output_dir: str | Path, resume: bool = False) -> dict:
    """Fine-tune (or continue, with ``resume``) on SQuAD; returns the contents of ``eval_results.json``."""
    _check_squad_config(cfg)
    run_dir = Path(output_dir)
    resume_ckpt = open_run(run_dir, resume)
    device, autocast = setup_runtime(cfg)
    dist_env, device = setup_distributed(cfg, device)  # torchrun: this rank's share; else one process

    # ---- data ----
    s, d = cfg.squad, cfg.data
    vocab_file = Path(d.vocab_file) if d.vocab_file else bundled_vocab_file()
    tokenizer = load_wordpiece(vocab_file, lowercase=d.lowercase)
    if tokenizer.get_vocab_size() > cfg.model.vocab_size:
        raise ConfigError(f"the vocabulary {vocab_file} has {tokenizer.get_vocab_size()} tokens but the model's "
                          f"embedding table has {cfg.model.vocab_size}", key="model.vocab_size")
    vocab_digest = vocab_fingerprint(vocab_file)
    train_examples, train_report = load_squad(s.train_file, "train", s.max_train_examples)
    dev_examples, dev_report = load_squad(s.dev_file, "dev", s.max_dev_examples)
    feat_args = dict(seq_len=d.seq_len, doc_stride=s.doc_stride, max_query_length=s.max_query_length)
    train_features = build_features(train_examples, tokenizer, training=True, **feat_args)
    dev_features = build_features(dev_examples, tokenizer, training=False, **feat_args)
    import datasets  # the Arrow table gives EpochBatches its resumable, seeded order
    pad_id = special_ids(tokenizer).pad
    if d.packing:  # several features per row: epochs count features, steps count rows
        train_cols, _, plan = pack_features(train_features, pad_id, d.max_sequences_per_pack, seed=cfg.train.seed)
        logger.info("packed %d training features into %d rows (%.2f per row; real tokens %.1f%%)",
                    plan.num_sequences, plan.num_rows, plan.packing_factor, 100 * plan.efficiency)
    else:
        train_cols = train_features.model_inputs(True)
    train_set = datasets.Dataset.from_dict(train_cols)
    total_steps = training_steps(cfg, len(train_set))
    w = cfg.schedule.warmup
    warmup_steps = int(round(w * total_steps)) if w < 1 else min(int(w), total_steps)
    logger.info("SQuAD: %d train questions -> %d features, %d dev questions -> %d features; %d steps "
                "(%d warmup) of %d %s x %d tokens", len(train_examples), len(train_features),
                len(dev_examples), len(dev_features), total_steps, warmup_steps, cfg.global_batch_size,
                "packed rows" if d.packing else "features", d.seq_len)

    # ---- model, optimizer ----
    model = BertForQuestionAnswering(cfg.model)
    n_params = sum(p.numel() for p in model.parameters())
    init_from = None
    if cfg.model.init_checkpoint and resume_ckpt is None:
        init_from = load_qa_init(model, cfg.model.init_checkpoint, vocab_digest)
    model.to(device).train()
    if cfg.runtime.backend in ("ipu", "ipu-model") and total_steps % cfg.ipu.device_iterations:
        raise ConfigError(f"{total_steps} fine-tuning steps are not a multiple of ipu.device_iterations "
                          f"{cfg.ipu.device_iterations}", key="ipu.device_iterations")
    optimizer, poptorch = build_run_optimizer(model, cfg)
    try:
        batches = EpochBatches(train_set, cfg.train.micro_batch_size, seed=cfg.train.seed, rank=dist_env.rank,
                               world_size=dist_env.world_size)
    except ValueError as e:
        raise ConfigError(str(e), key="train.micro_batch_size") from None
    scaler = build_loss_scaler(cfg.runtime, device)
    step, run_id = 0, uuid.uuid4().hex[:8]
    if resume_ckpt is not None:
        if resume_ckpt.state.get("task") != "squad":
            raise CheckpointError(f"{resume_ckpt.path} is not a SQuAD fine-tuning checkpoint")
        step, saved_id = restore_run(resume_ckpt, model, optimizer, batches, scaler)
        run_id = saved_id or run_id
    schedule = build_schedule(optimizer, name=cfg.schedule.name, warmup_steps=warmup_steps, total_steps=total_steps,
                              warmup_power=cfg.schedule.warmup_power, decay_power=cfg.schedule.decay_power,
                              end_lr_ratio=cfg.schedule.end_lr_ratio,
                              cooldown_fraction=cfg.schedule.cooldown_fraction, last_step=step)
    ipu_stepper = None
    if poptorch is not None:
        from groupbert.ipu.options import build_options
        ipu_stepper = QAIPUStepper(model, cfg, poptorch, optimizer, schedule, build_options(cfg), dist_env)

    if dist_env.is_main:  # rank 0 writes the run directory
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        run_log = RunLog(run_dir, cfg, run_id, resume_step=step if resume_ckpt is not None else None)
    else:
        run_log = NullRunLog()
    if resume_ckpt is None:
        run_log.log({"step": 0, "kind": "run", "task": "squad", "parameters": n_params, "device": str(device),
                     "world_size": dist_env.world_size,
                     "torch": torch.__version__, "python": platform.python_version(), "git_commit": _git_commit(),
                     "init_checkpoint": init_from, "total_steps": total_steps, "warmup_steps": warmup_steps,
                     "train_features": len(train_features), "train_rows": len(train_set),
                     "dev_features": len(dev_features),
                     "train_data": train_report.as_dict(), "dev_data": dev_report.as_dict()})

    def save(at_step: int) -> None:
        if not dist_env.is_main:  # the weights and optimizer state are the same on every rank
            return
        if ipu_stepper is not None:
            ipu_stepper.sync_to_host()
        ckpt_io.save_checkpoint(run_dir, at_step, model, optimizer, {
            "task": "squad", "run_id": run_id, "data": batches.state_dict(), "model_config": asdict(cfg.model),
            "vocab_sha256": vocab_digest, "vocab_file": str(vocab_file), "scheduler_step": at_step,
            "loss_scaler": scaler.state_dict()},
            keep=cfg.train.keep_checkpoints)

    ga = check_world_size(cfg, dist_env.world_size)  # this rank's micro-batches per step
    train_model = wrap_model(model, dist_env, device) if ipu_stepper is None else model  # DDP under torchrun
    max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm > 0 else math.inf
    exit_code, saved_step = 1, None
    try:
        bar = tqdm(total=total_steps, initial=step, disable=not (cfg.logging.progress_bar and dist_env.is_main),
                   desc="squad", unit="step", dynamic_ncols=True)
        loss_sum, n_micro, t_window, samples = 0.0, 0, 0.0, 0
        while step < total_steps:
            t0 = time.perf_counter()
            if ipu_stepper is not None:  # device_iterations steps on the IPU (or the emulator)
                loss, n, lr, step_features = ipu_stepper.run(batches)
                loss_sum, n_micro, grad_norm = loss_sum + loss, n_micro + n, None
                advanced = ipu_stepper.steps_per_call
            else:
                optimizer.zero_grad(set_to_none=True)
                step_sums = torch.zeros(2, device=device)  # loss, features (several per packed row)
                for i in range(ga):
                    batch = {k: v.to(device) for k, v in next(batches).items() if k in QA_KEYS}
                    with no_sync(train_model, sync=i == ga - 1):  # DDP all-reduces after the last micro-batch
                        with autocast():
                            out = train_model(**batch)
                        scaler.backward(out.loss / ga)
                    step_sums += torch.stack([out.loss.detach().float(),
                                              (batch["start_positions"] >= 0).sum().float()])
                step_loss, step_features = dist_env.all_reduce_sum(step_sums).tolist()  # all ranks' micro-batches
                loss_sum += step_loss
                n_micro += ga * dist_env.world_size
                lr = optimizer.param_groups[0]["lr"]
                grad_norm, _ = scaler.step(optimizer, model.parameters(), max_norm)  # unscale, clip, step/skip
                advance_schedule(schedule)
                advanced = 1
            step += advanced
            t_window += time.perf_counter() - t0
            samples += step_features
            last_loss = loss_sum / max(n_micro, 1)
            if not math.isfinite(last_loss):
                raise FloatingPointError(f"loss became {last_loss} at step {step}; lower optimizer.lr")
            if step % cfg.logging.log_every == 0 or step == total_steps:
                run_log.log({"step": step, "kind": "train", "loss": last_loss, "lr": lr, "grad_norm": grad_norm,
                             "epoch": batches.epoch + batches.batch / len(batches),
                             "samples_per_s": samples / max(t_window, 1e-9), **scaler.record()})
                bar.set_postfix(loss=f"{last_loss:.3f}")
                loss_sum, n_micro, t_window, samples = 0.0, 0, 0.0, 0
            bar.update(advanced)
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
                save(step)
                saved_step = step
        bar.close()
        if saved_step != step and (resume_ckpt is None or step > resume_ckpt.step):
            save(step)
        if not dist_env.is_main:  # rank 0 evaluates the dev set
            exit_code = 0
            return {}

        t = time.perf_counter()
        if ipu_stepper is not None:  # evaluation runs the host model
            ipu_stepper.sync_to_host()
        predictions, scores = evaluate_dev(model, dev_examples, dev_features, cfg, device, autocast, pad_id)
        eval_seconds = time.perf_counter() - t
        references = {ex["id"]: ex["answers"]["text"] for ex in dev_examples}
        baseline = score(references, first_sentence_baseline(dev_examples))
        write_predictions(predictions, run_dir / "predictions.json")
        results = {"exact_match": scores["exact_match"], "f1": scores["f1"], "step": step,
                   "dev_questions": len(dev_examples), "dev_features": len(dev_features),
                   "baseline_first_sentence": baseline, "dev_file": dev_report.source,
                   "eval_seconds": eval_seconds, "dev_sequences_per_s": len(dev_features) / max(eval_seconds, 1e-9)}
        (run_dir / "eval_results.json").write_text(json.dumps(results, indent=1) + "\n")
        run_log.log({"step": step, "kind": "eval", "eval_exact_match": scores["exact_match"],
                     "eval_f1": scores["f1"], "baseline_exact_match": baseline["exact_match"],
                     "baseline_f1": baseline["f1"], "eval_seconds": eval_seconds})
        logger.info("dev: EM %.2f F1 %.2f (first-sentence baseline EM %.2f F1 %.2f) over %d questions",
                    scores["exact_match"], scores["f1"], baseline["exact_match"], baseline["f1"], len(dev_examples))
        exit_code = 0
    finally:
        run_log.close(exit_code)
        cleanup(dist_env, exit_code == 0)
    return results
