"""Masks from the counter-based generator: BERT's 80/10/10 rule and budget, one mask per (key), whatever
the batch it is drawn in; the Feistel shuffle is a permutation."""
import numpy as np
import pytest

from groupbert.data.loader import FeistelPermutation
from groupbert.data.masking import IGNORE_INDEX, MaskingSpec, hash_key, mask_rows, uniform
from groupbert.data.tokenizer import SpecialIds

SP = SpecialIds(pad=0, unk=100, cls=101, sep=102, mask=103)
V, T, P = 1000, 64, 10


def _batch(n, seed=0):
    """[CLS] a.. [SEP] b.. [SEP] rows of random ordinary ids, right-padded."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, T + 1, n)
    ids = np.zeros((n, T), np.int64)
    for r, L in enumerate(lengths):
        ids[r, :L] = rng.integers(200, V, L)
        ids[r, 0], ids[r, L // 2], ids[r, L - 1] = SP.cls, SP.sep, SP.sep
    return ids, lengths


def test_uniform_is_uniform_and_keyed():
    u = uniform(hash_key(1, np.arange(2000))[:, None], np.arange(64), 1)
    assert u.shape == (2000, 64) and 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    hist = np.histogram(u, bins=20, range=(0, 1))[0] / u.size
    assert np.abs(hist - 0.05).max() < 0.002
    assert np.abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.05          # positions independent
    assert not np.array_equal(u, uniform(hash_key(2, np.arange(2000))[:, None], np.arange(64), 1))


def test_budget_rule_and_80_10_10():
    ids, lengths = _batch(4000)
    spec = MaskingSpec(0.15, P, V, SP)
    masked, pos, lab = mask_rows(ids, lengths, hash_key(9, np.arange(len(ids))), spec)
    n_cand = lengths - 3
    expected = np.minimum(P, np.maximum(1, np.round(n_cand * 0.15)))
    n = (lab != IGNORE_INDEX).sum(1)
    np.testing.assert_array_equal(n, expected)
    as_mask = as_kept = as_random = 0
    for r in range(len(ids)):
        k = n[r]
        p = pos[r, :k]
        assert np.all(np.diff(p) > 0) and np.all(p >= 1) and np.all(p < lengths[r] - 1)
        assert (pos[r, k:] == 0).all() and (lab[r, k:] == IGNORE_INDEX).all()
        np.testing.assert_array_equal(lab[r, :k], ids[r, p])
        now = masked[r, p]
        as_mask += int((now == SP.mask).sum())
        as_kept += int((now == lab[r, :k]).sum())
        rnd = (now != SP.mask) & (now != lab[r, :k])
        as_random += int(rnd.sum())
        assert not set(now[rnd].tolist()) & SP.as_set()
        other = np.ones(T, bool)
        other[p] = False
        np.testing.assert_array_equal(masked[r, other], ids[r, other])   # nothing else changes
    total = as_mask + as_kept + as_random
    assert abs(as_mask / total - 0.8) < 0.01 and abs(as_kept / total - 0.1) < 0.01
    assert abs(as_random / total - 0.1) < 0.01
    # every candidate position of a row is equally likely to be chosen: hits per position against
    # sum over rows of k/n (a Poisson count: within 4.5 standard deviations everywhere)
    observed, expected = np.zeros(T), np.zeros(T)
    for r in range(len(ids)):
        observed[pos[r, :n[r]]] += 1
        cand = (np.arange(T) < lengths[r]) & (ids[r] != SP.cls) & (ids[r] != SP.sep)
        expected[cand] += n[r] / cand.sum()
    inner = expected > 50
    assert inner.sum() > 50
    assert np.abs(observed[inner] - expected[inner]).max() < 4.5 * np.sqrt(expected[inner]).max()


def test_random_replacement_covers_the_vocabulary_without_specials():
    ids, lengths = _batch(3000, seed=1)
    spec = MaskingSpec(1.0, T, V, SP)  # mask everything: many random replacements
    masked, pos, lab = mask_rows(ids, lengths, hash_key(3, np.arange(len(ids))), spec)
    valid = lab != IGNORE_INDEX
    now = masked[np.arange(len(ids))[:, None].repeat(T, 1)[valid], pos[valid]]
    rnd = now[(now != SP.mask) & (now != lab[valid])]
    assert not set(np.unique(rnd).tolist()) & SP.as_set()
    assert len(np.unique(rnd)) > 0.9 * (V - 5) and rnd.min() >= 0 and rnd.max() < V


def test_a_mask_depends_on_its_key_only():
    """The same row with the same key gets the same mask in any batch, at any batch position; another
    key (another epoch) gets another mask."""
    ids, lengths = _batch(64, seed=2)
    spec = MaskingSpec(0.15, P, V, SP)
    keys = hash_key(5, 7, np.arange(64))     # (seed, epoch, index)
    full = mask_rows(ids, lengths, keys, spec)
    order = np.random.default_rng(0).permutation(64)[:20]
    part = mask_rows(ids[order], lengths[order], keys[order], spec)
    for a, b in zip(full, part):
        np.testing.assert_array_equal(a[order], b)
    again = mask_rows(ids, lengths, hash_key(5, 8, np.arange(64)), spec)
    assert (again[1] != full[1]).any(axis=1).mean() > 0.9


def test_whole_word_masking_budget():
    cont = np.zeros(V, bool)
    cont[500:800] = True                      # ids 500..799 are "##" pieces
    ids, lengths = _batch(500, seed=4)
    spec = MaskingSpec(0.15, P, V, SP, continuation=cont)
    masked, pos, lab = mask_rows(ids, lengths, hash_key(1, np.arange(500)), spec)
    n = (lab != IGNORE_INDEX).sum(1)
    budget = np.minimum(P, np.maximum(1, np.round((lengths - 3) * 0.15)))
    assert (n <= budget).all() and n.mean() > 0.85 * budget.mean()
    for r in range(500):
        chosen = set(pos[r, :n[r]].tolist())
        for p in chosen:   # a chosen word's continuation pieces are chosen with it
            if p + 1 < lengths[r] and cont[ids[r, p + 1]] and ids[r, p] not in SP.as_set():
                assert p + 1 in chosen


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097, 100_003])
def test_feistel_is_a_permutation(n):
    perm = FeistelPermutation(n, 11, 0)
    out = perm(np.arange(n))
    np.testing.assert_array_equal(np.sort(out), np.arange(n))
    np.testing.assert_array_equal(perm(np.arange(n)[::-1]), out[::-1])        # position by position


def test_feistel_shuffles_well():
    n = 100_000
    a, b = FeistelPermutation(n, 11, 0)(np.arange(n)), FeistelPermutation(n, 11, 1)(np.arange(n))
    assert abs(np.corrcoef(np.arange(n), a)[0, 1]) < 0.02           # no trace of the input order
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.02 and (a == b).mean() < 0.001   # epochs differ
    # where the first 1% of positions land: spread over the whole range
    hist = np.histogram(a[:1000], bins=10, range=(0, n))[0]
    assert hist.min() > 60
