"""The training tasks, each a :class:`groupbert.training.task.Task` for the one engine
(``groupbert.training.engine``), and the jobs that assemble them:

- ``masked_lm``: BERT / GroupBERT masked LM + next-sentence prediction; ``causal_lm``: GPT-2;
  ``pretraining``: ``pretrain()``, which builds either from prepared data (``run_pretraining.py``);
- ``squad``: SQuAD v1.1 span prediction with the official EM/F1; ``finetune()`` (``run_squad.py``).
"""
