"""The claims studies' shared arithmetic, on hand-made records: where a curve first reaches a loss, the
Pareto front, and a run's training seconds and FLOPs read back from its metrics.jsonl."""
import json
import math

import pytest

from groupbert.experiments import grid


def test_first_reach_interpolates_in_log_x():
    # loss 5 at x=1, 3 at x=100: loss 4 is halfway, so x = 10 (log-linear)
    assert grid.first_reach([1, 100], [5.0, 3.0], 4.0) == pytest.approx(10.0)
    assert grid.first_reach([1, 100, 1000], [5.0, 3.0, 2.0], 3.0) == pytest.approx(100.0)
    assert grid.first_reach([1, 100], [5.0, 3.0], 2.9) is None          # never reached
    assert grid.first_reach([10, 100], [2.0, 1.0], 3.0) == 10           # already below at the first point
    assert grid.first_reach([0, 100], [9.0, 3.0], 4.0) == 100           # step 0 has no log


def test_pareto_front_keeps_only_improvements():
    points = [(4, 2.0), (1, 5.0), (2, 5.5), (3, 4.0), (8, 2.5), (0, 9.0)]
    assert grid.pareto_front(points) == [(1, 5.0), (3, 4.0), (4, 2.0)]


def test_spread():
    assert grid.spread([1.0, 3.0]) == "2.000 (1.000-3.000, n=2)"
    assert grid.spread([2.0, None, math.nan]) == "2.000 (n=1)"
    assert grid.spread([]) == "-"


def test_curve_from_records(tmp_path):
    """8 rows x 4 tokens per step, 1000 FLOPs per token: step 10 = 320 tokens = 320,000 FLOPs. Two train
    windows of 5 steps at 160 and 80 tokens/s take 1 s and 2 s; the evaluation at step 7 lies 2/5 into the
    second window (1.8 s). A re-evaluation of step 10 after a resume replaces the first."""
    records = [
        {"step": 0, "kind": "run", "flops_per_token": 1000.0, "train_rows": 40},
        {"step": 0, "kind": "eval", "eval_mlm_loss": 9.0, "eval_mlm_acc": 0.0},
        {"step": 5, "kind": "train", "tokens_per_s": 160.0},
        {"step": 7, "kind": "eval", "eval_mlm_loss": 7.0, "eval_mlm_acc": 0.1},
        {"step": 10, "kind": "train", "tokens_per_s": 80.0},
        {"step": 10, "kind": "eval", "eval_mlm_loss": 6.5, "eval_mlm_acc": 0.2},
        {"step": 10, "kind": "eval", "eval_mlm_loss": 6.0, "eval_mlm_acc": 0.2},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{\"cut sh")
    c = grid.curve(tmp_path, rows_per_step=8, seq_len=4)
    assert c.steps == [0, 7, 10]
    assert c.sequences == [0, 56, 80]
    assert c.flops == [0, 224_000, 320_000]
    assert c.seconds == pytest.approx([0.0, 1.8, 3.0])
    assert c.loss == [9.0, 7.0, 6.0] and c.final == 6.0
    assert c.epochs == pytest.approx(2.0)
    assert grid.curve(tmp_path / "missing", 8, 4) is None
