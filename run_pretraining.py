#!/usr/bin/env python3
"""Pretrain GroupBERT or BERT with masked-LM + next-sentence prediction.

    python run_pretraining.py --config configs/groupbert/tiny_phase1.yaml
    python run_pretraining.py --config configs/groupbert/tiny_phase2.yaml \\
        --set model.init_checkpoint=runs/groupbert_tiny_phase1
    python run_pretraining.py --resume runs/groupbert_tiny_phase1 --set train.max_steps=600
"""
import sys

from groupbert.cli import main


def _pretrain(cfg, output_dir, resume):
    from groupbert.training.pretrain import pretrain
    return pretrain(cfg, output_dir, resume=resume)


if __name__ == "__main__":
    sys.exit(main(__doc__.splitlines()[0], _pretrain))
