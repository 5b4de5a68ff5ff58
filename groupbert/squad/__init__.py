"""SQuAD v1.1: data loading with counted problems, features, post-processing, the official metric,
and fine-tuning (``finetune``, run by ``run_squad.py``)."""
