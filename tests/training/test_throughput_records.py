"""Throughput in every run (groupbert.training.throughput, the engine, progress): the run record's model
FLOPs per token and peak, train records with ``seq_per_s``, ``tokens_per_s``, ``tflops`` and ``mfu`` that
agree with each other, ``runtime.peak_tflops`` giving the MFU it should, MFU in the progress lines, on the
bar and in the end-of-run summary, and the FLOPs per token following the rows the model is fed."""
import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest

from groupbert.config import load_config
from groupbert.models.flops import forward_flops, train_flops_per_token
from groupbert.tasks.pretraining import pretrain
from groupbert.training import progress as progress_mod
from groupbert.training.engine import _rate_postfix
from groupbert.training.hardware import Peak
from groupbert.training.throughput import RunRate, flops_per_token

PEAK_TFLOPS = 0.5   # per device; above what a CPU running the tiny model achieves, so 0 < MFU < 1
RUN = ["train.max_steps=3", "train.eval_every=0", "train.eval_at_start=false", "logging.progress_every_s=0",
       f"runtime.peak_tflops={PEAK_TFLOPS}"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_config_at):
    """A 3-step tiny pretraining run with the peak overridden: (config, records, log lines)."""
    tmp = tmp_path_factory.mktemp("throughput")
    cfg = tiny_config_at(tmp, *RUN)
    lines = []

    class Capture(logging.Handler):
        def emit(self, record):
            lines.append((record.name, record.getMessage()))
    root, handler = logging.getLogger(), Capture(logging.INFO)
    old = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        pretrain(cfg, tmp / "run")
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
    records = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    return cfg, records, lines


def test_run_record_has_the_model_flops_and_the_peak(run):
    cfg, records, lines = run
    r = records[0]
    assert r["kind"] == "run"
    # unpacked rows of 64 tokens with data.max_predictions = 10 masked-LM slots
    assert r["flops_per_token"] == train_flops_per_token(cfg.model, 64, 10)
    assert r["peak_tflops"] == PEAK_TFLOPS and r["peak_devices"] == 1
    assert r["peak_source"] == "runtime.peak_tflops: 0.5 TFLOPS per device"
    assert r["precision"] == "fp32"   # conftest's tiny run pins it
    info = [m for name, m in lines if name == "groupbert.training.engine" and m.startswith("model: ")]
    assert info == [f"model: {r['flops_per_token'] / 1e9:.3g} GFLOP per token (train), peak 0.5 TFLOPS fp32 "
                    f"(runtime.peak_tflops: 0.5 TFLOPS per device)"]


def test_train_records_have_consistent_throughput(run):
    cfg, records, _ = run
    fpt = records[0]["flops_per_token"]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    for r in train:
        assert "samples_per_s" not in r
        assert r["seq_per_s"] > 0 and r["tokens_per_s"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["seq_per_s"] * 64)   # one sequence per 64-token row
        assert r["tflops"] == pytest.approx(fpt * r["tokens_per_s"] / 1e12, rel=1e-12)
        assert r["mfu"] == pytest.approx(r["tflops"] * 1e12 / (PEAK_TFLOPS * 1e12), rel=1e-12)
        assert 0 < r["mfu"] < 1


def test_progress_lines_and_summary_show_mfu(run):
    _, records, lines = run
    progress = [m for name, m in lines if name == "groupbert.training.progress"]
    steps = [m for m in progress if m.startswith("step ")]
    assert len(steps) == 3 and all(", MFU " in m and "%, ETA " in m for m in steps), steps
    summary = [m for m in progress if m.startswith("  training throughput: ")]
    assert len(summary) == 1 and "tokens/s, MFU " in summary[0] and summary[0].endswith("(mean over the steps)")


def test_progress_line_mfu_is_over_the_lines_wall_time(monkeypatch, tiny_config, caplog):
    clock = iter([0.0, 10.0])
    monkeypatch.setattr(progress_mod, "_clock", lambda: next(clock))
    caplog.set_level(logging.INFO, logger="groupbert.training.progress")
    rate = RunRate(flops_per_token=2e6, peak=Peak(1e9, "test"), devices=2, precision="fp32")
    p = progress_mod.Progress(tiny_config(), "t", 1, 0, enabled=True, rate=rate)
    p.update(1, 8, 512)   # 512 tokens x 2 MFLOP in 10 s = 102.4 MFLOPS of 2 GFLOPS: 5.1%
    p.close()
    assert caplog.records[0].getMessage() == "step 1/1 (100%), 0.8 seq/s, 51 tokens/s, MFU 5.1%, ETA 0 s"


def test_bar_postfix():
    record = {"seq_per_s": 61.84, "tokens_per_s": 8101.2, "mfu": 0.0312}
    assert _rate_postfix(record) == {"seq/s": "61.8", "tok/s": "8101", "mfu": "3.1%"}
    assert _rate_postfix({**record, "mfu": None}) == {"seq/s": "61.8", "tok/s": "8101"}


def test_rates_without_a_peak_or_flops_are_null():
    known = RunRate(1e6, Peak(1e12, "x"), 4, "bf16")
    r = known.rates(sequences=10, tokens=640, seconds=2.0)
    assert r == {"seq_per_s": 5.0, "tokens_per_s": 320.0, "tflops": 320e6 / 1e12, "mfu": 320e6 / 4e12}
    no_peak = RunRate(1e6, Peak(None, "unknown GPU"), 1, "bf16").rates(10, 640, 2.0)
    assert no_peak["tflops"] == pytest.approx(320e6 / 1e12) and no_peak["mfu"] is None
    no_flops = RunRate(None, Peak(1e12, "x"), 1, "fp32").rates(10, 640, 2.0)
    assert no_flops["tflops"] is None and no_flops["mfu"] is None
    assert "no MFU" in RunRate(1e6, Peak(None, "unknown GPU"), 1, "bf16").describe()


class _Rows:
    """A prepared-data stand-in: ``gather`` gives one row of the given column widths."""

    def __init__(self, **widths):
        self.widths = widths

    def gather(self, indices, epoch):
        return {k: np.zeros((len(indices), n), dtype=np.int32) for k, n in self.widths.items()}


def test_flops_per_token_follows_the_rows_the_model_is_fed():
    cfg = load_config(None, ["model.num_layers=2", "data.seq_len=128", "data.max_predictions=20"])
    mlm = SimpleNamespace(name="mlm_nsp")
    assert flops_per_token(cfg, mlm) == train_flops_per_token(cfg.model, 128, 20)   # no data: the config
    packed = _Rows(input_ids=128, masked_lm_positions=22, cls_positions=3)
    assert flops_per_token(cfg, mlm, packed) == 3 * forward_flops(cfg.model, 1, 128, 22, sequences_per_row=3) / 128
    squad = SimpleNamespace(name="squad")
    assert flops_per_token(cfg, squad, _Rows(input_ids=128)) == 3 * forward_flops(cfg.model, 1, 128, head="qa") / 128
    gpt2 = load_config(None, ["model.type=gpt2", "model.vocab_size=50257", "data.seq_len=64"])
    assert flops_per_token(gpt2, SimpleNamespace(name="causal_lm")) == train_flops_per_token(gpt2.model, 64)
    assert flops_per_token(cfg, SimpleNamespace(name="my_task")) is None
    assert flops_per_token(cfg, SimpleNamespace(name="my_task", flops_head="qa")) == flops_per_token(cfg, squad)
