"""BERT MLM/NSP instance creation: structure, masking statistics, NSP balance, truncation and pair
construction against reference implementations of Google's algorithm, determinism."""
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
    special_ids,
)
from groupbert.data import masked_lm

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
                                   seed=1)
    return {name: np.asarray(col) for name, col in ds.with_format("numpy")[:].items()}


def _segments(row):
    ids = row["input_ids"]
    n = int(row["attention_mask"].sum())
    return ids, n


def test_columns_shapes_and_torch_format(docs, tok):
    ds = build_pretraining_dataset(docs[:5], tok, seq_len=SEQ, max_predictions=P)
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
                                       short_seq_prob=p)
        return float(np.asarray(ds.with_format("numpy")[:]["attention_mask"]).sum(1).mean())

    assert mean_length(1.0) < 0.75 * mean_length(0.0)


def test_determinism_and_seed(docs, tok):
    kwargs = dict(seq_len=SEQ, max_predictions=P, dupe_factor=2)

    def arrays(**extra):
        ds = build_pretraining_dataset(docs[:12], tok, **kwargs, **extra)
        return {k: np.asarray(v) for k, v in ds.with_format("numpy")[:].items()}

    a, b = arrays(seed=5), arrays(seed=5)
    for name in COLUMNS:
        np.testing.assert_array_equal(a[name], b[name])
    c = arrays(seed=6)
    assert not np.array_equal(a["input_ids"], c["input_ids"])


def test_dupe_factor_gives_new_masks(docs, tok):
    one = build_pretraining_dataset(docs[:8], tok, seq_len=SEQ, max_predictions=P)
    two = build_pretraining_dataset(docs[:8], tok, seq_len=SEQ, max_predictions=P, dupe_factor=2)
    assert 1.6 * len(one) < len(two) < 2.4 * len(one)


def test_whole_word_masking_masks_all_pieces(tok):
    sp = special_ids(tok)
    # Long rare words split into several "##" pieces.
    text = "Pneumonoultramicroscopic supercalifragilistic antidisestablishmentarianism words. "
    documents = [Document(f"d{i}", [text * 3, "Short plain sentence here.", text]) for i in range(6)]
    ds = build_pretraining_dataset(documents, tok, seq_len=SEQ, max_predictions=P, seed=0,
                                   whole_word_masking=True)
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


def _reference_truncate(a, b, max_num_tokens, rng):
    """google-research/bert truncate_seq_pair, verbatim in behaviour: one token at a time from the longer
    side (B on a tie), front or back with probability 1/2."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_num_tokens:
        trunc = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del trunc[0]
        else:
            trunc.pop()
    return a, b


def test_truncated_lengths_match_reference_loop():
    for trial in range(2000):
        r = random.Random(trial)
        la, lb, limit = r.randint(1, 80), r.randint(1, 80), r.randint(2, 100)
        a, b = _reference_truncate(range(la), range(lb), limit, random.Random(trial))
        new_a, new_b = masked_lm.truncated_lengths(np.array([la]), np.array([lb]), limit)
        assert (int(new_a[0]), int(new_b[0])) == (len(a), len(b)), (la, lb, limit)


def test_truncation_cuts_front_and_back_as_the_reference_does():
    """The tokens cut at A's front follow the reference loop's distribution (Binomial(cut, 1/2))."""
    la, lb, limit, n = 60, 10, 40, 4000
    ref_front = [_reference_truncate(range(la), range(lb), limit, random.Random(i))[0][0] for i in range(n)]
    tokens = np.arange(1000, dtype=np.int32)
    a0 = np.zeros(n, np.int64)
    truncated = masked_lm._truncate(a0, a0 + la, a0 + 500, a0 + 500 + lb, limit, np.random.default_rng(0))
    rows = np.empty(n * (limit + 3), np.int32)
    masked_lm._assemble(tokens, *truncated, -1, -2, out=rows)
    rows = rows.reshape(n, limit + 3)
    ours = rows[:, 1]                        # first kept token of A = tokens cut at its front
    assert (rows[:, 0] == -1).all() and (rows[:, limit - lb + 1] == -2).all() and (rows[:, -1] == -2).all()
    np.testing.assert_array_equal(rows[:, limit - lb + 2:-1], np.tile(np.arange(500, 500 + lb), (n, 1)))
    assert np.all(np.diff(rows[:, 1:limit - lb + 1], axis=1) == 1)   # A stays one contiguous span
    cut = la - (limit - lb)
    for sample in (np.array(ref_front), ours):
        assert abs(sample.mean() - cut / 2) < 0.15 and abs(sample.var() - cut / 4) < 0.6


def test_pairs_use_every_sentence_once(docs, tok):
    """Every sentence of every document lands in exactly one segment A or actual-next segment B of the
    pass (random-next B's come from other documents and are extra)."""
    tokenized = masked_lm.tokenize_documents([d.sentences for d in docs], tok)
    a0, a1, b0, b1, rnd = masked_lm._pairs(tokenized, SEQ - 3, 0.1, random.Random(0))
    covered = np.zeros(tokenized.num_tokens, dtype=np.int64)
    for s, e in zip(a0, a1):
        covered[s:e] += 1
    for s, e, r in zip(b0, b1, rnd):
        if not r:
            covered[s:e] += 1
    assert (covered == 1).all()
    doc_of_token = np.repeat(np.arange(tokenized.num_documents),
                             np.diff(tokenized.sentence_offsets[tokenized.document_offsets]))
    assert (doc_of_token[a0] == doc_of_token[a1 - 1]).all()                   # A inside one document
    assert (doc_of_token[b0] == doc_of_token[b1 - 1]).all()
    assert (doc_of_token[b0[rnd]] != doc_of_token[a0[rnd]]).all()             # random B: another one
    assert (doc_of_token[b0[~rnd]] == doc_of_token[a0[~rnd]]).all() and (b0[~rnd] == a1[~rnd]).all()


def _reference_instances(documents, seq_len, short_seq_prob, rng):
    """Lengths and labels of create_instances_from_document (google-research/bert), list by list, with
    this project's documented change: the short target is drawn per chunk, the random document among
    the others."""
    max_num_tokens = seq_len - 3
    out = []
    for d, document in enumerate(documents):
        target = rng.randint(2, max_num_tokens) if rng.random() < short_seq_prob else max_num_tokens
        chunk, length, i = [], 0, 0
        while i < len(document):
            chunk.append(document[i])
            length += len(document[i])
            if i == len(document) - 1 or length >= target:
                a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                a = [t for s in chunk[:a_end] for t in s]
                if len(chunk) == 1 or rng.random() < 0.5:
                    other = rng.choice([j for j in range(len(documents)) if j != d])
                    start = rng.randint(0, len(documents[other]) - 1)
                    b = []
                    for s in documents[other][start:]:
                        b.extend(s)
                        if len(b) >= target - len(a):
                            break
                    i -= len(chunk) - a_end
                    random_next = True
                else:
                    b, random_next = [t for s in chunk[a_end:] for t in s], False
                a, b = _reference_truncate(a, b, max_num_tokens, rng)
                out.append((len(a) + len(b) + 3, random_next))
                chunk, length = [], 0
                target = rng.randint(2, max_num_tokens) if rng.random() < short_seq_prob else max_num_tokens
            i += 1
    return np.array(out)


@pytest.mark.parametrize("short_seq_prob", [0.1, 0.5])
def test_length_histogram_and_nsp_match_the_reference_algorithm(docs, tok, short_seq_prob):
    tokenized = masked_lm.tokenize_documents([d.sentences for d in docs], tok)
    as_lists = [[tokenized.tokens[tokenized.sentence_offsets[s]:tokenized.sentence_offsets[s + 1]].tolist()
                 for s in range(tokenized.document_offsets[d], tokenized.document_offsets[d + 1])]
                for d in range(tokenized.num_documents)]
    ref = np.concatenate([_reference_instances(as_lists, SEQ, short_seq_prob, random.Random(k)) for k in range(5)])
    sp = special_ids(tok)
    ours = [masked_lm.build_instances(tokenized, seq_len=SEQ, short_seq_prob=short_seq_prob, dupe_factor=1,
                                        cls=sp.cls, sep=sp.sep, seed=k) for k in range(5)]
    lengths = np.concatenate([o.lengths for o in ours])
    nsp = np.concatenate([o.next_sentence_label for o in ours])
    assert abs(len(lengths) - len(ref)) < 0.04 * len(ref)
    assert abs(lengths.mean() - ref[:, 0].mean()) < 0.03 * ref[:, 0].mean()
    assert abs(np.mean(lengths == SEQ) - np.mean(ref[:, 0] == SEQ)) < 0.04
    for q in (0.1, 0.25, 0.5):
        assert abs(np.quantile(lengths, q) - np.quantile(ref[:, 0], q)) <= 4, q
    assert abs(nsp.mean() - ref[:, 1].mean()) < 0.04


def test_static_masks_do_not_depend_on_the_chunking(docs, tok):
    """A mask is a function of (seed, shard, row): masking in chunks of 3 or 4096 rows gives the same."""
    from groupbert.data.masking import MaskingSpec

    tokenized = masked_lm.tokenize_documents([d.sentences for d in docs[:10]], tok)
    sp = special_ids(tok)
    inst = masked_lm.build_instances(tokenized, seq_len=SEQ, short_seq_prob=0.1, dupe_factor=1, cls=sp.cls,
                                       sep=sp.sep, seed=0)
    spec = MaskingSpec(0.15, P, tok.get_vocab_size(), sp)
    one = masked_lm.static_mask(inst, spec, SEQ, seed=0, chunk=3)
    two = masked_lm.static_mask(inst, spec, SEQ, seed=0, chunk=4096)
    np.testing.assert_array_equal(one.ids, two.ids)
    np.testing.assert_array_equal(one.masked_positions, two.masked_positions)
    other = masked_lm.static_mask(inst, spec, SEQ, seed=0, shard=1)
    assert not np.array_equal(one.ids, other.ids)


def test_too_small_corpus_and_bad_settings(tok):
    with pytest.raises(DataError, match="yields no pretraining instance"):
        build_pretraining_dataset([Document("only", ["One lonely sentence."])], tok,
                                  seq_len=SEQ, max_predictions=P)
    with pytest.raises(DataError, match="no text"):
        build_pretraining_dataset([Document("e", [])], tok, seq_len=SEQ, max_predictions=P)
    with pytest.raises(DataError, match="seq_len"):
        build_pretraining_dataset([], tok, seq_len=4, max_predictions=2)
    with pytest.raises(DataError, match="mask_prob"):
        build_pretraining_dataset([], tok, seq_len=SEQ, max_predictions=P, mask_prob=0.0)
    # One document with two sentences works (no random next possible: every label is 0).
    ds = build_pretraining_dataset([Document("one", ["First part here.", "Second part here."])], tok,
                                   seq_len=SEQ, max_predictions=P)
    assert len(ds) == 1 and int(ds[0]["next_sentence_label"]) == 0


def test_tokenizer_with_padding_enabled_gives_same_data(docs, tok):
    padded = load_wordpiece()
    padded.enable_padding(length=128)
    padded.enable_truncation(max_length=128)
    kwargs = dict(seq_len=SEQ, max_predictions=P)
    a = build_pretraining_dataset(docs[:4], tok, **kwargs).with_format("numpy")[:]["input_ids"]
    b = build_pretraining_dataset(docs[:4], padded, **kwargs).with_format("numpy")[:]["input_ids"]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert padded.padding is not None   # the caller's tokenizer is left as it was
