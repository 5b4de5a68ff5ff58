"""End-to-end pretraining on a slice of the bundled Wikipedia sample: loss falls, resume is exact,
phase 2 starts from phase 1, and bad input fails clearly without touching good checkpoints."""
import json
import math
import shutil

import pytest
import torch

from groupbert.config import ConfigError
from groupbert.data import DataError
from groupbert.training.checkpoint import read_checkpoint
from groupbert.tasks.pretraining import pretrain

# what this module's runs add to the shared tiny run (conftest.py)
PRETRAIN = ["train.max_steps=12", "train.checkpoint_every=4", "optimizer.lr=2e-3", "schedule.warmup_steps=2"]


@pytest.fixture(scope="module")
def run_config(tiny_config_at):
    """``run_config(directory, *extra)``: the tiny run with PRETRAIN and ``extra``, its cache under ``directory``."""
    return lambda directory, *extra: tiny_config_at(directory, *PRETRAIN, *extra)


def _records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, run_config):
    tmp = tmp_path_factory.mktemp("ref")
    run = tmp / "run"
    pretrain(run_config(tmp), run)
    return tmp, run


def test_run_writes_the_contract(reference_run):
    _, run = reference_run
    assert (run / "config.yaml").exists()
    train = _records(run, "train")
    assert [r["step"] for r in train] == list(range(1, 13))
    for key in ("loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "lr", "seq_per_s", "tokens_per_s"):
        assert all(isinstance(r[key], float) for r in train), key
    evals = _records(run, "eval")
    assert [r["step"] for r in evals] == [0, 12]
    assert evals[-1]["eval_mlm_loss"] < evals[0]["eval_mlm_loss"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-12", "step-4", "step-8"]
    assert read_checkpoint(run).step == 12


def test_resume_reproduces_the_uninterrupted_losses(reference_run, tmp_path, run_config):
    tmp, run = reference_run
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / "step-4", cut / "checkpoints" / "step-4")
    (cut / "checkpoints" / "latest").write_text("step-4\n")
    shutil.copy(run / "config.yaml", cut / "config.yaml")
    # metrics of the "killed" run up to and past the checkpoint; resume drops the records after step 4
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text("\n".join(lines[:9]) + "\n")
    pretrain(run_config(tmp), cut, resume=True)
    full = {r["step"]: r["loss"] for r in _records(run, "train")}
    resumed = {r["step"]: r["loss"] for r in _records(cut, "train")}
    assert sorted(resumed) == list(range(1, 13))
    for step in range(5, 13):
        assert resumed[step] == pytest.approx(full[step], rel=1e-6, abs=1e-6), step


def test_phase2_initialises_from_phase1_and_changes_seq_len(reference_run, tmp_path, run_config):
    tmp, run = reference_run
    cfg = run_config(tmp, f"train.init_checkpoint={run}", "data.seq_len=128", "data.max_predictions=20",
                     "train.max_steps=2", "train.checkpoint_every=0", "train.micro_batch_size=4")
    out = tmp_path / "phase2"
    pretrain(cfg, out)
    first_eval = _records(out, "eval")[0]
    # starting from trained weights, not from scratch (ln 30522 ~ 10.3 at random init)
    assert first_eval["eval_mlm_loss"] < _records(run, "eval")[0]["eval_mlm_loss"] - 0.05


def test_refuses_to_overwrite_an_existing_run(reference_run, run_config):
    tmp, run = reference_run
    before = (run / "checkpoints" / "step-12" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        pretrain(run_config(tmp), run)
    assert (run / "checkpoints" / "step-12" / "model.safetensors").read_bytes() == before


def test_init_checkpoint_with_other_architecture_is_rejected(reference_run, tmp_path, run_config):
    tmp, run = reference_run
    cfg = run_config(tmp, f"train.init_checkpoint={run}", "model.hidden_size=64")
    with pytest.raises(ConfigError, match="model.hidden_size") as e:   # the one architecture check
        pretrain(cfg, tmp_path / "x")
    assert e.value.key == "model.hidden_size" and "set it to 32" in str(e.value)


def test_vocab_that_does_not_fit_the_model_is_rejected(tmp_path, run_config):
    with pytest.raises(ConfigError, match="model.vocab_size"):
        pretrain(run_config(tmp_path, "model.vocab_size=1000"), tmp_path / "x")


def test_missing_and_empty_corpus_fail_clearly(tmp_path, run_config):
    with pytest.raises(DataError, match="nope"):
        pretrain(run_config(tmp_path, f"data.corpus={tmp_path / 'nope.txt'}"), tmp_path / "a")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        pretrain(run_config(tmp_path, f"data.corpus={empty}"), tmp_path / "b")
    assert not (tmp_path / "a" / "checkpoints").exists()


def test_bert_baseline_trains_too(tmp_path, run_config):
    run = tmp_path / "bert"
    pretrain(run_config(tmp_path, "model.type=bert", "train.max_steps=3", "train.checkpoint_every=0"), run)
    assert len(_records(run, "train")) == 3 and torch.isfinite(torch.tensor(_records(run, "train")[-1]["loss"]))


@pytest.mark.parametrize("name", ["lamb_nvidia", "lion_ar_mom"])
def test_other_optimizers_train_and_log_update_metrics(tmp_path, name, run_config):
    lr = "2e-3" if name.startswith("lamb") else "1e-3"
    run = tmp_path / name
    pretrain(run_config(tmp_path, f"optimizer.name={name}", f"optimizer.lr={lr}", "train.max_steps=4",
                        "train.checkpoint_every=0", "logging.update_metrics_every=2", "schedule.warmup_steps=0"), run)
    train = _records(run, "train")
    assert len(train) == 4 and all(math.isfinite(r["loss"]) for r in train)
    updates = _records(run, "update")
    assert [r["step"] for r in updates] == [2, 4]
    for r in updates:
        assert r["update_norm"] > 0 and 0 < r["update_angle_mean"] < 1 and r["update_rrc_mean"] > 0
        assert any(k.startswith("update_rrc/") for k in r)
    assert read_checkpoint(run).state["optimizer"]["class"].rsplit(".", 1)[1] in ("LAMB", "LionAR")


def _resume_from_step(run_config, tmp_path, full, step: int, extra):
    """A run cut after checkpoint ``step`` of ``full`` (as if killed there), resumed to the end."""
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / f"step-{step}", cut / "checkpoints" / f"step-{step}")
    (cut / "checkpoints" / "latest").write_text(f"step-{step}\n")
    shutil.copy(full / "config.yaml", cut / "config.yaml")
    pretrain(run_config(tmp_path, *extra), cut, resume=True)
    return cut


@pytest.mark.parametrize("name", ["lamb", "lion_ar"])
def test_resume_is_exact_for_stateful_optimizers(tmp_path, name, run_config):
    extra = [f"optimizer.name={name}", "optimizer.lr=1e-3", "train.max_steps=6", "train.checkpoint_every=3",
             "schedule.warmup_steps=0"]
    full = tmp_path / "full"
    pretrain(run_config(tmp_path, *extra), full)
    cut = _resume_from_step(run_config, tmp_path, full, 3, extra)
    a = {r["step"]: r["loss"] for r in _records(full, "train")}
    b = {r["step"]: r["loss"] for r in _records(cut, "train")}
    for step in (4, 5, 6):
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), step


def test_packed_run_resumes_exactly_and_counts_sequences(tmp_path, run_config):
    """data.packing: the packed training rows are rebuilt identically on resume (seeded), the data position
    counts rows, and samples/s counts the sequences the rows hold."""
    extra = ["data.packing=true", "model.type=groupbert", "model.conv_group_size=16", "train.max_steps=6",
             "train.checkpoint_every=3", "schedule.warmup_steps=0", "data.short_seq_prob=1.0", "data.seq_len=128"]
    full = tmp_path / "full"
    pretrain(run_config(tmp_path, *extra), full)
    run = _records(full, "run")[0]
    assert run["train_rows"] < run["train_sequences"]
    train = _records(full, "train")
    per_row = [r["seq_per_s"] / (r["tokens_per_s"] / 128) for r in train]  # sequences per row in each step
    assert all(x >= 1 - 1e-9 for x in per_row) and max(per_row) > 1
    cut = _resume_from_step(run_config, tmp_path, full, 3, extra)
    a = {r["step"]: r["loss"] for r in train}
    b = {r["step"]: r["loss"] for r in _records(cut, "train")}
    for step in (4, 5, 6):
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), step


def test_dynamic_masking_packed_run_resumes_exactly(tmp_path, run_config):
    """data.masking=dynamic: masks are drawn per (seed, epoch, instance) at load time, so a run resumed
    across an epoch boundary redraws exactly the masks of the uninterrupted run (packed rows too)."""
    extra = ["data.masking=dynamic", "data.packing=true", "model.type=groupbert", "model.conv_group_size=16",
             "train.max_steps=16", "train.checkpoint_every=6", "schedule.warmup_steps=0", "data.short_seq_prob=0.5",
             "data.max_documents=1", "data.validation_fraction=0", "train.micro_batch_size=16"]
    full = tmp_path / "full"
    pretrain(run_config(tmp_path, *extra), full)
    train = _records(full, "train")
    assert train[5]["epoch"] < 1.0 < train[-1]["epoch"]   # the resumed part crosses into epoch 1
    cut = _resume_from_step(run_config, tmp_path, full, 6, extra)
    a = {r["step"]: r["loss"] for r in train}
    b = {r["step"]: r["loss"] for r in _records(cut, "train")}
    for step in range(7, 17):
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), step


def _prepare(tiny_overrides, tmp_path, *sets):
    from groupbert.data.prepare import main as prepare_main

    out = tmp_path / "prepared"
    argv = [a for s in [*tiny_overrides, *PRETRAIN, *sets] for a in ("--set", s)] + ["--output", str(out), "--quiet"]
    assert prepare_main(argv) == 0
    return out


def test_prepared_directory_trains_as_the_on_the_fly_path(tmp_path, run_config, tiny_overrides):
    """One data path: `python -m groupbert.data.prepare` then data.prepared=DIR gives the losses and
    evaluations of a run that prepares the same corpus and settings on the fly."""
    extra = ["train.max_steps=4", "train.checkpoint_every=0"]
    prepared = _prepare(tiny_overrides, tmp_path)
    fly, pre = tmp_path / "fly", tmp_path / "pre"
    pretrain(run_config(tmp_path, *extra), fly)
    pretrain(run_config(tmp_path, *extra, f"data.prepared={prepared}",
                        f"data.cache_dir={tmp_path / 'other-cache'}"), pre)
    for kind, key in (("train", "loss"), ("eval", "eval_loss")):
        a = [r[key] for r in _records(fly, kind)]
        b = [r[key] for r in _records(pre, kind)]
        assert len(a) == len(b) > 1 and a == pytest.approx(b, rel=1e-6, abs=1e-6), kind
    assert not (tmp_path / "other-cache").exists() or not list((tmp_path / "other-cache").glob("prepared-*"))


def test_prepared_settings_are_adopted_and_conflicts_named(tmp_path, run_config, tiny_overrides):
    import yaml

    prepared = _prepare(tiny_overrides, tmp_path, "data.dupe_factor=2", "data.masking=dynamic", "data.seed=3")
    run = tmp_path / "run"
    extra = ["train.max_steps=2", "train.checkpoint_every=0", f"data.prepared={prepared}"]
    pretrain(run_config(tmp_path, *extra), run)
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert (saved["dupe_factor"], saved["masking"], saved["seed"]) == (2, "dynamic", 3)   # what trained
    for conflict, key in (("data.dupe_factor=4", "data.dupe_factor"), ("data.seq_len=128", "data.seq_len"),
                          ("data.masking=static", "data.masking")):
        with pytest.raises(ConfigError, match=key):
            pretrain(run_config(tmp_path, *extra, conflict), tmp_path / key)
    with pytest.raises(ConfigError, match="model.type"):
        pretrain(run_config(tmp_path, *extra, "model.type=gpt2", "model.vocab_size=50257"), tmp_path / "g")


def test_every_run_ends_with_a_structured_record(tmp_path, monkeypatch, run_config):
    """{"kind": "end", "status": finished | diverged | failed}: what sweeps and studies read, never log text."""
    from groupbert.training.run_log import read_end
    from groupbert.training.steppers import HostStepper

    extra = ["train.max_steps=4", "train.checkpoint_every=0"]
    pretrain(run_config(tmp_path, *extra), tmp_path / "ok")
    end = read_end(tmp_path / "ok")
    assert end["status"] == "finished" and end["step"] == 4 and "error" not in end
    assert all("time" in r for r in map(json.loads, (tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()))

    with pytest.raises(FloatingPointError, match="loss became"):
        pretrain(run_config(tmp_path, *extra, "optimizer.lr=1e12", "schedule.warmup_steps=0", "train.max_grad_norm=0"),
                 tmp_path / "diverged")
    end = read_end(tmp_path / "diverged")
    assert end["status"] == "diverged" and "loss became" in end["error"]

    real_run = HostStepper.run

    def broken(self, batches, step):
        if step == 2:
            raise RuntimeError("disk on fire")
        return real_run(self, batches, step)

    monkeypatch.setattr(HostStepper, "run", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        pretrain(run_config(tmp_path, *extra), tmp_path / "failed")
    end = read_end(tmp_path / "failed")
    assert end == {**end, "status": "failed", "step": 2, "error": "RuntimeError: disk on fire"}
