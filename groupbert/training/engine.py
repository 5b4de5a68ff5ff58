"""The training engine: one loop for every task (masked LM + NSP, causal LM, SQuAD, and any later one).

:func:`train` owns a run: its directory (``config.yaml``, ``metrics.jsonl`` and W&B through ``RunLog``,
atomic ``checkpoints/step-N/``), the starting weights (``train.init_checkpoint``) or the checkpoint it
resumes from, the optimizer and schedule, the step on the host or the IPU (``steppers``), evaluation
every ``train.eval_every`` steps (and at the start and the end) with the best checkpoint kept, progress
with throughput (``training.progress``: a bar, or INFO lines with an ETA; sequences/s, tokens/s, model
TFLOPS and MFU in every train record, ``training.throughput``), the end record (``finished`` |
``diverged`` | ``stopped`` | ``failed``) and an end-of-run summary in the log. A task (``training.task``)
says what a batch holds, what to add up, how to evaluate and what to write at the end; a job's set-up
function assembles its data, model and task (:class:`Job`). :func:`evaluate` runs the same task's
evaluation on a checkpoint.

One optimizer step is ``train.gradient_accumulation x ipu.replication_factor`` micro-batches of
``train.micro_batch_size`` rows on any backend, so a recipe's numbers hold everywhere; ``--resume``
continues from the latest checkpoint with the same data order, RNG and schedule, so its losses equal the
uninterrupted run's.
"""
from __future__ import annotations

import json
import logging
import math
import platform
import signal
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from groupbert.config import ConfigError, RunConfig, save_config
from groupbert.data.loader import EpochBatches
from groupbert.training import checkpoint as ckpt_io
from groupbert.training.checkpoint import CheckpointError
from groupbert.training.distributed import cleanup, wrap_model
from groupbert.training.initialize import check_architecture, check_vocabulary, initialize
from groupbert.training.optim import build_optimizer
from groupbert.training.precision import build_loss_scaler
from groupbert.training.progress import Progress, log_summary, resolved_backend
from groupbert.training.run_log import NullRunLog, RunLog, check_tensorboard
from groupbert.training.run_dir import open_run
from groupbert.training.runtime import Runtime, compile_model, setup_runtime
from groupbert.training.stop import StopRequest
from groupbert.training.steppers import HostStepper, IPUStepper
from groupbert.training.task import Sums, Task
from groupbert.training.throughput import RunRate, run_rate
from optimizers import build_schedule
from optimizers.update_metrics import UpdateMetrics

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """What a task's set-up hands the engine."""
    task: Task
    model: nn.Module
    train_data: object                  # gather()-able prepared data or a datasets.Dataset
    total_steps: int                    # optimizer steps of the whole run
    checkpoint_state: dict = field(default_factory=dict)  # saved in every checkpoint (vocabulary, ...)
    run_record: dict = field(default_factory=dict)        # added to the step-0 "run" record


class Diverged(FloatingPointError):
    """The training loss or the weights became non-finite, or fp16 loss scaling skipped every step; the
    run ends with status "diverged" and no checkpoint of non-finite weights is ever written."""

    outcome, exit_code = "diverged", 1


class Stopped(Exception):
    """SIGTERM: the run saved a checkpoint at the next step boundary and stopped (status "stopped"); the
    command lines exit with 128 + SIGTERM, as a process ended by the signal would."""

    outcome, exit_code = "stopped", 128 + signal.SIGTERM


def train(cfg: RunConfig, run_dir, resume: bool, setup: Callable[[RunConfig, Runtime], Job]) -> dict:
    """Run (or continue, with ``resume``) a training job; returns what the task's ``finish`` returns."""
    run_dir = Path(run_dir)
    check_tensorboard(cfg)
    runtime = setup_runtime(cfg)
    with runtime.dist.main_first():  # rank 0 locks the directory and cleans it before the others read it
        lock, resume_ckpt, restart = open_run(run_dir, resume, cfg, runtime.dist.is_main)
    try:
        return _train(cfg, run_dir, runtime, resume_ckpt, restart, setup)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: RunConfig, run_dir: Path, runtime: Runtime, resume_ckpt: Optional[ckpt_io.Checkpoint],
           restart: bool, setup: Callable[[RunConfig, Runtime], Job]) -> dict:
    dist = runtime.dist
    started = time.monotonic()
    with dist.main_first():  # rank 0 fills caches (prepared data, packed indexes), the others read them
        job = setup(cfg, runtime)
    task, model = job.task, job.model
    vocab = job.checkpoint_state.get("vocab_sha256")
    if resume_ckpt is not None:
        _check_resumable(resume_ckpt, cfg, task, vocab)
    elif cfg.train.init_checkpoint:
        job.run_record["init_checkpoint"] = initialize(model, cfg.train.init_checkpoint, vocab)
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    model.to(runtime.device).train()
    compile_model(model, cfg)  # runtime.compile, in place: --resume loads into it, DDP wraps it as the eager one

    scaler = build_loss_scaler(cfg.runtime, runtime.device)
    if runtime.on_ipu:
        from groupbert.ipu.backend import IPUTrainer
        from groupbert.ipu.rules import check_total_steps
        check_total_steps(cfg, job.total_steps)
        stepper = IPUStepper(IPUTrainer(model, cfg, task.batch_keys, task.sums), cfg, task, dist)
        optimizer = stepper.optimizer
    else:
        optimizer = build_optimizer(model, cfg.optimizer)
        every = cfg.logging.update_metrics_every
        stepper = HostStepper(wrap_model(model, dist, runtime.device), optimizer, cfg, runtime, task,
                              UpdateMetrics(model, every) if every else None, scaler)
    try:
        batches = EpochBatches(job.train_data, cfg.train.micro_batch_size, seed=cfg.train.seed, rank=dist.rank,
                               world_size=dist.world_size)
    except ValueError as e:  # the one way a valid job's data fails here: fewer rows than one micro-batch
        raise ConfigError(str(e), key="train.micro_batch_size" if "micro-batch" in str(e) else None) from None
    step, run_id, best = 0, uuid.uuid4().hex[:8], None
    if resume_ckpt is not None:
        step, run_id, best = _restore(resume_ckpt, model, optimizer, batches, scaler, run_id)
    first_step = step
    warmup_steps = cfg.warmup_steps_for(job.total_steps)
    s = cfg.schedule
    schedule = build_schedule(optimizer, name=s.name, warmup_steps=warmup_steps, total_steps=job.total_steps,
                              warmup_power=s.warmup_power, decay_power=s.decay_power, end_lr_ratio=s.end_lr_ratio,
                              cooldown_fraction=s.cooldown_fraction, last_step=step)
    stepper.start(schedule)

    backend = resolved_backend(cfg, runtime.device)  # what runs (runtime.backend may say auto)
    rate = run_rate(cfg, task, runtime, batches.dataset)  # FLOPs per token and the devices' peak, for MFU
    if dist.is_main:  # rank 0 writes the run directory
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        run_log = RunLog(run_dir, cfg, run_id, **_records_to_keep(resume_ckpt, restart), backend=backend)
    else:
        run_log = NullRunLog()
    if resume_ckpt is None:
        run_log.log({"step": 0, "kind": "run", "task": task.name, "parameters": n_params,
                     "device": str(runtime.device), "backend": backend, "world_size": dist.world_size,
                     "torch": torch.__version__, "python": platform.python_version(), "git_commit": _git_commit(),
                     "total_steps": job.total_steps, "warmup_steps": warmup_steps, "train_rows": len(batches.dataset),
                     **rate.run_record(), **job.run_record})
    logger.info("%s: %s %.2fM parameters on %s; %d steps of %d rows x %d tokens", task.name, cfg.model.type,
                n_params / 1e6, "IPUs" if runtime.on_ipu else runtime.device, job.total_steps, cfg.global_batch_size,
                cfg.data.seq_len)
    logger.info("%s", rate.describe())

    def save(at_step: int, final: bool = False) -> None:
        """``final``: the end-of-run evaluation is done (a resume from it has nothing left to do)."""
        if not dist.is_main:  # the weights and optimizer state are the same on every rank
            return
        stepper.sync_to_host()
        _check_finite_weights(model, at_step)
        ckpt_io.save_checkpoint(run_dir, at_step, model, optimizer, {
            "task": task.name, "run_id": run_id, "data": batches.state_dict(), "model_config": asdict(cfg.model),
            "scheduler_step": at_step, "loss_scaler": scaler.state_dict(), "best": best, "final": final,
            "log_records": run_log.count, **job.checkpoint_state},
            keep=cfg.train.keep_checkpoints)

    def run_eval(at_step: int) -> Optional[dict]:
        if not dist.is_main:  # rank 0 evaluates the whole split
            return None
        t = time.perf_counter()
        stepper.sync_to_host()  # evaluation runs the host model
        record = _evaluate(task, model, runtime)
        if record is None:
            return None
        record = {"step": at_step, "kind": "eval", **record, "eval_seconds": time.perf_counter() - t}
        bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            logger.warning("step %d evaluation: %s not finite (recorded as null in metrics.jsonl)", at_step,
                           ", ".join(f"{k}={record[k]}" for k in bad))
        run_log.log(record)
        logger.info("step %d evaluation: %s", at_step, task.describe_eval(record))
        return record

    def improved(record: Optional[dict], at_step: int) -> bool:
        """Whether ``record`` is the best evaluation so far (tracked when evaluating during training)."""
        nonlocal best
        key, mode = task.best
        if not cfg.train.eval_every or record is None or record.get(key) is None:
            return False
        value = record[key]
        if best is not None and (value >= best["value"] if mode == "min" else value <= best["value"]):
            return False
        best = {"metric": key, "value": value, "step": at_step}
        return True

    last_eval, saved_step, status, error = None, None, "failed", None
    window = _Window(task, rate)
    stop = StopRequest(dist)
    bar = None
    try:
        if resume_ckpt is not None and resume_ckpt.state.get("final") and step >= job.total_steps:
            logger.info("%s finished at step %d (its final evaluation included): nothing to do", run_dir, step)
            status = "finished"
            return _saved_results(run_dir) if dist.is_main else {}
        if step == 0 and cfg.train.eval_at_start:
            last_eval = run_eval(0)
        bar = Progress(cfg, task.name, job.total_steps, step, enabled=dist.is_main, rate=rate)  # bar or lines
        while step < job.total_steps:
            t0 = time.perf_counter()
            result = stepper.run(batches, step)
            step += stepper.steps_per_call
            samples, tokens = window.add(result.sums, time.perf_counter() - t0,
                                         stepper.steps_per_call * cfg.global_batch_size, cfg.data.seq_len)
            if result.update_record:  # outside the timed region
                run_log.log({"step": step, "kind": "update", **result.update_record})
            if not math.isfinite(window.last_loss):
                raise Diverged(f"loss became {window.last_loss} at step {step}; lower optimizer.lr or check the data")
            if step % cfg.logging.log_every == 0 or step == job.total_steps:
                record = {"step": step, "kind": "train", **window.flush(), "lr": result.lr,
                          "grad_norm": result.grad_norm, "epoch": batches.epoch + batches.batch / len(batches),
                          **result.precision_record}
                run_log.log(record)
                bar.set_postfix({**{k: f"{record[k]:.3f}" for k in task.progress_keys}, **_rate_postfix(record)})
            bar.update(stepper.steps_per_call, samples, tokens)
            better = False
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step != job.total_steps:
                last_eval = run_eval(step)
                better = improved(last_eval, step)
            if better or cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
                save(step)
                saved_step = step
                if better and dist.is_main:
                    ckpt_io.mark_best(run_dir, step)
            if step < job.total_steps and stop.requested():
                if saved_step != step:
                    save(step)
                if dist.enabled:  # no rank exits (and has torchrun stop the others) before rank 0 has saved
                    dist.barrier()
                raise Stopped(f"{stop.name} at step {step}: saved {run_dir / 'checkpoints' / f'step-{step}'}; "
                              f"continue with --resume {run_dir}")
        bar.close()  # from here the end is bounded (evaluate, save): a SIGTERM now lets it finish
        if resume_ckpt is None or step > resume_ckpt.step or not resume_ckpt.state.get("final"):
            if dist.is_main:
                stepper.sync_to_host()
                _check_finite_weights(model, step)  # the last update is in no loss yet
            _check_loss_scaling(scaler, step)
            last_eval = run_eval(step) or last_eval
            better = improved(last_eval, step) if last_eval is not None and last_eval["step"] == step else False
            if saved_step == step and dist.is_main:  # weights saved this step: record the evaluation only
                ckpt_io.update_state(run_dir, step, final=True, best=best, log_records=run_log.count)
            else:
                save(step, final=True)
            if better and dist.is_main:
                ckpt_io.mark_best(run_dir, step)
        result = task.finish(run_dir, last_eval) if dist.is_main else {}
        status = "finished"
        return result
    except Diverged as e:
        status, error = "diverged", str(e)
        raise
    except Stopped as e:
        status, error = "stopped", str(e)
        logger.warning("stopped: %s", e)
        raise
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        stop.close()
        if bar is not None:
            bar.close()
        run_log.end(step, status, **({"error": error} if error else {}), **({"best": best} if best else {}))
        if dist.is_main:
            run_log.log_checkpoints()
            _log_summary(run_dir, status, step, job.total_steps, first_step=first_step,
                         seconds=time.monotonic() - started, metric=task.best[0], last_eval=last_eval, best=best,
                         describe=task.describe_eval, error=error, eval_every=cfg.train.eval_every,
                         throughput=window.mean_rates() if step > first_step else None)
        run_log.close(0 if status == "finished" else 1)
        cleanup(dist, status == "finished")


def evaluate(cfg: RunConfig, checkpoint, output_dir, setup: Callable[[RunConfig, Runtime], Job]) -> dict:
    """Evaluate a checkpoint (a run, its ``checkpoints/`` or one ``step-N``) as its task does at the end of
    training, writing the task's outputs into ``output_dir``; returns what ``finish`` returns."""
    ckpt = ckpt_io.read_checkpoint(checkpoint)
    runtime = setup_runtime(cfg)
    job = setup(cfg, runtime)
    _check_resumable(ckpt, cfg, job.task, job.checkpoint_state.get("vocab_sha256"))
    ckpt_io.load_model_weights(job.model, ckpt)
    job.model.to(runtime.device)
    compile_model(job.model, cfg)
    record = _evaluate(job.task, job.model, runtime)
    if record is None:
        raise ConfigError("the task has no evaluation data to evaluate on", key="data.validation_fraction")
    record = {"step": ckpt.step, "kind": "eval", **record, "checkpoint": str(ckpt.path)}
    logger.info("%s step %d: %s", ckpt.path, ckpt.step, job.task.describe_eval(record))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return job.task.finish(output_dir, record)


def _evaluate(task: Task, model: nn.Module, runtime: Runtime) -> Optional[dict]:
    model.eval()
    try:
        return task.evaluate(model, runtime)
    finally:
        model.train()


def _records_to_keep(resume_ckpt: Optional[ckpt_io.Checkpoint], restart: bool) -> dict:
    """What of ``metrics.jsonl`` a (re)started run keeps: nothing when an attempt without checkpoints starts
    again; on resume, the records written before the checkpoint was saved (older checkpoints: by step)."""
    if restart:
        return {"keep_records": 0}
    if resume_ckpt is None:
        return {}
    if resume_ckpt.state.get("log_records") is not None:
        return {"keep_records": int(resume_ckpt.state["log_records"])}
    return {"keep_step": resume_ckpt.step}


def _log_summary(*args, **kwargs) -> None:
    """The end-of-run summary (``progress.log_summary``); never the reason a run fails."""
    try:
        log_summary(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - the outcome is decided; a summary cannot change it
        logger.warning("could not write the end-of-run summary: %s: %s", type(e).__name__, e)


def _saved_results(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "eval_results.json").read_text())
    except (OSError, ValueError):
        return {}


def _check_finite_weights(model: nn.Module, step: int) -> None:
    """Refuse to go on (and to save) with inf/NaN weights: a diverged update must never become a checkpoint,
    let alone ``latest`` or the only one kept."""
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
    if bad:
        raise Diverged(f"weights became non-finite at step {step} ({', '.join(bad[:3])}"
                       f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}); the last checkpoint kept is the "
                       f"one before; lower optimizer.lr or check optimizer.weight_decay and the data")


def _check_loss_scaling(scaler, step: int) -> None:
    """fp16: a run whose every step was skipped (inf/NaN gradients at every loss scale) trained nothing."""
    if not getattr(scaler, "enabled", False) or step == 0:
        return
    skipped = scaler.skipped_steps
    if skipped >= step:
        raise Diverged(f"fp16 loss scaling skipped all {step} optimizer steps (the gradients were inf/NaN at every "
                       f"loss scale): the weights never changed; use runtime.precision=bf16 or fp32, or check the data")
    if skipped > 0.1 * step:
        logger.warning("fp16 loss scaling skipped %d of %d optimizer steps (%.0f%%): the run trained on fewer "
                       "updates than it counts", skipped, step, 100 * skipped / step)


def _check_resumable(ckpt: ckpt_io.Checkpoint, cfg: RunConfig, task: Task, vocab: Optional[str]) -> None:
    saved_task = ckpt.state.get("task")
    if saved_task != task.name:
        raise CheckpointError(f"{ckpt.path} is a checkpoint of {saved_task or 'another'} training, not {task.name}")
    check_architecture(ckpt.state["model_config"], cfg.model, ckpt.path)
    check_vocabulary(ckpt.state, vocab, ckpt.path)


def _restore(ckpt: ckpt_io.Checkpoint, model, optimizer, batches, scaler, run_id: str):
    """Weights, optimizer state, fp16 loss scale, data position and RNG; (step, W&B run id, best so far)."""
    ckpt_io.load_model_weights(model, ckpt)
    ckpt_io.load_optimizer_state(optimizer, ckpt)
    scaler.load_state_dict(ckpt.state.get("loss_scaler"))
    try:
        batches.load_state_dict(ckpt.state["data"])
    except ValueError as e:
        raise CheckpointError(f"{ckpt.path}: {e}") from None
    ckpt_io.restore_rng(ckpt)
    logger.info("resuming from %s (step %d)", ckpt.path, ckpt.step)
    return ckpt.step, ckpt.state.get("run_id") or run_id, ckpt.state.get("best")


def _git_commit() -> Optional[str]:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _rate_postfix(record: dict) -> dict:
    """The progress bar's throughput: sequences/s, tokens/s and MFU (when the peak is known)."""
    out = {"seq/s": f"{record['seq_per_s']:.1f}", "tok/s": f"{record['tokens_per_s']:.0f}"}
    if record.get("mfu") is not None:
        out["mfu"] = f"{100 * record['mfu']:.1f}%"
    return out


class _Window:
    """Running sums between two training records, and the totals of the run's training steps."""

    def __init__(self, task: Task, rate: RunRate):
        self.task, self.rate = task, rate
        self.reset()
        self.last_loss = 0.0
        self.total_seconds = self.total_samples = self.total_tokens = 0.0

    def reset(self):
        self.sums = Sums(self.task.sum_names)
        self.seconds = self.samples = self.tokens = 0.0

    def add(self, sums: Sums, seconds: float, rows: int, seq_len: int) -> tuple[float, int]:
        """``rows`` of ``seq_len`` tokens went through the model; samples/s counts sequences (several per
        packed row, from the task's sums) and tokens/s the row tokens computed on. Returns (samples, tokens)."""
        sequences = self.task.sequences(sums)
        samples, tokens = (rows if sequences is None else sequences), rows * seq_len
        self.sums += sums
        self.seconds += seconds
        self.samples += samples
        self.tokens += tokens
        self.total_seconds += seconds
        self.total_samples += samples
        self.total_tokens += tokens
        self.last_loss = sums["loss"] / max(sums.micro, 1)
        return samples, tokens

    def flush(self) -> dict:
        """The train record's metrics and throughput (``seq_per_s``, ``tokens_per_s``, ``tflops``, ``mfu``)
        over the window's step time (evaluation and checkpoints excluded)."""
        rec = {**self.task.train_record(self.sums), **self.rate.rates(self.samples, self.tokens, self.seconds)}
        self.reset()
        return rec

    def mean_rates(self) -> dict:
        """Throughput over all training steps of this process's run (for the end-of-run summary)."""
        return self.rate.rates(self.total_samples, self.total_tokens, self.total_seconds)
