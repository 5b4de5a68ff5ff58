#!/usr/bin/env bash
# One prepared pass over the CUDA path, for a machine with a GPU (a few minutes on one H100):
#   1. device: nvidia-smi, torch and the GPU's name (no CUDA: the report says so and the script fails);
#   2. tests: the fast suite (pytest -m "not slow"), whose runs pick CUDA through runtime.backend: auto;
#   3. step benchmarks on the GPU in bf16: ours vs Hugging Face (bench_train_step, bench_gpt2_step) and
#      fp32/bf16/fp16 (bench_precision);
#   4. short runs: tiny GroupBERT pretraining (eager, and with runtime.compile) and tiny SQuAD fine-tuning;
#   5. report.json: device, torch, every stage's exit code and seconds, the benchmarks' JSON and headline
#      ratios, the runs' final metrics (from their metrics.jsonl).
# Every stage runs (a failed one does not stop the others) under its own time limit, and the whole pass
# within GPU_CHECK_BUDGET_S (default 540: one 10-minute command, the report included; a stage that no
# longer fits is skipped and counts as failed). The report is always written; the exit code is non-zero
# when any stage failed.
#
#   benchmarks/gpu_check.sh                 # on the GPU machine, from anywhere (it works in the repo root)
#   benchmarks/gpu_check.sh --dry-run       # the plumbing on CPU: tiny sizes, a few steps (= GPU_CHECK_DEVICE=cpu)
#
# Environment: PYTHON (.venv/bin/python), OUT (benchmarks/results/gpu_check), GPU_CHECK_DEVICE (cuda | cpu),
# GPU_CHECK_TESTS (what pytest runs; default tests/, on CPU one small file), GPU_CHECK_COMPILE (1: also the
# runtime.compile run; default 1 on CUDA, 0 on CPU, where inductor takes minutes on a laptop's cores),
# GPU_CHECK_BUDGET_S (540), GPU_CHECK_SKIP (stage names to leave out, comma-separated: tests,pretrain_compile).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

DEVICE=${GPU_CHECK_DEVICE:-cuda}
for arg in "$@"; do
    case $arg in
        --dry-run) DEVICE=cpu ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$arg' (--dry-run, --help)" >&2; exit 2 ;;
    esac
done
case $DEVICE in
    cuda|cpu) ;;
    *) echo "gpu_check.sh: GPU_CHECK_DEVICE must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."   # the repo root: the scripts and configs are addressed from there
PYTHON=${PYTHON:-.venv/bin/python}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "gpu_check.sh: no Python at '$PYTHON' (run make setup, or set PYTHON)" >&2
    exit 2
fi
OUT=${OUT:-benchmarks/results/gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# this script's own outputs from an earlier pass (nothing else in OUT is touched)
rm -rf "$OUT/logs" "$OUT/bench" "$OUT/runs" "$OUT/stages.tsv" "$OUT/report.json" "$OUT/pytest.xml" \
    "$OUT/device.json" "$OUT/notes.txt"
mkdir -p "$OUT/logs" "$OUT/bench" "$OUT/runs"
: > "$OUT/stages.tsv"
: > "$OUT/notes.txt"
# nothing in this pass downloads (the GPU machine may be offline): fail at once rather than wait on the hub
export WANDB_MODE=disabled PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

if [[ $DEVICE == cuda ]]; then
    DRY=0
    COMPILE=${GPU_CHECK_COMPILE:-1}
    TESTS=${GPU_CHECK_TESTS:-tests}
else
    DRY=1
    COMPILE=${GPU_CHECK_COMPILE:-0}
    TESTS=${GPU_CHECK_TESTS:-tests/test_layers.py}
fi

BUDGET_S=${GPU_CHECK_BUDGET_S:-540}
SKIP=",${GPU_CHECK_SKIP:-},"
if [[ $SKIP == *",device,"* ]]; then
    echo "gpu_check.sh: the device stage cannot be left out (GPU_CHECK_SKIP)" >&2
    exit 2
fi
STARTED=$(date +%s)

note() { echo "note: $*"; echo "$*" >> "$OUT/notes.txt"; }
left_out() { [[ $SKIP == *",$1,"* ]]; }

# stage NAME LIMIT_S CMD...: run CMD (output to the console and logs/NAME.log) under `timeout LIMIT_S`, cut
# to what is left of the budget (30 s kept for the report); record NAME, exit code (124: timed out;
# "skipped") and seconds in stages.tsv. Never stops the script.
stage() {
    local name=$1 limit=$2
    shift 2
    if left_out "$name"; then
        note "$name: left out (GPU_CHECK_SKIP)"
        return 0
    fi
    local left=$(( BUDGET_S - ($(date +%s) - STARTED) - 30 ))
    if (( left < 15 )); then
        note "$name: skipped, the pass's time budget (GPU_CHECK_BUDGET_S=$BUDGET_S) is spent"
        printf '%s\tskipped\t0\n' "$name" >> "$OUT/stages.tsv"
        return 0
    fi
    (( limit > left )) && limit=$left
    echo "== $name (limit ${limit}s): $*"
    local t0 t1 rc
    t0=$(date +%s.%N)
    set +e
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/logs/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    t1=$(date +%s.%N)
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')" \
        >> "$OUT/stages.tsv"
    echo "== $name: exit $rc"
}

# write_report: report.json from stages.tsv, device.json, bench/*.json, runs/*/metrics.jsonl; the exit code
# is 1 when a stage failed (or none ran).
write_report() {
    "$PYTHON" - "$OUT" "$DEVICE" <<'PY'
import json, sys
from pathlib import Path

import yaml

out, device = Path(sys.argv[1]), sys.argv[2]
stages = {}
for line in (out / "stages.tsv").read_text().splitlines():
    name, rc, seconds = line.split("\t")
    if rc == "skipped":   # the time budget was spent before it
        stages[name] = {"exit_code": None, "skipped": True, "seconds": 0.0}
    else:
        stages[name] = {"exit_code": int(rc), "seconds": float(seconds), "log": f"logs/{name}.log"}


def read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


benchmarks = {}
for path in sorted((out / "bench").glob("*.json")):
    rec = read_json(path) or {}
    headline = dict(rec.get("ratios") or {})
    if "hf_over_ours_time" in rec:
        headline["hf_over_ours_time"] = rec["hf_over_ours_time"]
    if rec.get("benchmark") == "precision":
        headline.update({f"{r['precision']}_speedup_vs_{rec['results'][0]['precision']}": r["speedup_vs_first"]
                         for r in rec.get("results", [])[1:]})
    results = rec.get("results")
    if isinstance(results, dict):   # bench_train_step, bench_gpt2_step: model -> timings
        medians = {name: r.get("median_s") for name, r in results.items()}
    else:                           # bench_precision: a row per precision
        medians = {r.get("precision"): r.get("median_step_s") for r in results or []}
    cmd = path.with_suffix(".cmd")
    benchmarks[path.stem] = {"json": str(path.relative_to(out)),
                             "command": cmd.read_text().strip() if cmd.exists() else None,
                             "smoke": rec.get("smoke"), "headline": headline, "median_step_s": medians}

runs = {}
for run in sorted(p for p in (out / "runs").iterdir() if p.is_dir()):
    records = []
    try:
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        runs[run.name] = {"error": f"cannot read metrics.jsonl: {e}"}
        continue
    last = {}
    for r in records:
        last[r.get("kind")] = r
    train, ev, end, start = last.get("train", {}), last.get("eval", {}), last.get("end", {}), last.get("run", {})
    try:
        runtime = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("runtime", {})
    except (OSError, yaml.YAMLError):
        runtime = {}
    runs[run.name] = {
        "status": end.get("status"), "step": end.get("step"), "error": end.get("error"),
        "backend": start.get("backend"), "device": start.get("device"),
        "precision": runtime.get("precision"), "compile": runtime.get("compile"),
        "final_train": {k: v for k, v in train.items() if k not in ("kind", "time")},
        "final_eval": {k: v for k, v in ev.items() if k not in ("kind", "time")},
    }

eager, compiled = runs.get("pretrain", {}), runs.get("pretrain_compile", {})
if eager.get("final_train", {}).get("loss") and compiled.get("final_train", {}).get("loss"):
    a, b = eager["final_train"]["loss"], compiled["final_train"]["loss"]
    compiled["final_loss_rel_diff_vs_eager"] = abs(b - a) / abs(a)  # bf16: close, not equal
notes = [n for n in (out / "notes.txt").read_text().splitlines() if n.strip()]
failed = sorted(n for n, s in stages.items() if s["exit_code"] != 0)
report = {"device": device, **(read_json(out / "device.json") or {}), "dry_run": device == "cpu",
          "stages": stages, "failed_stages": failed, "benchmarks": benchmarks, "runs": runs, "notes": notes,
          "ok": bool(stages) and not failed}
(out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
print(f"report: {out / 'report.json'}")
for name, s in stages.items():
    print(f"  {name:<18} exit {str(s['exit_code']) if not s.get('skipped') else 'skipped':>7}  {s['seconds']:>7.1f} s")
for name, b in benchmarks.items():
    print(f"  {name:<18} " + ", ".join(f"{k} {v:.2f}" for k, v in b["headline"].items()))
for name, r in runs.items():
    print(f"  run {name:<14} {r.get('status')} at step {r.get('step')}; eval "
          + ", ".join(f"{k} {v:.4g}" for k, v in r.get("final_eval", {}).items() if isinstance(v, float)))
sys.exit(0 if report["ok"] else 1)
PY
}

# The report is written however the script ends (a failed stage, the device check, an error, SIGTERM/^C);
# the exit code is the script's own failure, else 1 when a stage failed, else 0.
finish() {
    local rc=$? report_rc=0
    trap - EXIT
    write_report || report_rc=$?
    exit $(( rc != 0 ? rc : report_rc ))
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 1. device -------------------------------------------------------------------------------------------
if [[ $DEVICE == cuda ]]; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        stage nvidia_smi 60 nvidia-smi
    else
        note "nvidia-smi not on PATH"
    fi
fi
stage device 120 "$PYTHON" - "$OUT/device.json" "$DEVICE" <<'PY'
import json, sys
import torch

path, want = sys.argv[1], sys.argv[2]
info = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
if torch.cuda.is_available():
    info.update(gpu=torch.cuda.get_device_name(), gpu_count=torch.cuda.device_count(),
                capability=".".join(map(str, torch.cuda.get_device_capability())),
                bf16_supported=torch.cuda.is_bf16_supported())
json.dump(info, open(path, "w"), indent=1)
print(json.dumps(info, indent=1))
if want == "cuda" and not torch.cuda.is_available():
    sys.exit(f"no CUDA: torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no GPU; install the "
             "CUDA wheel of torch (README 'CUDA'), or run --dry-run to check this script on CPU")
PY
if [[ $(grep '^device' "$OUT/stages.tsv" | cut -f2) != 0 ]]; then
    echo "gpu_check.sh: the device check failed (logs/device.log); nothing else runs" >&2
    exit 1
fi

# ---- 2. the fast test suite ------------------------------------------------------------------------------
PYTEST=(-m pytest $TESTS -q -m "not slow" -x -p no:cacheprovider --junitxml="$OUT/pytest.xml" -rfEs)
if "$PYTHON" -c "import pytest_timeout" >/dev/null 2>&1; then
    PYTEST+=(--timeout=120)   # per test; the stage as a whole has `timeout 300`
else
    note "pytest-timeout is not installed: no per-test limit, only the stage's 300 s"
fi
stage tests 300 "$PYTHON" "${PYTEST[@]}"

# ---- 3. step benchmarks ----------------------------------------------------------------------------------
# bench NAME SCRIPT ARGS...: --device, --precision bf16 where the script has it (else its default, noted),
# --smoke on CPU, the JSON into bench/NAME.json.
bench() {
    local name=$1 script=$2
    shift 2
    if left_out "$name"; then
        stage "$name" 0 true   # only the note
        return 0
    fi
    local args=(--device "$DEVICE" --output "$OUT/bench/$name.json")
    if [[ $DRY == 1 ]]; then
        args+=(--smoke)
    else
        args+=("$@")
    fi
    local help flag='--precision([^a-z_-]|$)'   # the option itself, not --precisions
    help=$("$PYTHON" "$script" --help 2>&1) || note "$script --help failed: $(tail -n 1 <<< "$help")"
    if [[ $help =~ $flag ]]; then
        args+=(--precision bf16)
    else
        note "$script has no --precision: $name ran in its default precision"
    fi
    echo "$script ${args[*]}" > "$OUT/bench/$name.cmd"
    stage "$name" 240 "$PYTHON" "$script" "${args[@]}"
}
bench bench_train_step benchmarks/bench_train_step.py
bench bench_gpt2_step benchmarks/bench_gpt2_step.py
# fp32, bf16 and fp16 side by side (its own --precisions); Base size on the GPU, the smoke size on CPU
PRECISION_ARGS=(--device "$DEVICE" --output "$OUT/bench/bench_precision.json")
if [[ $DRY == 1 ]]; then PRECISION_ARGS+=(--smoke); else PRECISION_ARGS+=(--size base); fi
echo "benchmarks/bench_precision.py ${PRECISION_ARGS[*]}" > "$OUT/bench/bench_precision.cmd"
stage bench_precision 240 "$PYTHON" benchmarks/bench_precision.py "${PRECISION_ARGS[@]}"

# ---- 4. short runs ---------------------------------------------------------------------------------------
RUN_SETS=(--set "runtime.backend=$DEVICE" --set logging.progress_bar=false --set logging.wandb.mode=disabled)
if [[ $DRY == 1 ]]; then
    PRETRAIN_SETS=(--set train.max_steps=3 --set train.micro_batch_size=8 --set train.eval_batches=2
                   --set data.max_documents=6 --set logging.log_every=1 --set runtime.threads=2)
    SQUAD_SETS=(--set squad.epochs=null --set train.max_steps=2 --set train.micro_batch_size=4
                --set squad.max_train_examples=8 --set squad.max_dev_examples=8 --set logging.log_every=1)
else
    # bf16 autocast, as the benchmarks; threads=0: torch's default (the SQuAD recipe pins 2 for laptops)
    PRETRAIN_SETS=(--set train.max_steps=50 --set logging.log_every=10 --set runtime.precision=bf16)
    SQUAD_SETS=(--set squad.epochs=null --set train.max_steps=40 --set logging.log_every=10
                --set runtime.precision=bf16 --set runtime.threads=0)
fi
stage pretrain 300 "$PYTHON" run_pretraining.py --config configs/groupbert/tiny_phase1.yaml \
    --output-dir "$OUT/runs/pretrain" "${RUN_SETS[@]}" "${PRETRAIN_SETS[@]}"
if [[ $COMPILE == 1 ]]; then
    # the same run with runtime.compile: its losses should follow the eager run's (report.json, runs/)
    stage pretrain_compile 300 "$PYTHON" run_pretraining.py --config configs/groupbert/tiny_phase1.yaml \
        --output-dir "$OUT/runs/pretrain_compile" "${RUN_SETS[@]}" "${PRETRAIN_SETS[@]}" --set runtime.compile=true
fi
stage squad 300 "$PYTHON" run_squad.py --config configs/squad/tiny_minilm.yaml \
    --output-dir "$OUT/runs/squad" "${RUN_SETS[@]}" "${SQUAD_SETS[@]}"

# ---- 5. report: written by finish (the EXIT trap) ----------------------------------------------------------
exit 0
