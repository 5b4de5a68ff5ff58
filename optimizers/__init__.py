"""Optimizers, learning-rate schedules and parameter groups for GroupBERT / BERT / GPT-2 training."""
from optimizers.param_groups import param_groups
from optimizers.schedules import build_schedule, lr_multiplier

__all__ = ["param_groups", "build_schedule", "lr_multiplier"]
