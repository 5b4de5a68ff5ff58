"""Hyperparameter sweeps in W&B's own YAML schema, run locally without a W&B server.

W&B's open-source sweep engine (the ``sweeps`` package, the one behind W&B's controller) proposes each
run (grid, random, bayes) and decides hyperband early stopping; this package supplies what a server
would: an on-disk run store shared by several agent processes (``store.py``), agents that launch
``run_pretraining.py`` / ``run_squad.py`` with the proposed values as config overrides and stream their
metric from ``metrics.jsonl`` (``agent.py``), validation of the sweep file (``spec.py``) and reports
(``report.py``). The same file works with ``wandb sweep FILE`` + ``wandb agent`` (README "Sweeps").

    python -m groupbert.experiments.sweep configs/sweeps/squad_tiny_bayes.yaml --agents 2
"""
