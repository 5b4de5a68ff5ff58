"""The preparation step and what training reads from it: shards round-trip the builder, a killed run
resumes to the same shards without rewriting finished ones, several machines' parts merge into the
one-machine result, bad shards and bad documents are clear errors, packing and dynamic masking at load
time, GPT-2 token streams against the ``tokenizers`` BPE."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from groupbert.data import DataError, build_pretraining_dataset, load_corpus, load_wordpiece, special_ids
from groupbert.data.loader import EpochBatches
from groupbert.data.columns import IGNORE_INDEX
from groupbert.data.masking import MaskingSpec
from groupbert.data.prepare import PrepareSettings, load_manifest, merge, prepare, verify
from groupbert.data.prepared import CausalLMData, MaskedLMData
from groupbert.data.tokenizer import bundled_vocab_file

ROOT = Path(__file__).resolve().parents[2]
SEQ, P = 64, 10


@pytest.fixture(scope="module")
def tok():
    return load_wordpiece()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """80 JSONL documents of random vocabulary words (any 4-token span identifies its document)."""
    vocab = bundled_vocab_file().read_text("utf-8").splitlines()
    words = [w for w in vocab[2000:12000] if w.isalpha() and w.isascii() and len(w) > 3]
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with open(path, "w") as f:
        for d in range(80):
            sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 18))).capitalize() + "."
                         for _ in range(rng.randint(6, 30))]
            f.write(json.dumps({"title": f"doc{d}", "text": " ".join(sentences)}) + "\n")
    return path


def _settings(corpus, **kw):
    base = dict(kind="mlm_nsp", corpus=str(corpus), seq_len=SEQ, max_predictions=P, dupe_factor=2, seed=7,
                shard_size_mb=0.02, validation_fraction=0.1)
    return PrepareSettings(**{**base, **kw})


def _spec(tok, settings):
    return MaskingSpec(settings.mask_prob, settings.max_predictions, tok.get_vocab_size(), special_ids(tok))


def _shard_hashes(manifest):
    return {(s["split"], s["piece"], s["part"]): s["sha256"] for sp in ("train", "validation")
            for s in manifest["shards"][sp]}


def test_shards_round_trip_the_in_memory_builder(corpus, tok, tmp_path):
    """One piece, nothing held out: the prepared instances are exactly build_pretraining_dataset's."""
    settings = _settings(corpus, shard_size_mb=64, validation_fraction=0.0)
    manifest = prepare(settings, tmp_path / "p", show_progress=False)
    data = MaskedLMData(tmp_path / "p", manifest, "train", spec=_spec(tok, settings), seq_len=SEQ, seed=0,
                        verify_checksums=True)
    got = data.sequences(np.arange(len(data)), epoch=0)
    docs = load_corpus(str(corpus))
    want = build_pretraining_dataset(docs, tok, seq_len=SEQ, max_predictions=P, dupe_factor=2, seed=7)
    want = {k: np.asarray(v) for k, v in want.with_format("numpy")[:].items()}
    assert len(data) == len(want["input_ids"]) and manifest["pieces"] == 1
    for name, column in want.items():
        np.testing.assert_array_equal(got[name], column, err_msg=name)


def test_manifest_describes_the_shards(corpus, tmp_path):
    settings = _settings(corpus)
    manifest = prepare(settings, tmp_path / "p", show_progress=False)
    assert manifest["pieces"] > 5 and manifest["pieces_prepared"] == list(range(manifest["pieces"]))
    assert manifest["totals"]["train"]["documents"] + manifest["totals"]["validation"]["documents"] == 80
    assert 0 < manifest["totals"]["validation"]["documents"] < 20
    for split in ("train", "validation"):
        entries = manifest["shards"][split]
        assert sum(e["rows"] for e in entries) == manifest["totals"][split]["rows"]
        for e in entries:
            assert sum(e["length_histogram"]) == e["rows"]
            assert sum(n * c for n, c in enumerate(e["length_histogram"])) == e["tokens"]
            assert (tmp_path / "p" / e["path"]).stat().st_size == e["bytes"]
    assert manifest["settings"] == settings.content()
    assert manifest["tokenizer"]["vocab_size"] == 30522 and len(manifest["tokenizer"]["vocab_sha256"]) == 64
    verify(tmp_path / "p", show_progress=False)
    # prepared again: nothing to do, the same manifest
    assert prepare(settings, tmp_path / "p", show_progress=False)["created"] == manifest["created"]


def test_statistics_of_prepared_data(corpus, tok, tmp_path):
    """Mask rate and 80/10/10 split, NSP balance, lengths: over everything a preparation wrote."""
    settings = _settings(corpus, dupe_factor=3)
    manifest = prepare(settings, tmp_path / "p", show_progress=False)
    data = MaskedLMData(tmp_path / "p", manifest, "train", spec=_spec(tok, settings), seq_len=SEQ, seed=0)
    cols = data.sequences(np.arange(len(data)), epoch=0)
    sp = special_ids(tok)
    lengths = cols["attention_mask"].sum(1)
    labels = cols["masked_lm_labels"]
    n = (labels != IGNORE_INDEX).sum(1)
    np.testing.assert_array_equal(n, np.minimum(P, np.maximum(1, np.round((lengths - 3) * 0.15))))
    rows = np.arange(len(n))[:, None].repeat(P, 1)
    valid = labels != IGNORE_INDEX
    now = cols["input_ids"][rows[valid], cols["masked_lm_positions"][valid]]
    total = valid.sum()
    assert abs((now == sp.mask).sum() / total - 0.8) < 0.02
    assert abs((now == labels[valid]).sum() / total - 0.1) < 0.02
    assert 0.42 < cols["next_sentence_label"].mean() < 0.58
    assert np.mean(lengths == SEQ) > 0.6 and lengths.min() >= 5
    hist = np.sum([e["length_histogram"] for e in manifest["shards"]["train"]], axis=0)
    np.testing.assert_array_equal(np.bincount(lengths, minlength=SEQ + 1), hist)


def _prepare_cli(corpus, out, *extra, num_proc=2):
    cmd = [sys.executable, "-m", "groupbert.data.prepare", "--set", "model.type=bert",
           "--set", f"data.corpus={corpus}", "--set", f"data.seq_len={SEQ}", "--set", f"data.max_predictions={P}",
           "--set", "data.dupe_factor=2", "--set", "data.shard_size_mb=0.004", "--output", str(out),
           "--num-proc", str(num_proc), "--quiet", *extra]
    return cmd


def test_killed_preparation_resumes_to_the_same_shards(corpus, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    whole = tmp_path / "whole"
    subprocess.run(_prepare_cli(corpus, whole), env=env, check=True, capture_output=True)
    expected = load_manifest(whole)
    assert expected["pieces"] >= 20
    cut = tmp_path / "cut"
    proc = subprocess.Popen(_prepare_cli(corpus, cut), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((cut / "done").glob("??????.json"))) < 3:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)   # the driver and its workers, mid-run
    proc.wait()
    assert not (cut / "manifest.json").exists(), "finished before the kill: make the corpus larger"
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (cut / "shards").glob("*.arrow")}
    assert finished
    subprocess.run(_prepare_cli(corpus, cut), env=env, check=True, capture_output=True)
    resumed = load_manifest(cut)
    assert _shard_hashes(resumed) == _shard_hashes(expected)
    for path, stamp in finished.items():   # a finished shard is never rewritten
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp, path
    assert not list((cut / "shards").glob(".*.tmp"))


def test_two_preparations_of_one_directory_at_once(corpus, tmp_path):
    """E.g. two sweep agents starting on the same on-the-fly cache: one prepares, the other waits for it;
    both end with the one result."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(_prepare_cli(corpus, tmp_path / "shared", num_proc=1), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    subprocess.run(_prepare_cli(corpus, tmp_path / "alone"), env=env, check=True, capture_output=True)
    assert _shard_hashes(load_manifest(tmp_path / "shared")) == _shard_hashes(load_manifest(tmp_path / "alone"))
    verify(tmp_path / "shared", show_progress=False)


def test_restart_with_other_settings_is_refused(corpus, tmp_path):
    prepare(_settings(corpus), tmp_path / "p", show_progress=False)
    with pytest.raises(DataError, match=r"data\.seed: 7 there, 8 now"):
        prepare(_settings(corpus, seed=8), tmp_path / "p", show_progress=False)


def test_machines_prepare_disjoint_parts_that_merge_into_the_single_run(corpus, tok, tmp_path):
    settings = _settings(corpus)
    single = prepare(settings, tmp_path / "single", show_progress=False)
    parts = [tmp_path / f"machine{i}" for i in range(3)]
    seen = []
    for i, d in enumerate(parts):
        m = prepare(settings, d, shard_index=i, num_shards=3, show_progress=False)
        assert (d / "manifest-part-{}-of-3.json".format(i)).exists() and not (d / "manifest.json").exists()
        seen += m["pieces_prepared"]
    assert sorted(seen) == list(range(single["pieces"]))   # disjoint, complete
    with pytest.raises(DataError, match="merge every machine's part"):
        load_manifest(parts[0])
    with pytest.raises(DataError, match=r"parts \[2\] of 3 are missing"):
        merge(parts[:2], tmp_path / "merged")
    merged = merge(parts, tmp_path / "merged")
    assert _shard_hashes(merged) == _shard_hashes(single)
    assert merged["totals"] == single["totals"]
    a = MaskedLMData(tmp_path / "merged", merged, "train", spec=_spec(tok, settings), seq_len=SEQ, seed=0,
                     verify_checksums=True)
    b = MaskedLMData(tmp_path / "single", single, "train", spec=_spec(tok, settings), seq_len=SEQ, seed=0)
    idx = np.arange(len(a))
    for k, v in a.sequences(idx, 0).items():
        np.testing.assert_array_equal(v, b.sequences(idx, 0)[k])


def test_dynamic_masks_per_epoch_and_index(corpus, tok, tmp_path):
    settings = _settings(corpus, masking="dynamic")
    manifest = prepare(settings, tmp_path / "p", show_progress=False)
    assert "masked" not in manifest["shards"]["train"][0]       # stored unmasked
    data = MaskedLMData(tmp_path / "p", manifest, "train", spec=_spec(tok, settings), seq_len=SEQ, seed=3)
    idx = np.random.default_rng(0).permutation(len(data))[:64]
    a, b = data.gather(idx, 0), data.gather(idx, 0)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    single = data.gather(idx[5:6], 0)                           # not the batch: the (epoch, index)
    for k in a:
        np.testing.assert_array_equal(a[k][5:6], single[k])
    c = data.gather(idx, 1)
    assert (c["masked_lm_positions"] != a["masked_lm_positions"]).any(axis=1).mean() > 0.8
    np.testing.assert_array_equal(c["next_sentence_label"], a["next_sentence_label"])
    other_seed = MaskedLMData(tmp_path / "p", manifest, "train", spec=_spec(tok, settings), seq_len=SEQ, seed=4)
    assert (other_seed.gather(idx, 0)["masked_lm_positions"] != a["masked_lm_positions"]).any()
    # unmasked tokens are the stored ones
    restored = a["input_ids"].copy()
    rows = np.arange(len(idx))[:, None].repeat(P, 1)
    valid = a["masked_lm_labels"] != IGNORE_INDEX
    restored[rows[valid], a["masked_lm_positions"][valid]] = a["masked_lm_labels"][valid]
    restored2 = c["input_ids"].copy()
    valid2 = c["masked_lm_labels"] != IGNORE_INDEX
    restored2[rows[valid2], c["masked_lm_positions"][valid2]] = c["masked_lm_labels"][valid2]
    np.testing.assert_array_equal(restored, restored2)


@pytest.mark.parametrize("masking", ["static", "dynamic"])
def test_packed_rows_hold_every_instance_once(corpus, tok, tmp_path, masking):
    settings = _settings(corpus, masking=masking)
    manifest = prepare(settings, tmp_path / "p", show_progress=False)
    spec = _spec(tok, settings)
    packed = MaskedLMData(tmp_path / "p", manifest, "train", spec=spec, seq_len=SEQ, seed=1, max_per_pack=3,
                          cache_dir=tmp_path / "cache")
    assert len(packed) < packed.num_sequences and list((tmp_path / "cache").glob("packed-*.npy"))
    rows = packed.gather(np.arange(len(packed)), epoch=2)
    members = np.asarray(packed.members)
    assert np.array_equal(np.sort(members[members >= 0]), np.arange(packed.num_sequences))
    unpacked = packed.sequences(np.arange(packed.num_sequences), epoch=2)
    for r in range(0, len(packed), 7):
        seqs = rows["segment_ids"][r]
        for slot, m in enumerate(members[r][members[r] >= 0]):
            where = np.flatnonzero(seqs == slot + 1)
            L = int(unpacked["attention_mask"][m].sum())
            assert len(where) == L and where[0] == rows["cls_positions"][r, slot]
            np.testing.assert_array_equal(rows["input_ids"][r, where], unpacked["input_ids"][m, :L])
            np.testing.assert_array_equal(rows["position_ids"][r, where], np.arange(L))
            assert rows["next_sentence_label"][r, slot] == unpacked["next_sentence_label"][m]
    # the packed index is reused, not rebuilt, and the same for another process
    again = MaskedLMData(tmp_path / "p", manifest, "train", spec=spec, seq_len=SEQ, seed=1, max_per_pack=3,
                         cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(np.asarray(again.members), members)


def test_ranks_take_disjoint_shares_of_each_global_batch(corpus, tok, tmp_path):
    settings = _settings(corpus)
    manifest = prepare(settings, tmp_path / "p", show_progress=False)
    data = MaskedLMData(tmp_path / "p", manifest, "train", spec=_spec(tok, settings), seq_len=SEQ, seed=0)
    one = EpochBatches(data, 4, seed=3)
    ranks = [EpochBatches(data, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    n = len(one)
    for _ in range(n // 2 + 3):      # into the second epoch
        a, b = next(one), next(one)
        np.testing.assert_array_equal(next(ranks[0])["input_ids"], a["input_ids"])
        np.testing.assert_array_equal(next(ranks[1])["input_ids"], b["input_ids"])
    # one epoch visits every instance once: the order is a permutation
    fresh = EpochBatches(data, 1, seed=5)
    seen = {tuple(next(fresh)["input_ids"][0].tolist()) for _ in range(len(data))}
    assert len(seen) == len({tuple(r) for r in data.sequences(np.arange(len(data)), 0)["input_ids"].tolist()})


def test_bad_documents_are_counted_or_fail_naming_the_line(tmp_path):
    good = " ".join(f"Sentence number {i} of a decent document." for i in range(30))
    path = tmp_path / "mixed.jsonl"
    with open(path, "wb") as f:
        for i in range(6):
            f.write(json.dumps({"text": good}).encode() + b"\n")
        f.write(b'{"text": "broken \xff\xfe bytes"}\n')                  # line 7: undecodable
        f.write(b'{"text": "   "}\n')                                     # line 8: empty
        f.write(b'{"text": not json}\n')                                  # line 9: malformed
        f.write(json.dumps({"body": "no text field"}).encode() + b"\n")  # line 10: malformed
    manifest = prepare(_settings(path, dupe_factor=1), tmp_path / "skip", show_progress=False)
    assert manifest["skipped"] == {"undecodable": 1, "empty": 1, "malformed": 2}
    assert manifest["totals"]["train"]["documents"] + manifest["totals"]["validation"]["documents"] == 6
    with pytest.raises(DataError, match=r"mixed\.jsonl:7"):
        prepare(_settings(path, dupe_factor=1, bad_documents="fail"), tmp_path / "fail", show_progress=False)
    cmd = [sys.executable, "-m", "groupbert.data.prepare", "--set", f"data.corpus={path}",
           "--set", "data.bad_documents=fail", "--output", str(tmp_path / "cli"), "--quiet"]
    res = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert res.returncode == 2 and "mixed.jsonl:7" in res.stderr
    assert not (tmp_path / "cli" / "manifest.json").exists()


def test_causal_stream_is_gpt2_bpe_of_each_document_then_end_of_text(tmp_path):
    from groupbert.data.causal_lm import load_gpt2_bpe

    texts = [f"Document {i}: naïve café, {i * 37} cats.\nSecond line of it." for i in range(40)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    settings = PrepareSettings(kind="causal_lm", corpus=str(path), validation_fraction=0.0, shard_size_mb=0.001)
    manifest = prepare(settings, tmp_path / "p", show_progress=False)
    assert manifest["pieces"] > 1 and manifest["tokenizer"]["encoder"] == "tiktoken"
    hf = load_gpt2_bpe()
    stream = []
    for t in texts:
        stream += hf.encode(t, add_special_tokens=False).ids + [50256]
    data = CausalLMData(tmp_path / "p", manifest, "train", seq_len=16, verify_checksums=True)
    assert len(data) == len(stream) // 16
    blocks = data.gather(np.arange(len(data)), 0)
    np.testing.assert_array_equal(blocks["input_ids"].reshape(-1), stream[:len(data) * 16])
    np.testing.assert_array_equal(blocks["labels"], blocks["input_ids"])


def test_tiktoken_encodes_the_bundled_wikipedia_as_tokenizers_does():
    from groupbert.data.causal_lm import BPEEncoder, load_gpt2_bpe
    from groupbert.data.corpus import document_text
    from groupbert.data.sources import plan_pieces, read_piece

    texts = [document_text(d) for p in plan_pieces("wikipedia", 1 << 30) for d in read_piece(p)]
    texts.append("Literal <|endoftext|> inside a text is ordinary text.")
    ours = BPEEncoder().encode(texts)
    reference = load_gpt2_bpe()
    want = [e.ids for e in reference.encode_batch(texts[:-1], add_special_tokens=False)]
    assert ours[:-1] == want and sum(map(len, want)) > 500_000
    assert 50256 not in ours[-1]


@pytest.mark.parametrize("kind", ["hf", "hf-streaming"])
def test_datasets_inputs_prepare_like_the_same_jsonl(corpus, tok, tmp_path, kind):
    """A `datasets` dataset (saved to disk, or local JSONL files read as an IterableDataset) gives the
    instances of the same documents given as a JSONL file."""
    import datasets

    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    if kind == "hf":
        source = tmp_path / "saved"
        datasets.Dataset.from_dict({"text": [r["text"] for r in rows]}).save_to_disk(str(source))
    else:
        source = tmp_path / "files"
        source.mkdir()
        (source / "part-0.jsonl").write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    big = dict(shard_size_mb=64, validation_fraction=0.0)
    a = prepare(_settings(f"{kind}:{source}", **big), tmp_path / "a", show_progress=False)
    b = prepare(_settings(corpus, **big), tmp_path / "b", show_progress=False)
    assert a["pieces"] == b["pieces"] == 1 and a["totals"] == b["totals"]
    spec = _spec(tok, _settings(corpus))
    da = MaskedLMData(tmp_path / "a", a, "train", spec=spec, seq_len=SEQ, seed=0)
    db = MaskedLMData(tmp_path / "b", b, "train", spec=spec, seq_len=SEQ, seed=0)
    idx = np.arange(len(da))
    np.testing.assert_array_equal(da.sequences(idx, 0)["input_ids"], db.sequences(idx, 0)["input_ids"])
