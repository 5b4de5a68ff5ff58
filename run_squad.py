#!/usr/bin/env python3
"""Fine-tune GroupBERT or BERT on SQuAD v1.1 and report the official exact match and F1.

    python run_squad.py --config configs/squad/tiny_minilm.yaml
    python run_squad.py --config configs/squad/groupbert_base.yaml \\
        --set train.init_checkpoint=runs/groupbert_base_phase2
    python run_squad.py --config configs/squad/tiny_minilm.yaml \\
        --set squad.train_file=train-v1.1.json --set squad.dev_file=dev-v1.1.json
    python run_squad.py --eval-only runs/squad_tiny_minilm      # dev EM/F1, predictions and n-best of a checkpoint
    python -m groupbert.squad.evaluate dev-v1.1.json runs/squad_tiny_minilm/predictions.json
"""
import sys

from groupbert.cli import main as cli_main


def _finetune(cfg, output_dir, resume):
    from groupbert.tasks.squad import finetune
    return finetune(cfg, output_dir, resume=resume)


def _evaluate(cfg, checkpoint, output_dir):
    from groupbert.tasks.squad import evaluate
    return evaluate(cfg, checkpoint, output_dir)


def main(argv=None) -> int:
    """The command line (``groupbert-squad`` once installed); returns the exit code."""
    return cli_main(__doc__, _finetune, argv, evaluate=_evaluate)


if __name__ == "__main__":
    sys.exit(main())
