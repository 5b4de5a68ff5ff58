"""Every ``benchmarks/bench_*.py`` runs in its ``--smoke`` mode (smallest shapes, one repeat) in a
subprocess, as a user would start it, and writes the JSON keys the README quotes from it. A refactor
that breaks a benchmark fails here instead of on the next measurement. Two subprocesses run at a time
(one torch thread each): about 40 s on 2 cores, most of it start-up (torch; torch._dynamo, which the
first torch optimizer imports; transformers), not the smoke-sized work."""
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
MACHINE = ["benchmark", "cpu", "python", "git_commit", "load_average_at_end"]  # common.write_results adds these
# case -> (script, extra arguments, keys the README or later comparisons read). "a.b" walks dicts; "*" is
# every value of a dict or item of a list (and there must be at least one); values must not be null unless
# the path ends in "?".
CASES = {
    "custom_ops_step": ("bench_custom_ops_step.py", [], [
        "results.ops-on.median_s", "results.ops-off.median_s", "results.*.losses", "speedup_off_over_on"]),
    "data_prep": ("bench_data_prep.py", [], [
        "results.*.kind", "results.*.scale", "results.*.tokens", "results.*.seconds", "results.*.tokens_per_s",
        "results.*.peak_rss_mb", "summary.mlm.tokens_per_s_min", "summary.gpt2.tokens_per_s_min",
        "summary.mlm-xml.tokens_per_s_min", "summary.*.peak_rss_mb_max", "load_average_before"]),
    "ddp": ("bench_ddp.py", [], [
        "cases.*.processes", "cases.*.threads_per_process", "cases.*.samples_per_s",
        "cases.*.speedup_vs_1x1?",  # null: the smoke run skips the 1 x 1 case
        "cases.*.final_loss", "global_batch", "seq_len"]),
    "emulator": ("bench_emulator.py", [], [
        "cpu_median_s", "emulator_median_s", "overhead", "micro_batch", "gradient_accumulation", "seq_len",
        "times_s.cpu", "times_s.emulator", "load_average_before"]),
    "fused_optim": ("bench_fused_optim.py", [], [
        "optimizer_step.results.copy.gb_per_s", "optimizer_step.results.torch-adamw-fused.median_s",
        "optimizer_step.results.ours-adamw-fused.vs_torch_fused", "optimizer_step.results.ours-lamb-fused.median_s",
        "optimizer_step.results.ours-lamb-fused-noclip.vs_torch_fused",
        "optimizer_step.results.ours-lamb-python.median_s", "optimizer_step.results.*.gb_per_s",
        "optimizer_step.agreement.*.max_abs_diff_over_max_abs_param"]),
    "gpt2_step": ("bench_gpt2_step.py", [], [
        "results.ours.median_s", "results.hf.median_s", "results.hf-fused-adamw.median_s", "results.*.first_loss",
        "results.*.tflops", "results.*.mfu", "hf_over_ours_time", "ratios.hf_fused_adamw_over_ours_time",
        "peak_source", "cpu_flags"]),
    "grouped_conv": ("bench_grouped_conv.py", [], [
        "phases.default allocator.speedup.fwd+bwd", "phases.*.results.ours fwd+bwd.median_ms",
        "phases.*.results.conv1d fwd+bwd.median_ms", "max_abs_diff.grad_input"]),
    "grouped_conv_segments": ("bench_grouped_conv.py", ["--segments", "3"], [
        "phases.*.reference / ours segments.fwd+bwd", "phases.*.ours segments / ours unsegmented.fwd+bwd",
        "phases.*.results.ours segments fwd+bwd.median_ms", "max_abs_diff.grad_input"]),
    "optimizers": ("bench_optimizers.py", [], [
        *(f"optimizer_step.results.{name}.median_s" for name in (
            "torch-adamw", "torch-adamw-foreach", "torch-adamw-fused", "ours-adamw", "ours-lamb", "ours-lion",
            "ours-lion_ar")),
        "optimizer_step.results.*.vs_torch_default", "optimizer_step.results.*.vs_torch_fused",
        "update_metrics.plain_step_s", "update_metrics.measured_step_s", "update_metrics.overhead_per_measured_step"]),
    "packing": ("bench_packing.py", [], [
        "results.*.seq_len", "results.*.sequences", "results.*.mean_length", "results.*.padded_efficiency",
        "results.*.packed_efficiency", "results.*.packing_factor"]),
    "packing_speed": ("bench_packing_speed.py", [], [
        "results.*.rows_per_micro_batch", "results.*.step_time_ratio", "results.*.packed.mean_sequences_per_step",
        "results.*.unpacked.sequences_per_s", "results.*.packed.sequences_per_s", "results.*.speedup_sequences_per_s",
        "load_average_1min_before_after"]),
    "precision": ("bench_precision.py", [], [
        "results.*.precision", "results.*.median_step_s", "results.*.speedup_vs_first", "results.*.losses"]),
    "squad_inference": ("bench_squad_inference.py", [], [
        "median_seconds.ours", "median_seconds.transformers", "sequences_per_s.ours",
        "sequences_per_s.transformers", "speed_ratio_ours_over_hf", "max_abs_logit_diff"]),
    "train_step": ("bench_train_step.py", [], [
        "results.ours-bert.median_s", "results.hf-bert.median_s", "results.ours-groupbert.median_s",
        "results.hf-bert-fused-adamw.median_s", "results.*.params", "results.*.tflops", "results.*.mfu",
        "ratios.hf_bert_over_ours_bert", "ratios.hf_bert_fused_adamw_over_ours_bert", "ratios.groupbert_over_bert_time",
        "ratios.groupbert_over_bert_time_per_param", "ratios.groupbert_over_bert_flop_rate", "threads",
        "peak_source", "cpu_flags"]),
}
NEEDS_OPS = {"custom_ops_step", "fused_optim", "grouped_conv", "grouped_conv_segments"}  # benchmarks of the C++ ops
# rough seconds of each alone: the longest start first, so that the two workers finish together
COST = {"ddp": 12, "squad_inference": 9, "gpt2_step": 8, "train_step": 7, "packing_speed": 6, "fused_optim": 6}
TIMEOUT_S = 120  # per script


def _run(case: str, out_dir: Path) -> tuple[subprocess.CompletedProcess, Path, float]:
    script, extra, _ = CASES[case]
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{case}.json"
    # one thread each: two scripts share the two cores without oversubscribing them
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    done = subprocess.run([sys.executable, str(BENCH / script), "--smoke", *extra, "--output", str(output)],
                          cwd=out_dir, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    return done, output, time.perf_counter() - t


@pytest.fixture(scope="module")
def results_before():
    """benchmarks/results/ as the smoke runs found it: they must leave it alone."""
    return _snapshot()


def _snapshot() -> dict:
    return {str(p.relative_to(BENCH)): p.stat().st_mtime_ns for p in (BENCH / "results").rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory, results_before):  # after the snapshot
    """Start every selected case's subprocess, two at a time; each test waits for its own."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")]
    root = tmp_path_factory.mktemp("bench-smoke")
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {case: pool.submit(_run, case, root / case) for case in sorted(selected, key=lambda c: -COST.get(c, 4))}


def _ops_built() -> bool:
    import custom_ops

    return all(v == "c++" for v in custom_ops.status().values())


def _lookup(record, path: str) -> list:
    """Every value at ``path`` (module comment), failing with the first missing step."""
    values = [record]
    for key in path.split("."):
        nxt = []
        for v in values:
            if key == "*":
                items = list(v.values()) if isinstance(v, dict) else list(v)
                assert items, f"{path}: nothing under '*'"
                nxt += items
            else:
                have = sorted(v) if isinstance(v, dict) else type(v).__name__
                assert isinstance(v, dict) and key in v, f"{path}: no {key!r} (have {have})"
                nxt.append(v[key])
        values = nxt
    return values


def test_every_benchmark_has_a_smoke_case():
    scripts = {p.name for p in BENCH.glob("bench_*.py")}
    assert scripts == {script for script, _, _ in CASES.values()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_benchmark_smoke(case, results_before, smoke_runs):
    done, output, seconds = smoke_runs[case].result()
    if done.returncode and case in NEEDS_OPS and not _ops_built():  # asked only then: it imports torch
        pytest.skip("the C++ custom ops are not built or are off (GROUPBERT_CUSTOM_OPS)")
    assert done.returncode == 0, f"{CASES[case][0]} --smoke exited {done.returncode}:\n{done.stderr[-4000:]}"
    assert output.exists(), f"no JSON at {output}; stdout:\n{done.stdout[-2000:]}"
    record = json.loads(output.read_text())
    for path in MACHINE + CASES[case][2]:
        for value in _lookup(record, path.rstrip("?")):
            assert value is not None or path.endswith("?"), f"{path} is null"
    assert record["smoke"] is True
    changed = {name for name, _ in _snapshot().items() ^ results_before.items()}
    assert not changed, f"a smoke run wrote into benchmarks/results: {sorted(changed)}"
    print(f"{case}: {seconds:.1f} s")


def test_smoke_writes_nothing_without_output(monkeypatch):
    """The CLI rule every script shares: a smoke run writes a file only where ``--output`` says."""
    monkeypatch.syspath_prepend(str(BENCH))
    import argparse

    from common import parse_args

    def args(argv):
        p = argparse.ArgumentParser()
        p.add_argument("--repeats", type=int, default=5)
        return parse_args(p, argv, default_output=BENCH / "results" / "x.json", smoke=dict(repeats=1))

    assert args([]).output == BENCH / "results" / "x.json" and args([]).repeats == 5
    assert args(["--smoke"]).output is None and args(["--smoke"]).repeats == 1
    assert args(["--smoke", "--output", "a.json", "--repeats", "2"]).output == Path("a.json")
    assert args(["--smoke", "--repeats", "2"]).repeats == 2  # what is given explicitly wins
    with pytest.raises(ValueError, match="repeat"):
        parse_args(argparse.ArgumentParser(), [], default_output=None, smoke=dict(repeat=1))


def test_time_rounds_interleaves_after_warmup(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from common import median, time_rounds

    calls = []
    times = time_rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert sorted(times) == ["a", "b"] and all(len(t) == 3 and min(t) >= 0 for t in times.values())
    assert median([3.0, 1.0, 2.0]) == 2.0
