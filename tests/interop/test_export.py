"""Models that leave the project and come back: ``python -m groupbert.export`` writes directories that
``transformers`` loads on its own (a subprocess that cannot import groupbert) with our logits and token ids,
and Hugging Face directories (or cached model ids) start our runs through ``train.init_checkpoint``."""
import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from groupbert.cli import exit_code_for
from groupbert.config import ConfigError, ModelConfig, save_config
from groupbert.data.causal_lm import BPEEncoder, load_gpt2_bpe
from groupbert.data.tokenizer import bundled_vocab_file, load_wordpiece
from groupbert.errors import BadInput
from groupbert.export import export, main, model_from_checkpoint
from groupbert.models import build_model
from groupbert.models.gpt2 import GPT2LMHeadModel
from groupbert.models.groupbert import GroupBertForPreTraining
from groupbert.models.qa import BertForQuestionAnswering
from groupbert.tasks.pretraining import pretrain
from groupbert.tasks.squad import finetune
from groupbert.training.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from groupbert.training.initialize import initialize

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5
BERT_TEXT = ["GroupBERT trains on IPUs: naïve Café résumé!", "The second segment has 12,345 tokens."]
QA_TEXT = ["Where does GroupBERT train?", "GroupBERT, a BERT with convolutions, trains on Graphcore IPUs in Bristol."]
GPT2_TEXT = ["GroupBERT trains on IPUs.\n\nThe second paragraph's text, 12,345 tokens."]
SQUAD = ["squad.doc_stride=16", "squad.max_query_length=16", "squad.epochs=null", "squad.max_train_examples=8",
         "squad.max_dev_examples=4", "train.micro_batch_size=4", "runtime.backend=cpu"]
SHORT = ["train.max_steps=2", "train.eval_at_start=false"]

# Runs in a process that must not (and cannot) import this project: only transformers, torch and numpy.
HF_SCRIPT = r'''
import importlib.abc, json, sys
from pathlib import Path


class NoProject(importlib.abc.MetaPathFinder):
    """Makes `import groupbert` fail even if the project were installed into this environment."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("groupbert", "custom_ops", "optimizers"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


sys.meta_path.insert(0, NoProject())
try:
    import groupbert  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("groupbert is importable in the transformers-only process")

import numpy as np
import torch
from transformers import (AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForPreTraining,
                          AutoModelForQuestionAnswering, AutoTokenizer)

AUTOS = {"pretraining": [AutoModelForPreTraining, AutoModelForMaskedLM], "qa": [AutoModelForQuestionAnswering],
         "causal_lm": [AutoModelForCausalLM]}
for job in json.loads(sys.argv[1]):
    src, out = job["dir"], Path(job["out"])
    tok = AutoTokenizer.from_pretrained(src)
    enc = tok(*job["text"], return_tensors="pt")
    report = {"tokenizer": type(tok).__name__, "input_ids": enc["input_ids"][0].tolist(),
              "token_type_ids": enc["token_type_ids"][0].tolist() if "token_type_ids" in enc else None}
    for auto in AUTOS[job["kind"]]:
        model, info = auto.from_pretrained(src, output_loading_info=True)
        model.eval()
        entry = {"class": type(model).__name__, **{k: sorted(map(str, info.get(k, []))) for k in
                                                   ("missing_keys", "unexpected_keys", "mismatched_keys")}}
        with torch.no_grad():
            outputs = model(**enc)
        for name in ("prediction_logits", "seq_relationship_logits", "logits", "start_logits", "end_logits"):
            value = getattr(outputs, name, None)
            if value is not None:
                np.save(out / f"{auto.__name__}.{name}.npy", value.float().numpy())
        if job["kind"] == "pretraining":
            entry["tied"] = (model.cls.predictions.decoder.weight.data_ptr()
                             == model.bert.embeddings.word_embeddings.weight.data_ptr())
        if job["kind"] == "causal_lm":
            entry["tied"] = model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
            generated = model.generate(**enc, max_new_tokens=3, do_sample=False)
            entry["generated"] = generated[0].tolist()
            entry["generation"] = {k: getattr(model.generation_config, k) for k in
                                   ("bos_token_id", "eos_token_id", "pad_token_id")}
        report[auto.__name__] = entry
    (out / "report.json").write_text(json.dumps(report))
assert not [m for m in sys.modules if m.split(".")[0] == "groupbert"]
'''


# --------------------------------------------------------------------------------------------------
# Runs and their exports (module-scoped: one set of runs for every test)

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def bert_run(work, tiny_config_at):
    """A tiny BERT MLM + NSP pretraining run (2 steps)."""
    pretrain(tiny_config_at(work, "model.type=bert", *SHORT), work / "bert")
    return work / "bert"


@pytest.fixture(scope="module")
def squad_run(work, tiny_config_at, tiny_model_overrides):
    """A tiny SQuAD fine-tuning of a BERT encoder (2 steps on 8 shipped questions)."""
    finetune(tiny_config_at(work, *tiny_model_overrides("bert", vocab_size=30522), *SQUAD, *SHORT), work / "squad")
    return work / "squad"


@pytest.fixture(scope="module")
def gpt2_run(work, tiny_config_at):
    """A tiny GPT-2 (configs/gpt2/tiny.yaml at the shared tiny size) on OpenAI's BPE, 32-token blocks."""
    pretrain(tiny_config_at(work, "model.max_positions=32", "data.seq_len=32", "train.eval_every=0",
                            "train.checkpoint_every=0", *SHORT, config=ROOT / "configs/gpt2/tiny.yaml"), work / "gpt2")
    return work / "gpt2"


@pytest.fixture(scope="module")
def hf_outputs(work, bert_run, squad_run, gpt2_run):
    """Export the three runs, then load each with transformers alone; {kind: (export dir, report)}."""
    jobs = []
    for kind, run, text in (("pretraining", bert_run, BERT_TEXT), ("qa", squad_run, QA_TEXT),
                            ("causal_lm", gpt2_run, GPT2_TEXT)):
        out = work / f"hf_{kind}"
        out.mkdir()
        jobs.append({"kind": kind, "dir": str(export(run, work / f"export_{kind}")), "out": str(out), "text": text})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", HF_SCRIPT, json.dumps(jobs)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {job["kind"]: (Path(job["dir"]), Path(job["out"]),
                          json.loads((Path(job["out"]) / "report.json").read_text())) for job in jobs}


def _max_diff(ours: torch.Tensor, theirs_file: Path, label: str) -> float:
    theirs = np.load(theirs_file)
    assert ours.shape == theirs.shape, (label, ours.shape, theirs.shape)
    assert np.abs(theirs).max() > 1e-3, label   # real logits, not an empty output
    diff = float(np.abs(ours.detach().float().numpy() - theirs).max())
    print(f"{label}: max |ours - transformers| = {diff:.3g}")
    assert diff <= TOLERANCE, (label, diff)
    return diff


# --------------------------------------------------------------------------------------------------
# Export


def test_bert_pretraining_export_loads_as_pretraining_and_masked_lm(bert_run, hf_outputs):
    directory, out, report = hf_outputs["pretraining"]
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["BertForPreTraining"] and config["model_type"] == "bert"
    assert json.loads((directory / "tokenizer_config.json").read_text())["do_lower_case"] is True
    assert (directory / "vocab.txt").read_bytes() == bundled_vocab_file().read_bytes()
    pre, mlm = report["AutoModelForPreTraining"], report["AutoModelForMaskedLM"]
    assert pre["class"] == "BertForPreTraining" and mlm["class"] == "BertForMaskedLM"
    assert pre["missing_keys"] == pre["unexpected_keys"] == pre["mismatched_keys"] == []
    assert mlm["missing_keys"] == mlm["mismatched_keys"] == []   # pooler and NSP head: unexpected there, unused
    assert all(k.startswith(("bert.pooler.", "cls.seq_relationship.")) for k in mlm["unexpected_keys"])
    assert pre["tied"] and mlm["tied"]   # HF re-ties the decoder the file leaves out

    encoding = load_wordpiece(bundled_vocab_file(), lowercase=True).encode(*BERT_TEXT)
    assert report["input_ids"] == encoding.ids and report["token_type_ids"] == encoding.type_ids
    model = model_from_checkpoint(read_checkpoint(bert_run))
    with torch.no_grad():
        ours = model(torch.tensor([encoding.ids]), torch.tensor([encoding.type_ids]))
    _max_diff(ours.mlm_logits, out / "AutoModelForPreTraining.prediction_logits.npy", "BERT MLM logits")
    _max_diff(ours.nsp_logits, out / "AutoModelForPreTraining.seq_relationship_logits.npy", "BERT NSP logits")
    _max_diff(ours.mlm_logits, out / "AutoModelForMaskedLM.logits.npy", "BERT MaskedLM logits")


def test_squad_export_loads_as_question_answering(squad_run, hf_outputs):
    directory, out, report = hf_outputs["qa"]
    assert json.loads((directory / "config.json").read_text())["architectures"] == ["BertForQuestionAnswering"]
    qa = report["AutoModelForQuestionAnswering"]
    assert qa["class"] == "BertForQuestionAnswering"
    assert qa["missing_keys"] == qa["unexpected_keys"] == qa["mismatched_keys"] == []
    encoding = load_wordpiece(bundled_vocab_file(), lowercase=True).encode(*QA_TEXT)
    assert report["input_ids"] == encoding.ids and report["token_type_ids"] == encoding.type_ids
    model = model_from_checkpoint(read_checkpoint(squad_run))
    assert isinstance(model, BertForQuestionAnswering)
    with torch.no_grad():
        ours = model(torch.tensor([encoding.ids]), torch.tensor([encoding.type_ids]))
    _max_diff(ours.start_logits, out / "AutoModelForQuestionAnswering.start_logits.npy", "QA start logits")
    _max_diff(ours.end_logits, out / "AutoModelForQuestionAnswering.end_logits.npy", "QA end logits")


def test_gpt2_export_loads_as_causal_lm_and_generates(gpt2_run, hf_outputs):
    directory, out, report = hf_outputs["causal_lm"]
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["eos_token_id"] == 50256
    assert {p.name for p in directory.iterdir()} >= {"vocab.json", "merges.txt", "tokenizer.json",
                                                     "generation_config.json", "model.safetensors"}
    lm = report["AutoModelForCausalLM"]
    assert lm["class"] == "GPT2LMHeadModel" and lm["tied"]
    assert lm["missing_keys"] == lm["unexpected_keys"] == lm["mismatched_keys"] == []
    assert lm["generation"] == {"bos_token_id": 50256, "eos_token_id": 50256, "pad_token_id": 50256}
    ids = load_gpt2_bpe().encode(GPT2_TEXT[0]).ids
    assert report["input_ids"] == ids == BPEEncoder().encode(GPT2_TEXT)[0]   # tiktoken prepared the data
    model = model_from_checkpoint(read_checkpoint(gpt2_run))
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    _max_diff(logits, out / "AutoModelForCausalLM.logits.npy", "GPT-2 logits")
    assert lm["generated"][:len(ids)] == ids and len(lm["generated"]) == len(ids) + 3
    assert lm["generated"][len(ids)] == int(logits[0, -1].argmax())   # greedy: HF's next token is ours


def test_export_cli_is_atomic_and_refuses_bad_input(bert_run, work, capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main([str(bert_run), "--output", str(out), "--quiet"]) == 2   # not empty, no --overwrite
    assert "--output" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert main([str(tmp_path / "no-run"), "--output", str(tmp_path / "x"), "--quiet"]) == 2
    assert str(tmp_path / "no-run") in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main([str(bert_run / "checkpoints" / "step-2"), "--output", str(out), "--overwrite", "--quiet"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]   # no DIR.tmp-PID or DIR.old-PID left behind
    with pytest.raises(SystemExit) as e:   # no abbreviations
        main([str(bert_run), "--output", str(out), "--over"])
    assert e.value.code == 2
    capsys.readouterr()


def test_cased_vocabulary_exports_a_cased_tokenizer(tmp_path):
    from groupbert.interop.tokenizer_files import write_wordpiece

    write_wordpiece(tmp_path, bundled_vocab_file(), lowercase=False, model_max_length=64)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["do_lower_case"] is False
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = "Café GroupBERT"
    assert hf(text)["input_ids"] == load_wordpiece(bundled_vocab_file(), lowercase=False).encode(text).ids


def test_groupbert_exports_in_optimum_layout_and_comes_back(tmp_path, tiny_config, tiny_model_config):
    """A GroupBERT checkpoint (random weights) -> optimum-graphcore's layout -> train.init_checkpoint."""
    cfg = tiny_model_config("groupbert", vocab_size=30522)
    torch.manual_seed(3)
    model = GroupBertForPreTraining(cfg)
    run = tmp_path / "run"
    save_checkpoint(run, 1, model, None, {"task": "mlm_nsp", "model_config": dataclasses.asdict(cfg)})
    save_config(tiny_config("model.type=groupbert"), run / "config.yaml")
    directory = export(run, tmp_path / "exported")
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "groupbert" and config["architectures"] == ["GroupBertForPreTraining"]
    assert (directory / "vocab.txt").is_file() and (directory / "tokenizer.json").is_file()
    back = GroupBertForPreTraining(cfg)
    assert initialize(back, str(directory)).startswith("hf:")
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


# --------------------------------------------------------------------------------------------------
# Import: Hugging Face directories and cached model ids as train.init_checkpoint


def _hf_bert_config(m: ModelConfig, **kw):
    return transformers.BertConfig(vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
                                   num_attention_heads=m.num_heads, intermediate_size=m.intermediate_size,
                                   max_position_embeddings=m.max_positions, **kw)


def test_hf_bert_starts_a_pretraining_run(bert_run, work, tiny_config_at, tmp_path):
    """A transformers BertForPreTraining (random weights) as train.init_checkpoint of a 1-step run at lr 1e-6:
    every weight of the run's checkpoint is HF's, moved by at most one Adam step (|update| <= lr)."""
    cfg = model_from_checkpoint(read_checkpoint(bert_run)).config   # the tiny run's BERT
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(_hf_bert_config(cfg)).eval()
    hf.save_pretrained(tmp_path / "hf")
    run = tmp_path / "run"
    pretrain(tiny_config_at(work, "model.type=bert", f"train.init_checkpoint={tmp_path / 'hf'}", "train.max_steps=1",
                            "optimizer.lr=1e-6", "train.eval_at_start=false"), run)
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["init_checkpoint"] == f"hf:{tmp_path / 'hf'}"
    ours = model_from_checkpoint(read_checkpoint(run)).state_dict()
    theirs = hf.state_dict()
    worst = max(float((ours[k] - theirs[k]).abs().max()) for k in ours)
    print(f"init from HF BertForPreTraining, after one step at lr 1e-6: max |ours - HF| = {worst:.3g}")
    assert worst <= 2e-6
    assert float((theirs["cls.seq_relationship.weight"]).abs().max()) > 1e-3   # HF's init, not zeros


def test_hf_layouts_start_the_parts_that_fit(tiny_model_config, tmp_path, caplog):
    cfg = tiny_model_config("bert")
    hf_cfg = _hf_bert_config(cfg)
    torch.manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (2, 9))

    transformers.BertForMaskedLM(hf_cfg).save_pretrained(tmp_path / "mlm")   # no pooler, no NSP head
    model = build_model(cfg)
    nsp_before = model.cls.seq_relationship.weight.clone()
    with caplog.at_level(logging.INFO, logger="groupbert"):
        initialize(model, str(tmp_path / "mlm"))
    assert "new: pooler, NSP head" in caplog.text
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path / "mlm").eval()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids).mlm_logits, hf(ids).logits, atol=TOLERANCE, rtol=0)
    assert torch.equal(model.cls.seq_relationship.weight, nsp_before)

    transformers.BertForQuestionAnswering(hf_cfg).save_pretrained(tmp_path / "qa")
    qa = BertForQuestionAnswering(cfg)
    initialize(qa, str(tmp_path / "qa"))
    hf = transformers.BertForQuestionAnswering.from_pretrained(tmp_path / "qa").eval()
    with torch.no_grad():
        torch.testing.assert_close(qa.eval()(ids).start_logits, hf(ids).start_logits, atol=TOLERANCE, rtol=0)
    initialize(build_model(cfg), str(tmp_path / "qa"))   # pretraining from a QA model: the encoder only

    with pytest.raises(ConfigError, match="model.num_layers"):   # the first differing key is named
        initialize(build_model(dataclasses.replace(cfg, num_layers=1)), str(tmp_path / "qa"))
    (tmp_path / "qa" / "model.safetensors").rename(tmp_path / "qa" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickled weights are never loaded"):
        initialize(qa, str(tmp_path / "qa"))


@pytest.mark.parametrize("layout", ["GPT2LMHeadModel", "GPT2Model"])
def test_hf_gpt2_starts_our_gpt2(tiny_model_config, tmp_path, layout):
    cfg = tiny_model_config("gpt2")
    hf_cfg = transformers.GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_positions, n_embd=cfg.hidden_size,
                                     n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.intermediate_size,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    lm = transformers.GPT2LMHeadModel(hf_cfg).eval()
    (lm.transformer if layout == "GPT2Model" else lm).save_pretrained(tmp_path / "hf")
    model = GPT2LMHeadModel(cfg)
    initialize(model, str(tmp_path / "hf"))
    ids = torch.randint(0, cfg.vocab_size, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids).logits, lm(ids).logits, atol=TOLERANCE, rtol=0)


def test_model_id_comes_from_the_local_cache_only(tiny_model_config, tmp_path, monkeypatch):
    cfg = tiny_model_config("bert")
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--tiny-org--tiny-bert"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    transformers.BertModel(_hf_bert_config(cfg), add_pooling_layer=False).save_pretrained(repo / "snapshots" / commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    qa = BertForQuestionAnswering(cfg)
    assert initialize(qa, "tiny-org/tiny-bert") == f"hf:{repo / 'snapshots' / commit}"
    with pytest.raises(CheckpointError) as e:
        initialize(qa, "tiny-org/not-downloaded")
    message = str(e.value)
    assert "tiny-org/not-downloaded" in message and str(cache) in message and "network" in message
    assert isinstance(e.value, BadInput) and exit_code_for(e.value, logging.getLogger("test")) == 2
