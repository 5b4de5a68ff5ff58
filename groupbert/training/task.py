"""What the training engine asks of a task (masked LM + NSP, causal LM, SQuAD, or a new one).

A task is an object with the attributes and methods of :class:`Task`. The engine (``engine.train``) owns
the run: directory, records, checkpoints, schedule, the step on the host or the IPU, evaluation cadence,
progress, the end record. The task says what a batch holds, what to add up while training, how to
evaluate, and what to write when the run ends. ``groupbert/tasks/`` holds the three there are; the README's
developer guide shows how to add one.
"""
from __future__ import annotations

from typing import Optional, Protocol

import torch
import torch.nn as nn


class Sums:
    """Named sums over micro-batches (the task's ``sum_names``, "loss" first), added up between records."""

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


class Task(Protocol):
    name: str                         # recorded in checkpoints: a run resumes only as the same task
    batch_keys: tuple[str, ...]       # the columns the model takes (groupbert.data.columns)
    sum_names: tuple[str, ...]        # what ``sums`` returns, "loss" first
    progress_keys: tuple[str, ...]    # train-record keys shown on the progress bar
    best: tuple[str, str]             # evaluation key and "min" | "max": which checkpoint is the best

    def sums(self, out, batch: dict) -> torch.Tensor:
        """One micro-batch's sums, a vector on the device (one host sync per step, none per micro-batch)."""

    def sequences(self, sums: Sums) -> Optional[float]:
        """Sequences in the sums (packed rows hold several), or None: one per row."""

    def train_record(self, sums: Sums) -> dict:
        """The training record's metrics from a logging window's sums."""

    def evaluate(self, model: nn.Module, runtime) -> Optional[dict]:
        """Evaluate the host model (``eval_*`` keys), or None when the task has no evaluation data."""

    def describe_eval(self, record: dict) -> str:
        """One log line for an evaluation record."""

    def finish(self, run_dir, record: Optional[dict]) -> dict:
        """After the final evaluation (``record``): write the task's outputs; returns the run's result."""
