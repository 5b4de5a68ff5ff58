"""Experiments over many runs: hyperparameter sweeps in W&B's schema (``python -m groupbert.experiments.sweep``)
and the warmup study (``python -m groupbert.experiments.warmup_study``). They launch ``run_pretraining.py`` /
``run_squad.py`` as ordinary runs and read each run's records, its end record included."""
