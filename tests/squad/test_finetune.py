"""End-to-end fine-tuning of a tiny random BERT on a handful of questions; the CLI's exit codes."""
import json
import subprocess
import sys
from pathlib import Path

from groupbert.tasks.squad import finetune
from squad_fixtures import write_nested

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_finetune_and_resume(tmp_path, squad_config):
    data = write_nested(tmp_path / "squad.json")
    cfg = squad_config(f"squad.train_file={data}", f"squad.dev_file={data}")
    results = finetune(cfg, tmp_path / "run")
    run = tmp_path / "run"
    preds = json.loads((run / "predictions.json").read_text())
    assert set(preds) == {f"q{i}" for i in range(1, 7)}
    on_disk = json.loads((run / "eval_results.json").read_text())
    assert set(on_disk) >= {"exact_match", "f1", "baseline_first_sentence"}
    assert on_disk["exact_match"] == results["exact_match"] and 0 <= on_disk["f1"] <= 100
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "step-2").is_dir()

    # resume from step 1 with a longer run reproduces the uninterrupted step-2 loss
    import shutil
    shutil.rmtree(run / "checkpoints" / "step-2")
    (run / "checkpoints" / "latest").write_text("step-1\n")
    finetune(cfg, run, resume=True)
    again = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    loss2 = [r["loss"] for r in records if r["kind"] == "train" and r["step"] == 2][0]
    loss2_resumed = [r["loss"] for r in again if r["kind"] == "train" and r["step"] == 2][0]
    assert abs(loss2 - loss2_resumed) < 1e-5


def test_cli_bad_key_exits_2(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "run_squad.py"), "--config",
                          str(ROOT / "configs/squad/tiny_minilm.yaml"), "--set", "squad.no_such_key=1",
                          "--output-dir", str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "squad.no_such_key" in out.stderr


def test_cli_bad_data_exits_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = subprocess.run([sys.executable, str(ROOT / "run_squad.py"), "--config",
                          str(ROOT / "configs/squad/tiny_minilm.yaml"), "--quiet",
                          "--set", f"squad.train_file={bad}", "--set", "train.init_checkpoint=null",
                          "--output-dir", str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT,
                         env={**__import__("os").environ, "WANDB_MODE": "disabled"})
    assert out.returncode == 2 and "bad.json" in out.stderr


def test_ipu_emulator_finetune_equals_cpu(tmp_path, squad_config):
    """run_squad's IPU path (pipelined over 2 IPUs, device iterations 2, GA 5, 2 replicas) on the emulator
    ends with the same weights and dev predictions as CPU fine-tuning on the same samples."""
    import torch
    from safetensors.torch import load_file

    from groupbert.training.checkpoint import read_checkpoint
    data = write_nested(tmp_path / "squad.json")
    common = [f"squad.train_file={data}", f"squad.dev_file={data}", "train.micro_batch_size=1",
              "train.gradient_accumulation=5", "ipu.replication_factor=2", "train.checkpoint_every=2",
              "logging.log_every=2", "train.max_grad_norm=0", "schedule.name=constant", "schedule.warmup_steps=0",
              "optimizer.eps=1e-6"]
    finetune(squad_config(*common, "runtime.backend=cpu"), tmp_path / "cpu")
    finetune(squad_config(*common, "runtime.backend=ipu-model", "ipu.device_iterations=2", "ipu.layers_per_ipu=[1,1]"),
             tmp_path / "ipu")
    a = load_file(str(read_checkpoint(tmp_path / "cpu").path / "model.safetensors"))
    b = load_file(str(read_checkpoint(tmp_path / "ipu").path / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5, msg=k)
    assert json.loads((tmp_path / "cpu" / "predictions.json").read_text()) == \
        json.loads((tmp_path / "ipu" / "predictions.json").read_text())


def test_eval_every_keeps_the_best_checkpoint_and_eval_only_reproduces_it(tmp_path, capsys, squad_config):
    """SQuAD through the one engine: dev evaluation every train.eval_every steps, checkpoints/best at the
    best F1 (kept by the rotation), nbest_predictions.json, and --eval-only on the run and on the best
    checkpoint giving back exactly the EM/F1 and answers of those evaluations."""
    import run_squad
    from groupbert.cli import main

    data = write_nested(tmp_path / "squad.json")
    run = tmp_path / "run"
    results = finetune(squad_config(f"squad.train_file={data}", f"squad.dev_file={data}", "train.max_steps=6",
                                    "train.eval_every=2", "train.checkpoint_every=0", "train.keep_checkpoints=1",
                                    "optimizer.lr=5e-3", "schedule.warmup_steps=0"), run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 4, 6]
    assert all(isinstance(r["time"], float) for r in records)
    assert records[-1]["kind"] == "end" and records[-1]["status"] == "finished"
    best = max(evals[1:], key=lambda r: (r["eval_f1"], -r["step"]))   # the first of the best (ties keep it)
    assert (run / "checkpoints" / "best").read_text().strip() == f"step-{best['step']}"
    assert (run / "checkpoints" / f"step-{best['step']}").is_dir() and (run / "checkpoints" / "step-6").is_dir()
    assert records[-1]["best"] == {"metric": "eval_f1", "value": best["eval_f1"], "step": best["step"]}

    nbest = json.loads((run / "nbest_predictions.json").read_text())
    predictions = json.loads((run / "predictions.json").read_text())
    assert set(nbest) == set(predictions) == {f"q{i}" for i in range(1, 7)}
    for qid, answers in nbest.items():
        assert answers[0]["text"] == predictions[qid]
        assert abs(sum(a["probability"] for a in answers) - 1) < 1e-6
        assert set(answers[0]) == {"text", "probability", "start_logit", "end_logit"}

    def eval_only(*args):
        argv = ["--eval-only", *map(str, args), "--set", f"squad.dev_file={data}", "--quiet"]
        return main("squad", run_squad._finetune, argv, evaluate=run_squad._evaluate)

    assert eval_only(run) == 0
    again = json.loads((run / "eval-step-6" / "eval_results.json").read_text())
    assert (again["exact_match"], again["f1"]) == (results["exact_match"], results["f1"])
    assert json.loads((run / "eval-step-6" / "predictions.json").read_text()) == predictions
    assert eval_only(run / "checkpoints" / "best", "--output-dir", tmp_path / "best") == 0
    from_best = json.loads((tmp_path / "best" / "eval_results.json").read_text())
    assert (from_best["exact_match"], from_best["f1"]) == (best["eval_exact_match"], best["eval_f1"])
    assert eval_only(tmp_path / "nothing") == 2 and "does not exist" in capsys.readouterr().err
