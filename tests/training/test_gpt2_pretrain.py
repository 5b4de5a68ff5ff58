"""GPT-2 causal-LM pretraining through the shared loop: metrics, exact resume, tied weights in
checkpoints, the IPU emulator path, and the GPT-2 recipes parse."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from groupbert.config import load_config
from groupbert.data import load_corpus
from groupbert.data.causal_lm import train_bpe
from groupbert.training.checkpoint import read_checkpoint
from groupbert.tasks.pretraining import pretrain

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A 512-token BPE keeps the tiny model's output layer cheap (GPT-2's own has 50257 tokens)."""
    encoder, _ = train_bpe(load_corpus("wikipedia", max_documents=6), 512, tmp_path_factory.mktemp("bpe"))
    return encoder


@pytest.fixture(scope="module")
def run_config(tiny_config_at, bpe):
    """``run_config(directory, *extra)``: configs/gpt2/tiny.yaml under the shared tiny run (conftest.py) on two
    layers, the 512-token BPE and 32-token blocks, and ``extra``; the cache under ``directory``."""
    def make(directory, *extra):
        return tiny_config_at(directory, f"data.vocab_file={bpe}", "model.vocab_size=512", "model.num_layers=2",
                              "model.max_positions=32", "data.seq_len=32", "train.max_steps=10",
                              "train.checkpoint_every=5", "train.keep_checkpoints=0", "train.eval_every=0",
                              "optimizer.lr=3e-3", *extra, config=ROOT / "configs/gpt2/tiny.yaml")
    return make


def _records(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == kind]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, run_config):
    tmp = tmp_path_factory.mktemp("gpt2")
    pretrain(run_config(tmp), tmp / "run")
    return tmp, tmp / "run"


def test_causal_lm_run_writes_the_contract(reference_run):
    _, run = reference_run
    train = _records(run, "train")
    assert [r["step"] for r in train] == list(range(1, 11))
    assert all(isinstance(r[k], float) for r in train for k in ("loss", "acc", "lr", "tokens_per_s"))
    evals = _records(run, "eval")
    assert [r["step"] for r in evals] == [0, 10]
    assert evals[0]["eval_loss"] == pytest.approx(torch.log(torch.tensor(512.0)).item(), abs=0.3)  # ~uniform at init
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.25
    assert evals[-1]["eval_ppl"] == pytest.approx(torch.exp(torch.tensor(evals[-1]["eval_loss"])).item(), rel=1e-5)


def test_checkpoint_keeps_the_tied_head(reference_run):
    from groupbert.models import build_model
    from groupbert.training.checkpoint import load_model_weights

    tmp, run = reference_run
    ckpt = read_checkpoint(run)
    model = build_model(load_config(run / "config.yaml").model)
    load_model_weights(model, ckpt)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert ckpt.state["model_config"]["type"] == "gpt2"


def test_resume_reproduces_the_uninterrupted_losses(reference_run, run_config, tmp_path):
    tmp, run = reference_run
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / "step-5", cut / "checkpoints" / "step-5")
    (cut / "checkpoints" / "latest").write_text("step-5\n")
    shutil.copy(run / "config.yaml", cut / "config.yaml")
    pretrain(run_config(tmp), cut, resume=True)
    full = {r["step"]: r["loss"] for r in _records(run, "train")}
    resumed = {r["step"]: r["loss"] for r in _records(cut, "train")}
    for step in range(6, 11):
        assert resumed[step] == pytest.approx(full[step], rel=1e-6, abs=1e-6), step


def test_gpt2_trains_on_the_ipu_emulator_pipeline(run_config, tmp_path):
    run = tmp_path / "ipu"
    pretrain(run_config(tmp_path, "runtime.backend=ipu-model", "ipu.layers_per_ipu=[1,1]", "train.micro_batch_size=2",
                        "train.gradient_accumulation=5", "train.max_grad_norm=0", "train.max_steps=2",
                        "train.checkpoint_every=0"), run)
    train = _records(run, "train")
    assert [r["step"] for r in train] == [1, 2] and all(0 <= r["acc"] <= 1 for r in train)


@pytest.mark.parametrize("name", ["124m", "tiny"])
def test_gpt2_recipes_parse(name):
    cfg = load_config(ROOT / f"configs/gpt2/{name}.yaml")
    assert cfg.model.type == "gpt2" and cfg.model.vocab_size == 50257
    assert cfg.optimizer.weight_decay == 0.1 and (cfg.optimizer.beta1, cfg.optimizer.beta2) == (0.9, 0.95)
    assert cfg.schedule.name == "trapezoidal" and cfg.schedule.cooldown_fraction == 0.5
    if name == "124m":
        assert cfg.global_batch_size == 480 and cfg.data.seq_len == 1024 and cfg.train.max_steps == 5000
