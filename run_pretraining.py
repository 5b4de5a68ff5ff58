#!/usr/bin/env python3
"""Pretrain GroupBERT or BERT (masked LM + next-sentence prediction) or GPT-2 (causal LM).

    python run_pretraining.py --config configs/groupbert/tiny_phase1.yaml
    python run_pretraining.py --config configs/groupbert/tiny_phase2.yaml \\
        --set train.init_checkpoint=runs/groupbert_tiny_phase1
    python run_pretraining.py --config configs/gpt2/tiny.yaml
    python run_pretraining.py --config configs/groupbert/base_phase1.yaml --set data.prepared=data/enwiki-128
    python run_pretraining.py --resume runs/groupbert_tiny_phase1 --set train.max_steps=600
    python run_pretraining.py --eval-only runs/groupbert_tiny_phase1      # validation metrics of a checkpoint
"""
import sys

from groupbert.cli import main as cli_main


def _pretrain(cfg, output_dir, resume):
    from groupbert.tasks.pretraining import pretrain
    return pretrain(cfg, output_dir, resume=resume)


def _evaluate(cfg, checkpoint, output_dir):
    from groupbert.tasks.pretraining import evaluate
    return evaluate(cfg, checkpoint, output_dir)


def main(argv=None) -> int:
    """The command line (``groupbert-pretrain`` once installed); returns the exit code."""
    return cli_main(__doc__, _pretrain, argv, evaluate=_evaluate)


if __name__ == "__main__":
    sys.exit(main())
