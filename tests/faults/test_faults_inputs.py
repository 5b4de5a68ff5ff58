"""Bad configuration and data-cache input is refused with exit code 2 and a message naming the key, the file
or the line (never a traceback, never a run on a silently altered setting), and a damaged entry of the data
cache, which is derived data, is built again with a WARNING.

Each case used to fail: a duplicate YAML key kept the later value silently; a non-UTF-8 recipe, a seed
above 2**64 - 1, a ``data.cache_dir`` that is a file, a truncated cache entry ended in a traceback; ``.inf``,
``.nan`` and ``1e400`` passed validation; ``runtime.threads: 100000`` segfaulted in libgomp.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from groupbert.cli import EXIT_BAD_INPUT
from groupbert.config import MAX_THREADS, SEED_MAX, ConfigError, load_config
from groupbert.data import DataError

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs/groupbert/tiny_phase1.yaml"


def _write(path: Path, text: str | bytes) -> Path:
    """Write ``text``; returns the resolved path, the spelling load_config's messages use."""
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path.resolve()


def _refused(path, overrides=(), key: str | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides), check_optimizer=False)
    if key is not None:
        assert info.value.key == key, str(info.value)
    return info.value


# ----------------------------------------------------------------------------------- 1. duplicate keys
def test_duplicate_yaml_key_is_refused_naming_key_file_and_line(tmp_path: Path) -> None:
    nested = _write(tmp_path / "nested.yaml", "train:\n  max_steps: 10\n  seed: 1\n  max_steps: 20\n")
    e = _refused(nested, key="train.max_steps")
    assert str(nested) in str(e) and "line 4" in str(e) and "line 2" in str(e)
    section = _write(tmp_path / "section.yaml", "train:\n  max_steps: 10\noptimizer:\n  lr: 0.1\ntrain:\n  seed: 3\n")
    assert "line 5" in str(_refused(section, key="train"))
    # in a file that another extends: the parent is named
    _write(tmp_path / "child.yaml", "extends: nested.yaml\ntrain:\n  seed: 2\n")
    assert str(nested) in str(_refused(tmp_path / "child.yaml", key="train.max_steps"))
    # a {mapping} given by --set
    _refused(None, ["ipu={replication_factor: 1, replication_factor: 2}"], key="ipu.replication_factor")


def test_yaml_merge_keys_and_one_key_in_two_sections_still_load(tmp_path: Path) -> None:
    """``<<: *anchor`` then an explicit key is YAML's override, not a duplicate; a name in two sections is
    two keys."""
    from groupbert.config import _parse_yaml

    tree = _parse_yaml("a: &base\n  max_steps: 3\n  seed: 4\ntrain:\n  <<: *base\n  max_steps: 5\n", "x.yaml")
    assert tree["train"] == {"max_steps": 5, "seed": 4}
    path = _write(tmp_path / "ok.yaml", "train:\n  seed: 1\ndata:\n  seed: 2\n")
    cfg = load_config(path, check_optimizer=False)
    assert (cfg.train.seed, cfg.data.seed) == (1, 2)


# ----------------------------------------------------------------------------------- 2. encoding
def test_non_utf8_config_is_refused_naming_the_file_and_byte_offset(tmp_path: Path) -> None:
    text = "# tiny run\ntrain:\n  max_steps: 10   # caf\u00e9\n"
    path = _write(tmp_path / "latin1.yaml", text.encode("latin-1"))
    e = _refused(path)
    offset = text.encode("latin-1").index(b"\xe9")
    assert str(path) in str(e) and f"offset {offset}" in str(e) and "line 3" in str(e) and "0xe9" in str(e)
    assert load_config(_write(tmp_path / "bom.yaml", b"\xef\xbb\xbftrain:\n  max_steps: 7\n"),
                       check_optimizer=False).train.max_steps == 7   # a UTF-8 byte-order mark is fine


# ----------------------------------------------------------------------------------- 3. non-finite floats
NON_FINITE = [".inf", "-.inf", ".nan", ".NaN", "1e400", "-1e400", "inf", "nan", "1" + "0" * 400]


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("key", ["optimizer.weight_decay", "optimizer.lr", "schedule.warmup_power",
                                 "schedule.end_lr_ratio", "optimizer.eps"])
def test_non_finite_float_from_set_is_refused(key: str, value: str) -> None:
    assert "must be a finite number" in str(_refused(None, [f"{key}={value}"], key=key))


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400"])
def test_non_finite_float_from_yaml_is_refused(tmp_path: Path, value: str) -> None:
    path = _write(tmp_path / "r.yaml", f"optimizer:\n  weight_decay: {value}\nschedule:\n  warmup_power: 1.0\n")
    e = _refused(path, key="optimizer.weight_decay")
    assert "must be a finite number" in str(e) and str(path) in str(e)


def test_non_finite_float_in_lists_and_unions_is_refused() -> None:
    assert "must be a finite number" in str(_refused(None, ["ipu.available_memory_proportion=[0.5, .nan]"],
                                    key="ipu.available_memory_proportion[1]"))
    assert "must be a finite number" in str(_refused(None, ["runtime.loss_scale=.inf"], key="runtime.loss_scale"))
    assert load_config(None, ["runtime.loss_scale=512", "optimizer.lr=1e-3"],
                       check_optimizer=False).runtime.loss_scale == 512.0


# ----------------------------------------------------------------------------------- 4. seeds
@pytest.mark.parametrize("key", ["train.seed", "data.seed"])
@pytest.mark.parametrize("value", [SEED_MAX + 1, 2 ** 64, 10 ** 30, -1])
def test_seed_outside_the_range_every_consumer_takes_is_refused(key: str, value: int) -> None:
    e = _refused(None, [f"{key}={value}"], key=key)
    assert f"[0, {SEED_MAX}]" in str(e)


def test_the_largest_seed_works_in_every_consumer() -> None:
    """train.seed feeds torch.manual_seed, a torch.Generator per epoch (seed + epoch), numpy's SeedSequence
    (packing), the uint64 hashes of the Feistel shuffle and dynamic masks; data.seed the preparation's."""
    import torch

    from groupbert.data.loader import FeistelPermutation
    from groupbert.data.masked_lm import static_mask_keys
    from groupbert.data.masking import hash_key

    cfg = load_config(None, [f"train.seed={SEED_MAX}", f"data.seed={SEED_MAX}"], check_optimizer=False)
    seed = cfg.train.seed
    torch.manual_seed(seed)
    torch.Generator().manual_seed(seed + 1000)   # SQuAD's per-epoch order
    np.random.default_rng([seed, 7]).permutation(5)
    hash_key(1, seed, 3, np.arange(4))
    assert sorted(FeistelPermutation(10, seed, 0)(np.arange(10)).tolist()) == list(range(10))
    static_mask_keys(cfg.data.seed + 1, 0, np.arange(3))


# ----------------------------------------------------------------------------------- 5. threads
@pytest.mark.parametrize("value", [100000, MAX_THREADS + 1, -3])
def test_absurd_thread_count_is_refused(value: int) -> None:
    assert f"[0, {MAX_THREADS}]" in str(_refused(None, [f"runtime.threads={value}"], key="runtime.threads"))


@pytest.mark.parametrize("value,expected", [(0, 0), (1, 1), (MAX_THREADS, MAX_THREADS), ("null", None)])
def test_thread_counts_in_range_load(value, expected) -> None:
    assert load_config(None, [f"runtime.threads={value}"], check_optimizer=False).runtime.threads == expected


# ----------------------------------------------------------------------------------- 6. cache_dir
def test_unwritable_cache_dir_is_a_data_error_naming_key_and_path(tmp_path: Path) -> None:
    from groupbert.data.cache import cached_array, writable_cache_dir

    a_file = _write(tmp_path / "a-file", "not a directory")
    for bad in (a_file, a_file / "below"):
        with pytest.raises(DataError) as info:
            writable_cache_dir(bad)
        assert str(info.value).startswith("data.cache_dir: ") and str(bad) in str(info.value)
    with pytest.raises(DataError, match="data.cache_dir"):
        cached_array(a_file / "packed-x.npy", (2, 3), np.int32, lambda a: a.fill(0))
    assert writable_cache_dir(tmp_path / "new" / "cache").is_dir()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_cache_dir_under_a_read_only_directory_is_refused(tmp_path: Path) -> None:
    from groupbert.data.cache import writable_cache_dir

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(DataError, match="data.cache_dir"):
            writable_cache_dir(ro / "cache")
        with pytest.raises(DataError, match="data.cache_dir"):
            writable_cache_dir(ro)
    finally:
        ro.chmod(0o755)


# ----------------------------------------------------------------------------------- 7. micro-batch
def test_micro_batch_larger_than_the_data_names_the_row_count() -> None:
    from groupbert.data.loader import EpochBatches

    class Rows:
        def __len__(self) -> int:
            return 13

        def gather(self, indices, epoch):
            return {"x": np.asarray(indices)}

    with pytest.raises(ValueError, match=r"has 13 rows, fewer than one micro-batch of 14; .*"
                                         r"train\.micro_batch_size <= 13"):
        EpochBatches(Rows(), 14, seed=0)
    assert len(EpochBatches(Rows(), 13, seed=0)) == 1


# ----------------------------------------------------------------------------------- 8. the data cache
@pytest.fixture(scope="module")
def prepared_entry(tmp_path_factory, tiny_config_at):
    """A tiny on-the-fly preparation in a cache; tests copy it (preparing takes a second or two)."""
    from groupbert.data.cache import prepared_in_cache
    from groupbert.data.prepare import PrepareSettings

    base = tmp_path_factory.mktemp("cache-entry")
    cfg = tiny_config_at(base)
    settings = PrepareSettings.from_config(cfg)
    entry = prepared_in_cache(settings, cfg.data.cache_dir, num_proc=1, show_progress=False)
    return settings, Path(cfg.data.cache_dir), entry


def _copy_cache(prepared_entry, tmp_path: Path):
    import shutil

    settings, cache, entry = prepared_entry
    copy = tmp_path / "copied-cache"   # not tiny_config's data.cache_dir (tmp_path / "cache")
    shutil.copytree(cache, copy)
    return settings, copy, copy / entry.name


def _first_shard(entry: Path) -> tuple[Path, dict]:
    manifest = json.loads((entry / "manifest.json").read_text())
    shard = manifest["shards"]["train"][0]
    return entry / shard["path"], shard


@pytest.mark.parametrize("damage", ["truncated", "flipped", "manifest", "missing"])
def test_damaged_cache_entry_is_prepared_again_with_a_warning(prepared_entry, tmp_path, caplog, damage) -> None:
    from groupbert.data.cache import prepared_in_cache
    from groupbert.data.prepare import load_manifest, verify

    settings, cache, entry = _copy_cache(prepared_entry, tmp_path)
    shard, record = _first_shard(entry)
    good = shard.read_bytes()
    if damage == "truncated":
        shard.write_bytes(good[: len(good) // 2])
    elif damage == "flipped":   # same size: only the checksum tells
        shard.write_bytes(good[:300] + bytes([good[300] ^ 1]) + good[301:])
    elif damage == "manifest":
        (entry / "manifest.json").write_text((entry / "manifest.json").read_text()[:50])
    else:
        shard.unlink()
    with caplog.at_level(logging.WARNING, logger="groupbert.data.cache"):
        again = prepared_in_cache(settings, cache, num_proc=1, show_progress=False)
    assert again == entry
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(entry) in warnings[0] and "is damaged" in warnings[0]
    assert shard.read_bytes() == good                     # the preparation is deterministic
    assert verify(entry, show_progress=False) == load_manifest(entry)
    assert not [p for p in cache.iterdir() if ".damaged-" in p.name]   # the old entry is gone


def test_whole_cache_entry_is_reused_without_a_warning(prepared_entry, tmp_path, caplog) -> None:
    from groupbert.data.cache import prepared_in_cache

    settings, cache, entry = _copy_cache(prepared_entry, tmp_path)
    before = (entry / "manifest.json").stat().st_mtime_ns
    with caplog.at_level(logging.WARNING, logger="groupbert.data.cache"):
        assert prepared_in_cache(settings, cache, num_proc=1, show_progress=False) == entry
    assert not caplog.records and (entry / "manifest.json").stat().st_mtime_ns == before


@pytest.mark.parametrize("damage", ["truncated", "header", "shape", "padded"])
def test_damaged_cached_index_is_built_again_with_a_warning(tmp_path: Path, caplog, damage: str) -> None:
    from groupbert.data.cache import cached_array

    path = tmp_path / "cache" / "packed-0123.npy"
    calls = []

    def fill(a: np.ndarray) -> None:
        calls.append(1)
        a[:] = np.arange(a.size, dtype=a.dtype).reshape(a.shape)

    expected = np.arange(600, dtype=np.int32).reshape(200, 3)
    assert (cached_array(path, (200, 3), np.int32, fill) == expected).all()
    good = path.read_bytes()
    damaged = {"truncated": good[:-100], "header": b"\x93NUMPY\x01\x00garbage" + good[16:],
               "padded": good + b"\0" * 12, "shape": None}[damage]
    if damaged is None:
        np.save(path, np.zeros((5, 3), np.int32))
    else:
        path.write_bytes(damaged)
    with caplog.at_level(logging.WARNING, logger="groupbert.data.cache"):
        again = cached_array(path, (200, 3), np.int32, fill)
    assert (again == expected).all() and len(calls) == 2
    assert any(str(path) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert [p.name for p in path.parent.iterdir()] == [path.name]   # no temporary file left behind


def test_damaged_user_prepared_directory_is_refused_not_rebuilt(prepared_entry, tmp_path, tiny_config) -> None:
    """``data.prepared`` is the user's: a damaged shard is a DataError naming it, and the file is left alone."""
    from groupbert.tasks.pretraining import prepare_data

    _, _, entry = _copy_cache(prepared_entry, tmp_path)
    shard, _ = _first_shard(entry)
    good = shard.read_bytes()
    for damaged, verify_checksums, words in [(good[:-7], "true", "truncated"),
                                             (good[:300] + bytes([good[300] ^ 1]) + good[301:], "true", "checksum"),
                                             (good[:100] + b"\xff" * 8 + good[108:], "false", "cannot be read")]:
        shard.write_bytes(damaged)
        cfg = tiny_config(f"data.prepared={entry}", f"data.verify_checksums={verify_checksums}")
        with pytest.raises(DataError) as info:
            prepare_data(cfg, show_progress=False)
        assert str(shard) in str(info.value) and words in str(info.value)
        assert shard.read_bytes() == damaged and not Path(cfg.data.cache_dir).exists()


def test_manifest_missing_fields_is_a_data_error(prepared_entry, tmp_path) -> None:
    from groupbert.data.prepare import load_manifest

    _, _, entry = _copy_cache(prepared_entry, tmp_path)
    manifest = json.loads((entry / "manifest.json").read_text())
    del manifest["shards"]["train"][0]["bytes"]
    (entry / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"manifest.json is damaged: shards.train\[0\] lacks"):
        load_manifest(entry)


# ----------------------------------------------------------------------------------- the command line
def _run_pretraining(tmp_path: Path, sets: list[str], config: Path = RECIPE) -> subprocess.CompletedProcess:
    """``run_pretraining.py --config ... --set ...`` in a subprocess: the exit code and stderr a user sees."""
    args = [sys.executable, str(ROOT / "run_pretraining.py"), "--config", str(config), "--quiet",
            "--output-dir", str(tmp_path / "run"), "--set", "runtime.custom_ops=off",   # no kernel build first
            "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=180)


def _assert_refused(out: subprocess.CompletedProcess, tmp_path: Path, *expected: str) -> None:
    assert out.returncode == EXIT_BAD_INPUT, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    for text in expected:
        assert text in out.stderr, out.stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def _bad_recipe(tmp_path: Path, case: str) -> tuple[Path, list[str], list[str]]:
    """(recipe, --set, what stderr must name) for each refusal at configuration time."""
    extends = f"extends: {RECIPE}\n"
    if case == "duplicate":
        path = _write(tmp_path / "dup.yaml", extends + "train:\n  max_steps: 10\n  max_steps: 20\n")
        return path, [], ["train.max_steps", str(path), "line 4"]
    if case == "latin-1":
        path = _write(tmp_path / "latin1.yaml", (extends + "# caf\u00e9\n").encode("latin-1"))
        return path, [], [str(path), f"offset {len(extends) + 5}"]
    if case == "inf":
        return RECIPE, ["optimizer.weight_decay=.inf"], ["optimizer.weight_decay", "must be a finite number"]
    if case == "seed":
        return RECIPE, [f"train.seed={2 ** 64}"], ["train.seed", f"[0, {SEED_MAX}]"]
    return RECIPE, ["runtime.threads=100000"], ["runtime.threads", f"[0, {MAX_THREADS}]"]


@pytest.mark.parametrize("case", ["duplicate", "latin-1", "inf", "seed", "threads"])
def test_cli_refuses_bad_configuration_with_exit_2(tmp_path: Path, case: str) -> None:
    recipe, sets, expected = _bad_recipe(tmp_path, case)
    _assert_refused(_run_pretraining(tmp_path, sets, config=recipe), tmp_path, *expected)


def test_cli_refuses_a_cache_dir_that_is_a_file_and_a_micro_batch_beyond_the_data(tmp_path: Path,
                                                                                   tiny_overrides) -> None:
    a_file = _write(tmp_path / "a-file", "")
    out = _run_pretraining(tmp_path, [*tiny_overrides, f"data.cache_dir={a_file}"])
    _assert_refused(out, tmp_path, "data.cache_dir: ", str(a_file))
    out = _run_pretraining(tmp_path, [*tiny_overrides, "train.micro_batch_size=100000"])
    _assert_refused(out, tmp_path, "key 'train.micro_batch_size'", "rows, fewer than one micro-batch of 100000")
