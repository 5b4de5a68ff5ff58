"""Experiments built from many training runs (each a normal ``run_pretraining.py`` run)."""
