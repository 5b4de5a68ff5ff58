"""Shortest-pack-first histogram packing (SPFHP) of sequence lengths into fixed-length rows.

Krell, Kosec, Perez & Fitzgibbon 2021, "Efficient Sequence Packing without Cross-contamination:
Accelerating Large Language Models without Impacting Performance", arXiv:2107.02027, section 4.2:
work on the histogram of lengths, longest first; each group of sequences of one length goes into the
packs with the *least* remaining space that still fits it (best fit), a new pack is opened when none
fits, and a pack holds at most ``max_per_pack`` sequences. Only the histogram is touched, so packing
millions of sequences takes milliseconds.

This module is the packing plan only: which sequences share a row. Training on packed rows (per-sequence
position ids, block-diagonal attention, a convolution that does not cross sequences, per-sequence
MLM/NSP losses) is not implemented yet.
"""
from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class PackingPlan:
    strategies: dict[tuple[int, ...], int]   # sorted lengths in one row -> number of such rows
    seq_len: int

    @property
    def num_rows(self) -> int:
        return sum(self.strategies.values())

    @property
    def num_sequences(self) -> int:
        return sum(len(s) * n for s, n in self.strategies.items())

    @property
    def real_tokens(self) -> int:
        return sum(sum(s) * n for s, n in self.strategies.items())

    @property
    def efficiency(self) -> float:
        """Real tokens / tokens in the packed rows."""
        return self.real_tokens / max(self.num_rows * self.seq_len, 1)

    @property
    def packing_factor(self) -> float:
        """Sequences per row (the speed-up in sequences per step over one sequence per row)."""
        return self.num_sequences / max(self.num_rows, 1)


def padded_efficiency(lengths, seq_len: int) -> float:
    """Real tokens / tokens when every sequence is padded to ``seq_len`` (no packing)."""
    lengths = list(lengths)
    return sum(lengths) / max(len(lengths) * seq_len, 1)


def spfhp(lengths, seq_len: int, max_per_pack: int = 3) -> PackingPlan:
    """Pack sequences of the given lengths (each in ``1..seq_len``) into rows of ``seq_len`` tokens."""
    if max_per_pack < 1:
        raise ValueError(f"max_per_pack must be >= 1, got {max_per_pack}")
    histogram = defaultdict(int)
    for n in lengths:
        if not 1 <= n <= seq_len:
            raise ValueError(f"a sequence of length {n} does not fit a row of {seq_len}")
        histogram[n] += 1
    # open packs by remaining space: space -> {lengths tuple: count}; only packs that can still take one
    open_packs: dict[int, dict[tuple[int, ...], int]] = defaultdict(lambda: defaultdict(int))
    spaces: list[int] = []  # sorted keys of open_packs
    closed: dict[tuple[int, ...], int] = defaultdict(int)

    def add(pack: tuple[int, ...], count: int) -> None:
        space = seq_len - sum(pack)
        if len(pack) >= max_per_pack or space == 0:
            closed[pack] += count
            return
        if space not in open_packs or not open_packs[space]:
            bisect.insort(spaces, space)
        open_packs[space][pack] += count

    for length in sorted(histogram, reverse=True):
        left = histogram[length]
        while left:
            i = bisect.bisect_left(spaces, length)  # the tightest open pack that fits
            if i == len(spaces):
                add((length,), left)  # no open pack fits: open new ones
                break
            space = spaces[i]
            pack, count = next(iter(open_packs[space].items()))
            take = min(count, left)
            if take == count:
                del open_packs[space][pack]
                if not open_packs[space]:
                    del open_packs[space]
                    spaces.pop(i)
            else:
                open_packs[space][pack] -= take
            add(tuple(sorted(pack + (length,), reverse=True)), take)
            left -= take
    for packs in open_packs.values():
        for pack, count in packs.items():
            closed[pack] += count
    return PackingPlan(dict(closed), seq_len)
