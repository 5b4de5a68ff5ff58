"""Optimizers for GroupBERT / BERT / GPT-2 training, with their schedules, parameter groups and
update-size metrics. One algorithm per file; each module docstring gives its paper and equations."""
from optimizers.adamw import AdamW
from optimizers.lamb import LAMB
from optimizers.lion import Lion
from optimizers.lion_a import LionA
from optimizers.lion_ar import LionAR
from optimizers.param_groups import param_groups
from optimizers.schedules import build_schedule, lr_multiplier

__all__ = ["AdamW", "LAMB", "Lion", "LionA", "LionAR", "param_groups", "build_schedule", "lr_multiplier"]
