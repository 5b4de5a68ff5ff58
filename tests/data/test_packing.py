"""SPFHP packing plans: a hand-worked case and the invariants every plan must keep."""
import random
from collections import Counter

import pytest

from groupbert.data.packing import padded_efficiency, spfhp


def test_hand_worked_plan():
    # longest first: 128 fills a row; 100 opens a row (28 left); the two 60s open two rows (68 left);
    # 28 goes into the tightest fit (the 100-row, now full); 8 into a 60-row (68 is the tightest left)
    plan = spfhp([60, 128, 8, 100, 60, 28], seq_len=128, max_per_pack=3)
    assert plan.strategies == {(128,): 1, (100, 28): 1, (60, 8): 1, (60,): 1}
    assert plan.num_rows == 4 and plan.efficiency == 384 / 512 and plan.packing_factor == 1.5
    assert padded_efficiency([60, 128, 8, 100, 60, 28], 128) == 384 / 768


@pytest.mark.parametrize("max_per_pack", [1, 2, 3, 8])
def test_every_sequence_once_and_rows_fit(max_per_pack):
    rng = random.Random(0)
    lengths = [rng.randint(1, 512) for _ in range(3000)] + [512] * 7 + [1] * 50
    plan = spfhp(lengths, seq_len=512, max_per_pack=max_per_pack)
    placed = Counter()
    for pack, n in plan.strategies.items():
        assert sum(pack) <= 512 and 1 <= len(pack) <= max_per_pack
        for length in pack:
            placed[length] += n
    assert placed == Counter(lengths)
    if max_per_pack == 1:
        assert plan.num_rows == len(lengths)
    else:
        assert plan.efficiency > padded_efficiency(lengths, 512)


def test_bad_lengths_are_errors():
    with pytest.raises(ValueError, match="length 129 does not fit"):
        spfhp([129], 128)
    with pytest.raises(ValueError, match="max_per_pack"):
        spfhp([3], 128, max_per_pack=0)
