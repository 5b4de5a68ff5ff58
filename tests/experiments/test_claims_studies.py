"""Both claims studies end to end on a minimal grid (toy shapes, a few steps): every output is written,
the stages chain (seeds and the Hugging Face baseline at the best learning rate), the FLOP budget gives
GroupBERT fewer steps than BERT, and a second invocation runs nothing again."""
import json
import math

import pytest

from groupbert.experiments import large_batch, time_to_quality

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

DATA = ["--seq-len", "32", "--max-predictions", "4", "--vocab-size", "400", "--workers", "2", "--evals", "2"]
PNG = b"\x89PNG\r\n\x1a\n"


def _logs(out):
    return {p.name: p.stat().st_size for p in (out / "runs").glob("*.log")}


def test_time_to_quality_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # not the repo root: --config and the runs must still resolve
    monkeypatch.setenv("WANDB_MODE", "disabled")
    argv = ["--out", "ttq", "--sizes", "tiny", "--lrs", "tiny=1e-3,4e-3", "--budget-steps", "tiny=6",
            "--seeds", "2", "--batch-size", "4", *DATA]
    assert time_to_quality.main(argv) == 0
    out = tmp_path / "ttq"
    result = json.loads((out / "results.json").read_text())
    runs = {r["name"]: r for r in result["runs"]}
    assert all(r["status"] == "done" for r in runs.values())
    # stage 1: both rates for ours at seed 0; stage 2: seed 1 and Hugging Face's BERT (both seeds) at the best
    seed0 = [n for n in runs if n.endswith("-s0") and "hf_bert" not in n]
    assert len(seed0) == 4
    entry = result["analysis"]["sizes"]["tiny"]
    best = entry["models"]["bert"]["best_lr"]
    assert {n for n in runs if "hf_bert" in n} == {f"tiny-hf_bert-lr{best:g}-s0", f"tiny-hf_bert-lr{best:g}-s1"}
    assert entry["models"]["bert"]["steps"] == 6 and entry["models"]["groupbert"]["steps"] < 6
    # equal budgets: GroupBERT's FLOPs at its last step are BERT's within one step's worth
    g, b = entry["models"]["groupbert"], entry["models"]["bert"]
    assert abs(g["flops"][0] - b["flops"][0]) <= b["flops"][0] / 6
    assert entry["models"]["hf_bert"]["flops"][0] > b["flops"][0]   # the head on every position costs more
    assert len(entry["matches"]) == 2 and all(math.isfinite(m["bert_loss"]) for m in entry["matches"])
    text = (out / "results.md").read_text()
    assert "| tiny | GroupBERT |" in text and "BERT (Hugging Face)" in text and "Where GroupBERT matches" in text
    assert (out / "results.csv").read_text().count("\n") == 1 + 3 * len(runs)   # step 0 + 2 evaluations each
    for png in ("loss_vs_flops.png", "loss_vs_time.png"):
        assert (out / png).read_bytes()[:8] == PNG
    logs = _logs(out)
    assert time_to_quality.main(argv) == 0        # everything finished: nothing runs again
    assert _logs(out) == logs


def test_large_batch_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    argv = ["--out", "lb", "--base-batch", "2", "--batch-multipliers", "1,4", "--micro-batch-size", "4",
            "--samples", "16", "--lr-multipliers", "0.5,2", "--seeds", "2", *DATA]
    assert large_batch.main(argv) == 0
    out = tmp_path / "lb"
    result = json.loads((out / "results.json").read_text())
    runs = result["runs"]
    assert len(runs) == 2 * 2 * 2 + 2 * 2            # the grid at seed 0, then seed 1 at each best rate
    assert all(r["status"] == "done" for r in runs)
    by_name = {r["name"]: r for r in runs}
    big = by_name["lamb-b8-x2-s0"]
    assert big["steps"] == 2 and "train.gradient_accumulation=2" in big["sets"]
    assert big["info"]["lr"] == pytest.approx(1.6e-2 * 2 * 2)          # base x sqrt(4) x 2
    cfg = (out / "runs" / "lamb-b8-x2-s0" / "config.yaml").read_text()
    assert "gradient_accumulation: 2" in cfg and "micro_batch_size: 4" in cfg
    metrics = [json.loads(x) for x in (out / "runs" / "lamb-b8-x2-s0" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in metrics if r.get("kind") == "eval") == 2
    table = result["table"]
    assert set(table) == {"adamw@1", "adamw@4", "lamb@1", "lamb@4"}
    assert all(len(e["final_loss"]) == 2 for e in table.values())
    text = (out / "results.md").read_text()
    assert "| LAMB | 8 (4x) | 2 |" in text and "| AdamW | 2 (1x) | 8 |" in text
    for png in ("loss_vs_samples.png", "loss_vs_steps.png", "loss_vs_lr.png"):
        assert (out / png).read_bytes()[:8] == PNG
    logs = _logs(out)
    assert large_batch.main(argv) == 0
    assert _logs(out) == logs


def test_bad_arguments_exit_2():
    with pytest.raises(SystemExit) as e:
        large_batch.parse_args(["--samples", "100", "--batch-multipliers", "1,8"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        time_to_quality.parse_args(["--sizes", "huge"])
    assert e.value.code == 2
