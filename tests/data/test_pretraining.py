"""BERT MLM/NSP instance creation: structure, masking statistics, NSP balance, determinism, cache."""
import logging
import random

import numpy as np
import pytest

from groupbert.data import (
    COLUMNS,
    IGNORE_INDEX,
    DataError,
    Document,
    build_pretraining_dataset,
    bundled_vocab_file,
    load_wordpiece,
    pretraining_cache_key,
    special_ids,
)
from groupbert.data import pretraining

SEQ, P = 64, 10


@pytest.fixture(scope="module")
def tok():
    return load_wordpiece()


@pytest.fixture(scope="module")
def words():
    """Whole-word entries of the bert-base-uncased vocabulary: each encodes to exactly one id."""
    vocab = bundled_vocab_file().read_text("utf-8").splitlines()
    return [w for w in vocab[2000:12000] if w.isalpha() and w.isascii() and len(w) > 3]


@pytest.fixture(scope="module")
def docs(words):
    """40 synthetic documents of random words: any 4-token span identifies its document."""
    rng = random.Random(0)
    return [
        Document(f"doc{d}", [
            " ".join(rng.choice(words) for _ in range(rng.randint(4, 18))) + "."
            for _ in range(rng.randint(6, 30))
        ])
        for d in range(40)
    ]


@pytest.fixture(scope="module")
def built(docs, tok):
    ds = build_pretraining_dataset(docs, tok, seq_len=SEQ, max_predictions=P, dupe_factor=3,
                                   seed=1, show_progress=False)
    return {name: np.asarray(col) for name, col in ds.with_format("numpy")[:].items()}


def _segments(row):
    ids = row["input_ids"]
    n = int(row["attention_mask"].sum())
    return ids, n


def test_columns_shapes_and_torch_format(docs, tok):
    ds = build_pretraining_dataset(docs[:5], tok, seq_len=SEQ, max_predictions=P, show_progress=False)
    assert set(ds.column_names) == set(COLUMNS)
    first = ds[0]
    assert first["input_ids"].shape == (SEQ,) and str(first["input_ids"].dtype) == "torch.int64"
    assert first["masked_lm_positions"].shape == (P,)
    assert first["next_sentence_label"].shape == ()


def test_segment_structure(built, tok):
    sp = special_ids(tok)
    for k in range(len(built["input_ids"])):
        ids, types, mask = built["input_ids"][k], built["token_type_ids"][k], built["attention_mask"][k]
        n = int(mask.sum())
        assert 5 <= n <= SEQ
        assert np.all(mask[:n] == 1) and np.all(mask[n:] == 0)
        assert ids[0] == sp.cls and ids[n - 1] == sp.sep
        assert np.all(ids[n:] == sp.pad)
        seps = np.flatnonzero(ids[:n] == sp.sep)
        assert len(seps) == 2 and seps[0] >= 2 and seps[1] - seps[0] >= 2   # A and B non-empty
        assert np.all(types[: seps[0] + 1] == 0) and np.all(types[seps[0] + 1: n] == 1)
        assert np.all(types[n:] == 0)
        assert sp.cls not in ids[1:n] and sp.pad not in ids[:n]


def test_masking_statistics(built, tok):
    sp = special_ids(tok)
    ids, labels, positions = built["input_ids"], built["masked_lm_labels"], built["masked_lm_positions"]
    lengths = built["attention_mask"].sum(1)
    n_masked = (labels != IGNORE_INDEX).sum(1)
    assert np.all(n_masked >= 1) and np.all(n_masked <= P)
    n_candidates = lengths - 3
    expected = np.minimum(P, np.maximum(1, np.round(n_candidates * 0.15)))
    assert np.all(np.abs(n_masked - expected) <= 1)         # Python round vs numpy round at .5
    assert 0.13 < n_masked.sum() / n_candidates.sum() < 0.16  # P=10 caps a few at seq 64
    as_mask = as_kept = as_random = 0
    for k in range(len(ids)):
        m = int(n_masked[k])
        pos, lab = positions[k, :m], labels[k, :m]
        assert np.all(np.diff(pos) > 0) and np.all(pos >= 1) and np.all(pos < lengths[k])
        assert np.all(positions[k, m:] == 0) and np.all(labels[k, m:] == IGNORE_INDEX)
        assert not set(lab.tolist()) & sp.as_set()            # never CLS/SEP/PAD (or MASK/UNK here)
        current = ids[k, pos]
        as_mask += int((current == sp.mask).sum())
        as_kept += int((current == lab).sum())
        as_random += int(((current != sp.mask) & (current != lab)).sum())
        assert not set(current.tolist()) & {sp.cls, sp.sep, sp.pad, sp.unk}
    total = as_mask + as_kept + as_random
    assert total > 4500
    assert abs(as_mask / total - 0.8) < 0.03
    assert abs(as_kept / total - 0.1) < 0.03
    assert abs(as_random / total - 0.1) < 0.03
    # [MASK] appears only at masked positions.
    outside = ids.copy()
    np.put_along_axis(outside, positions, -1, axis=1)
    assert not np.any(outside == sp.mask)


def test_labels_and_segments_come_from_the_corpus(built, docs, tok):
    """Restore the masked tokens from the labels: A and B must be contiguous spans of the corpus,
    from the same document when NSP says 0 and from different documents when it says 1."""
    sp = special_ids(tok)
    streams = [" " + " ".join(map(str, tok.encode(" ".join(d.sentences), add_special_tokens=False).ids)) + " "
               for d in docs]

    def find(span):
        key = " " + " ".join(map(str, span)) + " "
        return {i for i, s in enumerate(streams) if key in s}

    nsp = built["next_sentence_label"]
    for k in range(300):
        ids = built["input_ids"][k].copy()
        m = built["masked_lm_labels"][k] != IGNORE_INDEX
        ids[built["masked_lm_positions"][k][m]] = built["masked_lm_labels"][k][m]
        n = int(built["attention_mask"][k].sum())
        first_sep = int(np.flatnonzero(ids[:n] == sp.sep)[0])
        a, b = ids[1:first_sep].tolist(), ids[first_sep + 1:n - 1].tolist()
        docs_a, docs_b = find(a), find(b)
        assert docs_a and docs_b, k
        if nsp[k] == 0:
            assert docs_a & docs_b
            if len(docs_a) == len(docs_b) == 1 and a and b:
                (d,) = docs_a
                s = streams[d]
                assert s.index(" " + " ".join(map(str, a)) + " ") < s.index(" " + " ".join(map(str, b)) + " ")
        elif len(a) >= 4 and len(b) >= 4:
            assert not docs_a & docs_b


def test_nsp_balance_and_lengths(built):
    nsp = built["next_sentence_label"]
    assert set(np.unique(nsp).tolist()) == {0, 1}
    assert 0.42 < nsp.mean() < 0.62
    lengths = built["attention_mask"].sum(1)
    assert lengths.max() == SEQ
    assert np.mean(lengths == SEQ) > 0.6   # most sequences are full; short_seq_prob=0.1 and doc ends


def test_short_seq_prob_shortens(docs, tok):
    def mean_length(p):
        ds = build_pretraining_dataset(docs[:10], tok, seq_len=SEQ, max_predictions=P,
                                       short_seq_prob=p, show_progress=False)
        return float(np.asarray(ds.with_format("numpy")[:]["attention_mask"]).sum(1).mean())

    assert mean_length(1.0) < 0.75 * mean_length(0.0)


def test_determinism_seed_and_num_proc(docs, tok):
    kwargs = dict(seq_len=SEQ, max_predictions=P, dupe_factor=2, show_progress=False)

    def arrays(**extra):
        ds = build_pretraining_dataset(docs[:12], tok, **kwargs, **extra)
        return {k: np.asarray(v) for k, v in ds.with_format("numpy")[:].items()}

    a, b = arrays(seed=5), arrays(seed=5)
    for name in COLUMNS:
        np.testing.assert_array_equal(a[name], b[name])
    c = arrays(seed=6)
    assert not np.array_equal(a["input_ids"], c["input_ids"])
    d = arrays(seed=5, num_proc=2)
    for name in COLUMNS:
        np.testing.assert_array_equal(a[name], d[name])


def test_dupe_factor_gives_new_masks(docs, tok):
    one = build_pretraining_dataset(docs[:8], tok, seq_len=SEQ, max_predictions=P, show_progress=False)
    two = build_pretraining_dataset(docs[:8], tok, seq_len=SEQ, max_predictions=P, dupe_factor=2,
                                    show_progress=False)
    assert 1.6 * len(one) < len(two) < 2.4 * len(one)


def test_whole_word_masking_masks_all_pieces(tok):
    sp = special_ids(tok)
    # Long rare words split into several "##" pieces.
    text = "Pneumonoultramicroscopic supercalifragilistic antidisestablishmentarianism words. "
    documents = [Document(f"d{i}", [text * 3, "Short plain sentence here.", text]) for i in range(6)]
    ds = build_pretraining_dataset(documents, tok, seq_len=SEQ, max_predictions=P, seed=0,
                                   whole_word_masking=True, show_progress=False)
    vocab = {i: t for t, i in tok.get_vocab().items()}
    rows = ds.with_format("numpy")[:]
    masked_continuations = 0
    for ids, positions, labels in zip(rows["input_ids"], rows["masked_lm_positions"], rows["masked_lm_labels"]):
        masked = {int(p) for p, l in zip(positions, labels) if l != IGNORE_INDEX}
        original = np.array(ids)
        for p, l in zip(positions, labels):
            if l != IGNORE_INDEX:
                original[p] = l
        for p in masked:   # the piece after a masked token, if a continuation, is masked too
            if p + 1 < len(original) and vocab[int(original[p + 1])].startswith("##"):
                assert p + 1 in masked
            if vocab[int(original[p])].startswith("##") and original[p - 1] not in (sp.cls, sp.sep):
                assert p - 1 in masked
                masked_continuations += 1
    assert masked_continuations > 20   # the check above was exercised


def test_truncate_seq_pair_matches_reference_loop():
    """Our counter version of truncate_seq_pair equals Google's pop-one-token loop."""
    def reference(a, b, max_num_tokens, rng):
        a, b = list(a), list(b)
        while len(a) + len(b) > max_num_tokens:
            trunc = a if len(a) > len(b) else b
            if rng.random() < 0.5:
                del trunc[0]
            else:
                trunc.pop()
        return a, b

    for trial in range(200):
        r = random.Random(trial)
        a = list(range(r.randint(1, 80)))
        b = list(range(100, 100 + r.randint(1, 80)))
        limit = r.randint(2, 100)
        assert pretraining._truncate_seq_pair(a, b, limit, random.Random(trial)) == reference(
            a, b, limit, random.Random(trial))


def test_too_small_corpus_and_bad_settings(tok):
    with pytest.raises(DataError, match="yields no pretraining instance"):
        build_pretraining_dataset([Document("only", ["One lonely sentence."])], tok,
                                  seq_len=SEQ, max_predictions=P, show_progress=False)
    with pytest.raises(DataError, match="no text"):
        build_pretraining_dataset([Document("e", [])], tok, seq_len=SEQ, max_predictions=P,
                                  show_progress=False)
    with pytest.raises(DataError, match="seq_len"):
        build_pretraining_dataset([], tok, seq_len=4, max_predictions=2)
    with pytest.raises(DataError, match="mask_prob"):
        build_pretraining_dataset([], tok, seq_len=SEQ, max_predictions=P, mask_prob=0.0)
    # One document with two sentences works (no random next possible: every label is 0).
    ds = build_pretraining_dataset([Document("one", ["First part here.", "Second part here."])], tok,
                                   seq_len=SEQ, max_predictions=P, show_progress=False)
    assert len(ds) == 1 and int(ds[0]["next_sentence_label"]) == 0


def test_tokenizer_with_padding_enabled_gives_same_data(docs, tok):
    padded = load_wordpiece()
    padded.enable_padding(length=128)
    padded.enable_truncation(max_length=128)
    kwargs = dict(seq_len=SEQ, max_predictions=P, show_progress=False)
    a = build_pretraining_dataset(docs[:4], tok, **kwargs).with_format("numpy")[:]["input_ids"]
    b = build_pretraining_dataset(docs[:4], padded, **kwargs).with_format("numpy")[:]["input_ids"]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert padded.padding is not None   # the caller's tokenizer is left as it was


def test_cache_reuse_and_keys(docs, tok, tmp_path, caplog, monkeypatch):
    kwargs = dict(seq_len=SEQ, max_predictions=P, seed=2, show_progress=False, cache_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="groupbert.data.pretraining"):
        first = build_pretraining_dataset(docs[:6], tok, **kwargs)
    assert "cached pretraining dataset at" in caplog.text
    entries = [p for p in tmp_path.iterdir()]
    assert len(entries) == 1 and entries[0].name.startswith("pretraining-")

    def must_not_run(*args, **kwargs):
        raise AssertionError("rebuilt instead of loading the cache")

    monkeypatch.setattr(pretraining, "_run", must_not_run)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="groupbert.data.pretraining"):
        second = build_pretraining_dataset(docs[:6], tok, **kwargs)
    assert f"reusing cached dataset at {entries[0]}" in caplog.text
    np.testing.assert_array_equal(np.asarray(first.with_format("numpy")[:]["input_ids"]),
                                  np.asarray(second.with_format("numpy")[:]["input_ids"]))
    monkeypatch.undo()

    # Every input that changes the data changes the key.
    settings = dict(seq_len=SEQ, max_predictions=P, mask_prob=0.15, short_seq_prob=0.1,
                    dupe_factor=1, seed=2, whole_word_masking=False)
    base = pretraining_cache_key(docs[:6], tok, **settings)
    assert base == pretraining_cache_key(docs[:6], tok, **settings)
    for change in (dict(seq_len=128), dict(max_predictions=20), dict(mask_prob=0.2),
                   dict(short_seq_prob=0.0), dict(dupe_factor=2), dict(seed=3),
                   dict(whole_word_masking=True)):
        assert pretraining_cache_key(docs[:6], tok, **{**settings, **change}) != base, change
    assert pretraining_cache_key(docs[:5], tok, **settings) != base
    edited = [Document(d.title, list(d.sentences)) for d in docs[:6]]
    edited[0].sentences[0] += " Extra"
    assert pretraining_cache_key(edited, tok, **settings) != base
    assert pretraining_cache_key(docs[:6], load_wordpiece(lowercase=False), **settings) != base

    build_pretraining_dataset(docs[:6], tok, **{**kwargs, "seed": 3})
    assert len(list(tmp_path.iterdir())) == 2


def test_crash_while_saving_leaves_no_cache(docs, tok, tmp_path, monkeypatch):
    import datasets

    def crash(self, path, *args, **kwargs):
        (__import__("pathlib").Path(path) / "partial.arrow").parent.mkdir(parents=True, exist_ok=True)
        (__import__("pathlib").Path(path) / "partial.arrow").write_bytes(b"half")
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", crash)
    with pytest.raises(KeyboardInterrupt):
        build_pretraining_dataset(docs[:3], tok, seq_len=SEQ, max_predictions=P,
                                  show_progress=False, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
