"""Pretraining (BERT/GroupBERT MLM + NSP, GPT-2 causal LM): data, model, optimizer, loop, evaluation, checkpoints.

One optimizer step = ``gradient_accumulation`` micro-batches of ``micro_batch_size`` sequences, losses
averaged over the micro-batches, global gradient-norm clipping, then AdamW and the schedule. A run
directory holds ``config.yaml``, ``metrics.jsonl`` and ``checkpoints/step-N/``; ``--resume`` continues
from the latest checkpoint with the same data order and RNG state, so its losses equal the
uninterrupted run's.
"""
from __future__ import annotations

import logging
import math
import platform
import subprocess
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from groupbert.config import ModelConfig, RunConfig, save_config
from groupbert.data.loader import EpochBatches
from groupbert.models import build_model
from groupbert.training import checkpoint as ckpt_io
from groupbert.training.checkpoint import CheckpointError
from groupbert.training.data import prepare_data
from groupbert.training.distributed import NullRunLog, cleanup, setup_distributed, wrap_model
from groupbert.training.precision import build_loss_scaler
from groupbert.training.run_log import RunLog
from groupbert.training.runtime import build_run_optimizer, open_run, restore_run, setup_runtime
from groupbert.training.steppers import HostStepper, IPUStepper
from groupbert.training.tasks import Sums, task_for
from optimizers import build_schedule
from optimizers.update_metrics import UpdateMetrics

logger = logging.getLogger(__name__)

# Model-config fields that may differ between a checkpoint and the model it initialises.
_NON_ARCH_FIELDS = {"hidden_dropout", "attention_dropout", "init_checkpoint", "max_positions"}


# --------------------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------------------

def _check_model_compatible(saved: dict, current: ModelConfig, where: Path) -> None:
    current_d = asdict(current)
    diffs = [f"model.{k}: checkpoint {saved.get(k)!r} vs config {current_d[k]!r}"
             for k in current_d if k not in _NON_ARCH_FIELDS and saved.get(k) != current_d[k]]
    if diffs:
        raise CheckpointError(f"{where} was trained with a different model: " + "; ".join(diffs))


def init_from_checkpoint(model: torch.nn.Module, cfg: RunConfig, vocab_digest: str) -> Path:
    """Phase 2 / fine-tuning start: weights only, from a run dir or checkpoint dir."""
    ckpt = ckpt_io.read_checkpoint(cfg.model.init_checkpoint)
    _check_model_compatible(ckpt.state["model_config"], cfg.model, ckpt.path)
    if ckpt.state.get("vocab_sha256") not in (None, vocab_digest):
        raise CheckpointError(f"{ckpt.path} was trained with the vocabulary {ckpt.state.get('vocab_file')}, "
                              f"which differs from this run's (data.vocab_file)")
    ckpt_io.load_model_weights(model, ckpt)
    logger.info("initialised weights from %s (step %d)", ckpt.path, ckpt.step)
    return ckpt.path


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------

def evaluate(model, dataset, cfg: RunConfig, device, autocast) -> dict:
    model.eval()
    try:
        return task_for(cfg.model.type).evaluate(model, dataset, cfg.train.micro_batch_size, cfg.train.eval_batches,
                                                 device, autocast)
    finally:
        model.train()


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------

def pretrain(cfg: RunConfig, output_dir: str | Path, resume: bool = False) -> dict:
    """Run (or continue, with ``resume``) a pretraining job; returns the final evaluation record."""
    run_dir = Path(output_dir)
    resume_ckpt = open_run(run_dir, resume)

    device, autocast = setup_runtime(cfg)
    dist_env, device = setup_distributed(cfg, device)  # torchrun: this rank's share; else one process

    show = cfg.logging.progress_bar and dist_env.is_main
    with dist_env.main_first():  # rank 0 fills the tokenised-data cache, the others read it
        train_set, val_set, vocab_digest, vocab_file = prepare_data(cfg, show_progress=show, verify=dist_env.is_main)
    model = build_model(cfg.model)
    task = task_for(cfg.model.type, packed=cfg.data.packing)
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    if cfg.model.init_checkpoint and resume_ckpt is None:
        init_from_checkpoint(model, cfg, vocab_digest)
    model.to(device).train()

    optimizer, poptorch = build_run_optimizer(model, cfg)
    update_metrics = UpdateMetrics(model, cfg.logging.update_metrics_every) if cfg.logging.update_metrics_every else None
    batches = EpochBatches(train_set, cfg.train.micro_batch_size, seed=cfg.train.seed, rank=dist_env.rank,
                           world_size=dist_env.world_size)
    scaler = build_loss_scaler(cfg.runtime, device)
    step, run_id = 0, uuid.uuid4().hex[:8]
    if resume_ckpt is not None:
        _check_model_compatible(resume_ckpt.state["model_config"], cfg.model, resume_ckpt.path)
        if resume_ckpt.state.get("vocab_sha256") != vocab_digest:
            raise CheckpointError(f"{resume_ckpt.path} was trained with a different vocabulary")
        step, saved_id = restore_run(resume_ckpt, model, optimizer, batches, scaler)
        run_id = saved_id or run_id
    schedule = build_schedule(optimizer, name=cfg.schedule.name, warmup_steps=cfg.warmup_steps,
                              total_steps=cfg.train.max_steps, warmup_power=cfg.schedule.warmup_power,
                              decay_power=cfg.schedule.decay_power, end_lr_ratio=cfg.schedule.end_lr_ratio,
                              cooldown_fraction=cfg.schedule.cooldown_fraction, last_step=step)
    if poptorch is not None:
        from groupbert.ipu.options import build_options
        stepper = IPUStepper(model, cfg, poptorch, optimizer, schedule, build_options(cfg), task, dist_env)
    else:
        stepper = HostStepper(wrap_model(model, dist_env, device), optimizer, schedule, cfg, device, autocast, task,
                              update_metrics, scaler, dist_env)

    if dist_env.is_main:  # rank 0 writes the run directory
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        run_log = RunLog(run_dir, cfg, run_id, resume_step=step if resume_ckpt is not None else None)
    else:
        run_log = NullRunLog()
    if resume_ckpt is None:
        run_log.log({"step": 0, "kind": "run", "parameters": n_params, "device": str(device),
                     "world_size": dist_env.world_size,
                     "torch": torch.__version__, "python": platform.python_version(), "git_commit": _git_commit(),
                     "train_rows": len(train_set), "train_sequences": train_set.num_sequences,
                     "validation_sequences": val_set.num_sequences if val_set is not None else 0})
    logger.info("model %s: %.2fM parameters on %s; %d steps of %d %s × %d tokens",
                cfg.model.type, n_params / 1e6, device, cfg.train.max_steps, cfg.global_batch_size,
                "packed rows" if cfg.data.packing else "sequences",
                cfg.data.seq_len)

    def save(at_step: int) -> None:
        if not dist_env.is_main:  # the weights and optimizer state are the same on every rank
            return
        stepper.sync_to_host()
        ckpt_io.save_checkpoint(run_dir, at_step, model, optimizer, {
            "run_id": run_id, "data": batches.state_dict(), "model_config": asdict(cfg.model),
            "vocab_sha256": vocab_digest, "vocab_file": vocab_file, "scheduler_step": at_step,
            "loss_scaler": scaler.state_dict()},
            keep=cfg.train.keep_checkpoints)

    def run_eval(at_step: int) -> dict | None:
        if val_set is None or not dist_env.is_main:  # rank 0 evaluates the whole split
            return None
        t = time.perf_counter()
        stepper.sync_to_host()  # evaluation runs the host model
        record = {"step": at_step, "kind": "eval", **evaluate(model, val_set, cfg, device, autocast)}
        record["eval_seconds"] = time.perf_counter() - t
        run_log.log(record)
        logger.info("step %d validation: %s", at_step, task.describe_eval(record))
        return record

    last_eval, saved_step = None, None
    exit_code = 1
    try:
        if step == 0 and cfg.train.eval_at_start:
            last_eval = run_eval(0)
        window = _Window(task)
        bar = tqdm(total=cfg.train.max_steps, initial=step, disable=not show, desc="pretrain", unit="step",
                   dynamic_ncols=True)
        n = stepper.steps_per_call
        while step < cfg.train.max_steps:
            t0 = time.perf_counter()
            result = stepper.run(batches, step)
            step += n
            window.add(result.sums, time.perf_counter() - t0, n * cfg.global_batch_size, cfg.data.seq_len)
            if result.update_record:  # outside the timed region
                run_log.log({"step": step, "kind": "update", **result.update_record})
            if not math.isfinite(window.last_loss):
                raise FloatingPointError(f"loss became {window.last_loss} at step {step}; lower optimizer.lr "
                                         f"or check the data")
            if step % cfg.logging.log_every == 0 or step == cfg.train.max_steps:
                record = {"step": step, "kind": "train", **window.flush(), "lr": result.lr,
                          "grad_norm": result.grad_norm, "epoch": batches.epoch + batches.batch / len(batches),
                          **result.precision_record}
                run_log.log(record)
                bar.set_postfix({**{k: f"{record[k]:.3f}" for k in task.progress_keys},
                                 "seq_s": f"{record['samples_per_s']:.1f}"})
            bar.update(n)
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step != cfg.train.max_steps:
                last_eval = run_eval(step)
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
                save(step)
                saved_step = step
        bar.close()
        if resume_ckpt is None or step > resume_ckpt.step:
            last_eval = run_eval(step) or last_eval
            if saved_step != step:
                save(step)
        exit_code = 0
    finally:
        run_log.close(exit_code)
        cleanup(dist_env, exit_code == 0)
    return last_eval or {}


class _Window:
    """Running sums between two log records."""

    def __init__(self, task):
        self.task = task
        self.reset()
        self.last_loss = 0.0

    def reset(self):
        self.sums = Sums(self.task.sum_names)
        self.seconds = self.samples = self.tokens = 0.0

    def add(self, sums: Sums, seconds: float, rows: int, seq_len: int):
        """``rows`` of ``seq_len`` tokens went through the model; samples/s counts sequences (several per
        packed row, from the task's sums) and tokens/s the row tokens computed on."""
        self.sums += sums
        self.seconds += seconds
        sequences = self.task.sequences(sums)
        self.samples += rows if sequences is None else sequences
        self.tokens += rows * seq_len
        self.last_loss = sums["loss"] / max(sums.micro, 1)

    def flush(self) -> dict:
        rec = {**self.task.train_record(self.sums),
               "samples_per_s": self.samples / max(self.seconds, 1e-9),
               "tokens_per_s": self.tokens / max(self.seconds, 1e-9)}
        self.reset()
        return rec
