"""A run that ends above the untrained model's loss counts as diverged on the report, even when every
value stayed finite; a run that improved, a single value, or a maximized metric does not."""
from types import SimpleNamespace

from groupbert.experiments.sweep.report import trained_away

LOSS = SimpleNamespace(metric="eval_loss", maximize=False)
F1 = SimpleNamespace(metric="eval_f1", maximize=True)


def rec(*values):
    return {"history": [{"step": 12 * i, LOSS.metric: v, F1.metric: v} for i, v in enumerate(values)]}


def test_ends_above_start_is_diverged():
    assert trained_away(LOSS, rec(11.04, 34.8, 14.6))
    assert not trained_away(LOSS, rec(11.04, 8.6, 8.4))
    assert not trained_away(LOSS, rec(11.04))
    assert not trained_away(F1, rec(5.0, 40.0))
