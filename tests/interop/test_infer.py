"""``python -m groupbert.infer``: fill-mask, extractive QA and generation on our runs and on Hugging Face
directories converted from them, against transformers (its fill-mask pipeline, ``generate``; transformers
5 has no question-answering pipeline, so QA is checked against its tokenizer's windows and model with
the v4 pipeline's span rule and HF ``run_qa.py``'s rule written out here) and against ``--eval-only``."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from groupbert.data import bundled_vocab_file, load_wordpiece
from groupbert.data.causal_lm import load_gpt2_bpe
from groupbert.infer import Sampling, fill_mask, generate, load, main, warp_logits
from groupbert.models.bert import to_hf_config as bert_hf_config
from groupbert.models.gpt2 import to_hf_config as gpt2_hf_config
from groupbert.models.gpt2 import to_hf_state_dict as gpt2_hf_state_dict
from groupbert.squad.dataset import shipped_file
from groupbert.squad.evaluate import score
from groupbert.training.checkpoint import read_checkpoint

transformers = pytest.importorskip("transformers")

# tests/squad/conftest.py's tiny fine-tuning run (SQUAD there) on 16 training questions, evaluated on 8 (the
# whole dev file is --eval-only's, below)
SQUAD = ["squad.doc_stride=16", "squad.max_query_length=16", "squad.epochs=null", "train.max_steps=2",
         "train.micro_batch_size=4", "squad.max_train_examples=16", "squad.max_dev_examples=8",
         "train.eval_at_start=false", "runtime.backend=cpu"]
RUN = ["train.max_steps=2", "train.eval_at_start=false", "runtime.backend=cpu"]
EOT = 50256   # GPT-2's <|endoftext|>

TEXTS = ["the capital of france is [MASK].",
         "[MASK] was born in a small town and later moved to the city where she studied history.",
         "a [MASK] and a [MASK] walked into a bar."]                      # two masks: a list per mask
CONTEXT = "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was designed by Gustave Eiffel's company."
LONG = ("Alan Turing was an English mathematician, computer scientist, logician, cryptanalyst, philosopher and "
        "theoretical biologist. He was highly influential in the development of theoretical computer science, "
        "providing a formalisation of the concepts of algorithm and computation with the Turing machine. During "
        "the Second World War, Turing worked for the Government Code and Cypher School at Bletchley Park, where "
        "he devised techniques for speeding the breaking of German ciphers. After the war he worked at the "
        "National Physical Laboratory, where he designed the Automatic Computing Engine.")
QUESTIONS = [("Where is the tower?", CONTEXT), ("Who designed it?", CONTEXT), ("Where did Turing work?", LONG)]
PROMPTS = ["The history of", "In 1990, the city council decided that", "A"]


def cli(*argv, tmp_path, name="out.jsonl"):
    out = tmp_path / name
    assert main([*map(str, argv), "--device", "cpu", "--output", str(out), "--quiet"]) == 0
    text = out.read_text()
    return json.loads(text) if name.endswith(".json") else [json.loads(line) for line in text.splitlines()]


def cli_fails(*argv, capsys) -> str:
    assert main([*map(str, argv), "--device", "cpu"]) == 2
    return capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Runs and their Hugging Face twins


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("infer")


@pytest.fixture(scope="module")
def bert_run(runs_dir, tiny_config_at):
    from groupbert.tasks.pretraining import pretrain
    pretrain(tiny_config_at(runs_dir, "model.type=bert", *RUN), runs_dir / "bert")
    return runs_dir / "bert"


def _wordpiece_tokenizer():
    """BertTokenizerFast over our tokenizer object (``vocab_file=`` builds a wrong one in transformers 5)."""
    return transformers.BertTokenizerFast(tokenizer_object=load_wordpiece(bundled_vocab_file()))


@pytest.fixture(scope="module")
def bert_hf(bert_run, runs_dir):
    """Our BertForPreTraining's weights in transformers.BertForMaskedLM (same names; no pooler, no NSP head)."""
    ckpt = read_checkpoint(bert_run)
    from groupbert.config import ModelConfig
    hf = transformers.BertForMaskedLM(bert_hf_config(ModelConfig(**ckpt.state["model_config"])))
    ours = load_file(str(ckpt.path / "model.safetensors"))
    missing, unexpected = hf.load_state_dict({k: v for k, v in ours.items() if k.startswith(("bert.", "cls."))},
                                             strict=False)
    assert set(missing) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}   # tied in HF
    assert set(unexpected) <= {"bert.pooler.dense.weight", "bert.pooler.dense.bias",
                               "cls.seq_relationship.weight", "cls.seq_relationship.bias"}
    out = runs_dir / "bert_hf"
    hf.save_pretrained(out)
    _wordpiece_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def squad_run(runs_dir, tiny_config_at, tiny_model_overrides):
    from groupbert.tasks.squad import finetune
    cfg = tiny_config_at(runs_dir, *tiny_model_overrides("bert", vocab_size=30522), *SQUAD)
    finetune(cfg, runs_dir / "squad")
    return runs_dir / "squad"


@pytest.fixture(scope="module")
def squad_hf(squad_run, runs_dir):
    from groupbert.config import ModelConfig
    ckpt = read_checkpoint(squad_run)
    hf = transformers.BertForQuestionAnswering(bert_hf_config(ModelConfig(**ckpt.state["model_config"])))
    hf.load_state_dict(load_file(str(ckpt.path / "model.safetensors")), strict=True)   # same names, no pooler
    out = runs_dir / "squad_hf"
    hf.save_pretrained(out)
    _wordpiece_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gpt2_run(runs_dir, tiny_config_at):
    from groupbert.tasks.pretraining import pretrain
    pretrain(tiny_config_at(runs_dir, "model.type=gpt2", "model.vocab_size=50257", "model.max_positions=64",
                            "data.seq_len=32", *RUN), runs_dir / "gpt2")
    return runs_dir / "gpt2"


@pytest.fixture(scope="module")
def gpt2_hf(gpt2_run, runs_dir):
    ckpt = read_checkpoint(gpt2_run)
    ours = load(gpt2_run, "generate").model
    hf = transformers.GPT2LMHeadModel(gpt2_hf_config(ours.config))
    hf.load_state_dict(gpt2_hf_state_dict(ours), strict=True)
    out = runs_dir / "gpt2_hf"
    hf.save_pretrained(out)
    transformers.GPT2TokenizerFast(tokenizer_object=load_gpt2_bpe()).save_pretrained(out)
    assert ckpt.state["task"] == "causal_lm"
    return out


# --------------------------------------------------------------------------------------------------
# fill-mask


def test_fill_mask_equals_hf_pipeline_on_the_run_and_on_the_hf_directory(bert_run, bert_hf, tmp_path):
    pipe = transformers.pipeline("fill-mask", model=str(bert_hf), device="cpu")
    reference = [pipe(t, top_k=5) for t in TEXTS]
    worst = 0.0
    for model in (bert_run, bert_hf):
        got = cli("fill-mask", model, *TEXTS, "--top-k", 5, "--batch-size", 2, tmp_path=tmp_path)
        assert [g["text"] for g in got] == TEXTS
        for g, ref in zip(got, reference):
            ours = g["predictions"]
            flat_ours = ours if isinstance(ours[0], dict) else [p for row in ours for p in row]
            flat_ref = ref if isinstance(ref[0], dict) else [p for row in ref for p in row]
            assert isinstance(ours[0], dict) == isinstance(ref[0], dict)   # one mask: a list; several: lists
            assert [(p["token"], p["token_str"], p["sequence"]) for p in flat_ours] == \
                   [(p["token"], p["token_str"], p["sequence"]) for p in flat_ref]
            diff = max(abs(a["score"] - b["score"]) / b["score"] for a, b in zip(flat_ours, flat_ref))
            worst = max(worst, diff)
            assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(flat_ours, flat_ref))
    assert worst < 1e-4, worst   # relative: a 2-step model's probabilities are ~1e-4


@pytest.fixture(scope="module")
def groupbert_run(runs_dir, tiny_config_at):
    from groupbert.tasks.pretraining import pretrain
    pretrain(tiny_config_at(runs_dir, "model.type=groupbert", *RUN), runs_dir / "groupbert")
    return runs_dir / "groupbert"


def test_fill_mask_batched_equals_one_at_a_time_on_groupbert(groupbert_run):
    """GroupBERT's convolution must not see the padding of a batch."""
    model = load(groupbert_run, "fill-mask")
    batched, single = fill_mask(model, TEXTS, batch_size=3), fill_mask(model, TEXTS, batch_size=1)
    for b, s in zip(batched, single):
        fb = [p for row in b for p in (row if isinstance(row, list) else [row])]
        fs = [p for row in s for p in (row if isinstance(row, list) else [row])]
        assert [p["token"] for p in fb] == [p["token"] for p in fs]
        assert max(abs(x["score"] - y["score"]) for x, y in zip(fb, fs)) < 1e-7


def test_the_shipped_minilm_has_no_heads_and_is_refused(capsys):
    from groupbert.training.initialize import minilm_dir
    err = cli_fails("fill-mask", minilm_dir(), "a [MASK].", capsys=capsys)
    assert "no fill-mask head" in err and "BertModel" in err and "cls.predictions" in err
    err = cli_fails("qa", minilm_dir(), "--question", "q", "--context", "c", capsys=capsys)
    assert "no qa head" in err and "qa_outputs" in err


# --------------------------------------------------------------------------------------------------
# Extractive QA


def hf_reference(hf_dir, question, context, seq_len, stride, max_answer_len, n_best=20):
    """HF's tokenizer windows (``stride`` = overlap) and HF's model, with two span rules: transformers 4's
    question-answering pipeline (per window softmax over the context and [CLS], score p_start * p_end, best
    score over windows) and ``run_qa.py``'s ``postprocess_qa_predictions`` (best start + end logit over the
    n_best starts and ends of every window). Returns (pipeline answer, run_qa answer, windows)."""
    tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(str(hf_dir)).eval()
    enc = tok(question, context, truncation="only_second", max_length=seq_len, stride=stride,
              return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")
    with torch.no_grad():
        out = model(input_ids=torch.tensor(enc["input_ids"]), token_type_ids=torch.tensor(enc["token_type_ids"]),
                    attention_mask=torch.tensor(enc["attention_mask"]))
    pipe, runqa = [], []
    for w in range(len(enc["input_ids"])):
        start, end = out.start_logits[w].numpy(), out.end_logits[w].numpy()
        offsets = enc["offset_mapping"][w]
        context_tok = np.array([s == 1 for s in enc.sequence_ids(w)])
        keep = context_tok.copy()
        keep[0] = True   # the pipeline's p_mask leaves [CLS] in the softmax, then zeroes its probability
        ps = np.where(keep, start, -10000.0)
        pe = np.where(keep, end, -10000.0)
        ps, pe = np.exp(ps - ps.max()), np.exp(pe - pe.max())
        ps, pe = ps / ps.sum(), pe / pe.sum()
        ps[0] = pe[0] = 0.0
        outer = np.tril(np.triu(ps[:, None] * pe[None, :]), max_answer_len - 1)
        s, e = np.unravel_index(np.argmax(outer), outer.shape)
        pipe.append((float(outer[s, e]), offsets[s][0], offsets[e][1]))
        for s in np.argsort(start)[::-1][:n_best]:
            for e in np.argsort(end)[::-1][:n_best]:
                if context_tok[s] and context_tok[e] and s <= e < s + max_answer_len:
                    runqa.append((float(start[s] + end[e]), offsets[s][0], offsets[e][1]))
    best_pipe = max(pipe, key=lambda c: c[0])   # first window wins a tie, as sorted() in both
    best_runqa = max(runqa, key=lambda c: c[0])
    return ((context[best_pipe[1]:best_pipe[2]], best_pipe[1], best_pipe[2]),
            (context[best_runqa[1]:best_runqa[2]], best_runqa[1], best_runqa[2]), enc)


def test_qa_answers_equal_hf_model_and_tokenizer_on_run_and_hf_directory(squad_run, squad_hf, tmp_path):
    args = ["--top-k", 3, "--batch-size", 2]
    for q, c in QUESTIONS:
        args += ["--question", q, "--context", c]
    on_run = cli("qa", squad_run, *args, tmp_path=tmp_path)
    on_hf = cli("qa", squad_hf, *args, "--max-seq-length", 64, "--doc-stride", 16, "--max-query-length", 16,
                tmp_path=tmp_path)
    for r, h in zip(on_run, on_hf):   # the same spans and scores from our model and from HF's
        assert [(a["answer"], a["start"], a["end"]) for a in r["answers"]] == \
               [(a["answer"], a["start"], a["end"]) for a in h["answers"]]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(r["answers"], h["answers"])) < 1e-5
        assert max(abs(a["start_logit"] - b["start_logit"]) for a, b in zip(r["answers"], h["answers"])) < 1e-5
    windows = []
    for (q, c), got in zip(QUESTIONS, on_run):
        best = got["answers"][0]
        assert c[best["start"]:best["end"]] == best["answer"] and best["answer"]
        pipe, runqa, enc = hf_reference(squad_hf, q, c, seq_len=64, stride=16, max_answer_len=30)
        windows.append(len(enc["input_ids"]))
        assert (best["answer"], best["start"], best["end"]) == runqa   # HF run_qa.py's rule: our evaluation's
        if windows[-1] == 1:   # one window: p_start * p_end ranks spans as start + end logits do
            assert (best["answer"], best["start"], best["end"]) == pipe
    assert windows[0] == windows[1] == 1 and windows[2] > 2   # the long context spans several windows


def test_qa_windows_equal_hf_tokenizer_overflow(squad_hf):
    """Our features (groupbert.squad.features) are HF's ``stride`` windows token for token."""
    from groupbert.squad.features import build_features
    q, c = QUESTIONS[2]
    features = build_features([{"question": q, "context": c}], load_wordpiece(bundled_vocab_file()), seq_len=64,
                              doc_stride=16, max_query_length=16, training=False)
    _, _, enc = hf_reference(squad_hf, q, c, seq_len=64, stride=16, max_answer_len=30)
    assert features.input_ids.tolist() == enc["input_ids"]
    assert features.token_type_ids.tolist() == enc["token_type_ids"]


def test_squad_file_equals_eval_only(squad_run, tmp_path):
    """--squad-file on the project's dev file: run_squad.py --eval-only's predictions, EM and F1."""
    import run_squad
    from groupbert.cli import main as cli_main
    from groupbert.tasks.squad import evaluate, finetune
    assert cli_main(run_squad.__doc__, finetune, ["--eval-only", str(squad_run), "--set", "squad.max_dev_examples=null",
                                                   "--output-dir", str(tmp_path / "eval"), "--quiet"],
                    evaluate=evaluate) == 0
    expected = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    predictions = cli("qa", squad_run, "--squad-file", shipped_file("dev"), "--batch-size", 16,
                      tmp_path=tmp_path, name="predictions.json")
    assert predictions == expected and len(predictions) == 90
    dev = json.loads(shipped_file("dev").read_text())["data"]
    references = {qa["id"]: [a["text"] for a in qa["answers"]] for a in dev for p in a["paragraphs"] for qa in p["qas"]}
    scores = score(references, predictions)
    assert scores["exact_match"] == results["exact_match"] and scores["f1"] == results["f1"]
    assert results["dev_questions"] == 90


def test_squad_file_without_answers_is_answered(squad_run, tmp_path):
    dev = json.loads(shipped_file("dev").read_text())
    for article in dev["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                del qa["answers"]
    dev["data"] = dev["data"][:1]
    unlabelled = tmp_path / "questions.json"
    unlabelled.write_text(json.dumps(dev))
    predictions = cli("qa", squad_run, "--squad-file", unlabelled, tmp_path=tmp_path, name="p.json")
    assert set(predictions) == {qa["id"] for p in dev["data"][0]["paragraphs"] for qa in p["qas"]}


# --------------------------------------------------------------------------------------------------
# Generation


@pytest.fixture(scope="module")
def hf_generate(gpt2_hf):
    """``generate(prompts, **kwargs)``: HF ``generate`` on a left-padded batch; each row's new tokens up to
    end-of-text."""
    tok = transformers.AutoTokenizer.from_pretrained(str(gpt2_hf))
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gpt2_hf)).eval()

    def run(prompts, **kwargs):
        enc = tok(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**enc, pad_token_id=EOT, eos_token_id=EOT, max_new_tokens=8, **kwargs)
        rows = out[:, enc["input_ids"].shape[1]:].tolist()
        return [r[:r.index(EOT)] if EOT in r else r for r in rows]
    return run


def test_greedy_equals_hf_generate_and_batched_equals_one_at_a_time(gpt2_run, gpt2_hf, hf_generate, tmp_path):
    reference = [hf_generate([p], do_sample=False)[0] for p in PROMPTS]
    args = [a for p in PROMPTS for a in ("--prompt", p)] + ["--greedy", "--max-new-tokens", 8]
    on_hf = cli("generate", gpt2_hf, *args, "--batch-size", 2, tmp_path=tmp_path)
    ours = load(gpt2_run, "generate")
    batched = generate(ours, PROMPTS, 8, Sampling(greedy=True), batch_size=3)
    single = generate(ours, PROMPTS, 8, Sampling(greedy=True), batch_size=1)
    cold = generate(ours, PROMPTS, 8, Sampling(temperature=0.0), seed=3, batch_size=3)   # temperature 0: greedy
    assert [g["token_ids"] for g in batched] == [g["token_ids"] for g in single] == \
           [g["token_ids"] for g in on_hf] == [g["token_ids"] for g in cold] == reference
    assert batched == single and [g["generated_text"] for g in batched] == [g["generated_text"] for g in on_hf]
    assert all(g["generated_text"] == g["prompt"] + g["completion"] for g in batched)


def test_seeded_sampling_is_reproducible_and_equals_hf_generate(gpt2_run, gpt2_hf, hf_generate, tmp_path):
    torch.manual_seed(11)
    reference = hf_generate(PROMPTS, do_sample=True, temperature=0.7, top_k=40, top_p=0.9)
    args = [a for p in PROMPTS for a in ("--prompt", p)] + ["--max-new-tokens", 8, "--temperature", 0.7,
                                                            "--top-k", 40, "--top-p", 0.9, "--batch-size", 3]
    first = cli("generate", gpt2_run, *args, "--seed", 11, tmp_path=tmp_path)
    on_hf = cli("generate", gpt2_hf, *args, "--seed", 11, tmp_path=tmp_path)
    ours, sampling = load(gpt2_run, "generate"), Sampling(temperature=0.7, top_k=40, top_p=0.9)
    again = generate(ours, PROMPTS, 8, sampling, seed=11, batch_size=3)
    other = generate(ours, PROMPTS, 8, sampling, seed=12, batch_size=3)
    assert first == again and first != other
    assert [g["token_ids"] for g in first] == [g["token_ids"] for g in on_hf] == reference


def test_warpers_equal_hf_and_restrict_the_distribution():
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1000, generator=g) * 3
    s = Sampling(temperature=0.7, top_k=50, top_p=0.8)
    ref = logits
    for w in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(50), TopPLogitsWarper(0.8)):
        ref = w(None, ref)
    assert torch.equal(warp_logits(logits, s), ref)
    top_k = warp_logits(logits, Sampling(top_k=7))
    assert (torch.isfinite(top_k).sum(-1) == 7).all()
    top_p = warp_logits(logits, Sampling(top_p=0.5))
    kept = torch.isfinite(top_p)
    mass = torch.where(kept, logits.softmax(-1), 0.0).sum(-1)
    assert (mass >= 0.5).all()   # the smallest set with at least p: without its least likely token, < p
    least = torch.where(kept, logits.softmax(-1), 2.0).min(-1).values
    assert (mass - least < 0.5).all()


# --------------------------------------------------------------------------------------------------
# Directories written by python -m groupbert.export


def test_exported_directories_answer_as_their_runs(bert_run, squad_run, gpt2_run, groupbert_run, runs_dir, tmp_path,
                                                   capsys):
    export = pytest.importorskip("groupbert.export")
    for run, argv in ((bert_run, ["fill-mask", *TEXTS, "--top-k", 3]),
                      (squad_run, ["qa", "--question", QUESTIONS[2][0], "--context", LONG, "--top-k", 2]),
                      (gpt2_run, ["generate", *[a for p in PROMPTS for a in ("--prompt", p)], "--greedy",
                                  "--max-new-tokens", 6])):
        out = export.export(run, runs_dir / f"export_{run.name}", overwrite=True)
        task, rest = argv[0], argv[1:]
        window = ["--max-seq-length", 64, "--doc-stride", 16, "--max-query-length", 16] if task == "qa" else []
        on_run, on_export = cli(task, run, *rest, tmp_path=tmp_path), cli(task, out, *rest, *window, tmp_path=tmp_path)
        if task == "fill-mask":
            for r, e in zip(on_run, on_export):
                assert len(r["predictions"]) == len(e["predictions"])
                flat_r = [p for row in r["predictions"] for p in (row if isinstance(row, list) else [row])]
                flat_e = [p for row in e["predictions"] for p in (row if isinstance(row, list) else [row])]
                assert [(p["token"], p["sequence"]) for p in flat_r] == [(p["token"], p["sequence"]) for p in flat_e]
                assert max(abs(a["score"] - b["score"]) / b["score"] for a, b in zip(flat_r, flat_e)) < 1e-4
        elif task == "qa":
            assert [(a["answer"], a["start"], a["end"]) for a in on_run[0]["answers"]] == \
                   [(a["answer"], a["start"], a["end"]) for a in on_export[0]["answers"]]
        else:
            assert on_run == on_export
    # GroupBERT goes out in optimum-graphcore's layout (no transformers class): read back into our classes
    out = export.export(groupbert_run, runs_dir / "export_groupbert", overwrite=True)
    on_run = cli("fill-mask", groupbert_run, *TEXTS, "--top-k", 3, tmp_path=tmp_path)
    on_export = cli("fill-mask", out, *TEXTS, "--top-k", 3, tmp_path=tmp_path)
    flat = [[p for row in r["predictions"] for p in (row if isinstance(row, list) else [row])]
            for r in (*on_run, *on_export)]
    half = len(flat) // 2
    for r, e in zip(flat[:half], flat[half:]):
        assert [(p["token"], p["sequence"]) for p in r] == [(p["token"], p["sequence"]) for p in e]
        assert max(abs(a["score"] - b["score"]) / b["score"] for a, b in zip(r, e)) < 1e-4
    assert "generate needs" in cli_fails("generate", out, "--prompt", "x", capsys=capsys)


# --------------------------------------------------------------------------------------------------
# Bad input: exit 2, naming the file or option


def test_bad_input_exits_2_naming_what_is_wrong(bert_run, squad_run, tmp_path, capsys):
    assert "no [MASK] to fill" in cli_fails("fill-mask", bert_run, "no mask here", capsys=capsys)
    assert "'mlm_nsp' checkpoint" in cli_fails("qa", bert_run, "--question", "q", "--context", "c", capsys=capsys)
    assert "'squad' checkpoint" in cli_fails("generate", squad_run, "--prompt", "x", capsys=capsys)
    assert "--greedy" in cli_fails("generate", bert_run, "--prompt", "x", "--greedy", "--top-k", 5, capsys=capsys)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "bad.json" in cli_fails("qa", squad_run, "--squad-file", bad, capsys=capsys)
    assert "does not exist" in cli_fails("fill-mask", tmp_path / "nothing", "[MASK]", capsys=capsys)
    optimum = tmp_path / "optimum"
    optimum.mkdir()
    (optimum / "config.json").write_text(json.dumps({"model_type": "groupbert",
                                                     "architectures": ["GroupBertForPreTraining"]}))
    assert "optimum" in cli_fails("fill-mask", optimum, "[MASK]", capsys=capsys)   # a config without weights
    with pytest.raises(SystemExit) as e:   # argparse: no abbreviations, exit 2
        main(["generate", str(bert_run), "--prompt", "x", "--max-new", "3"])
    assert e.value.code == 2
