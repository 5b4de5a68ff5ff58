"""Inference on trained and exported models: fill-mask, extractive QA and text generation.

    python -m groupbert.infer fill-mask MODEL "the capital of france is [MASK]." [TEXT ...] [--top-k 5]
    python -m groupbert.infer qa MODEL --question Q --context C [--question Q2 ...] [--top-k 1]
    python -m groupbert.infer qa MODEL --squad-file dev.json --output predictions.json
    python -m groupbert.infer generate MODEL --prompt P [--prompt P2 ...] [--max-new-tokens 32]
                                       [--greedy | --temperature T --top-k K --top-p P] [--seed S]

``MODEL`` is one of our runs (a run directory: its latest checkpoint; ``checkpoints/best``; a
``checkpoints/step-N``), read with the run's ``config.yaml`` for the tokenizer (``data.vocab_file``,
``data.lowercase``, ``data.merges_file``) and the QA window settings, or a Hugging Face
``save_pretrained`` directory (``config.json``, ``model.safetensors``, tokenizer files) loaded with
transformers' Auto classes, or a GroupBERT directory in optimum-graphcore's layout (our export, or
``Graphcore/groupbert-base-uncased``), which transformers has no class for, read into our GroupBERT
classes (``groupbert.interop.optimum_groupbert``). The task needs its head: fill-mask a BERT/GroupBERT pretraining run (MLM
head) or a HF masked-LM directory; qa a SQuAD fine-tuning run or a HF question-answering directory;
generate a GPT-2 run or a HF causal-LM directory. A directory without the head (the bundled MiniLM is a
headless ``BertModel``) is refused rather than given random head weights.

Results are JSON lines on stdout (or ``--output FILE``), one per input, in input order:

- fill-mask: ``{"text", "predictions"}``, ``predictions`` being exactly what HF's fill-mask pipeline
  returns for the text: a list of ``{score, token, token_str, sequence}`` (``--top-k`` of them) for one
  [MASK], a list of such lists (one per mask, other masks kept in ``sequence``) for several;
- qa: ``{"id", "question", "answers": [{answer, score, start, end, start_logit, end_logit}, ...]}`` with
  ``--top-k`` answers; ``--squad-file`` writes the ``predictions.json`` object (question id -> answer) and,
  when every question has reference answers, prints ``{squad_file, questions, exact_match, f1}`` (the
  official scores, in percent) on stderr. Windows, spans and answers are
  the SQuAD evaluation's (``groupbert.squad.features`` / ``postprocess``): the same answers as
  ``run_squad.py --eval-only``; ``score`` is the n-best softmax probability of HF ``run_qa.py``;
- generate: ``{"prompt", "completion", "generated_text", "token_ids", "finished"}`` (``finished``: the
  end-of-text token was produced; it and what follows are not part of the completion).

Batches: ``--batch-size`` inputs per forward pass, padded (right for the encoders, left with an attention
mask and HF ``generate``'s position ids for GPT-2), so batched results equal one-at-a-time ones. Sampling
applies temperature, then top-k, then top-p, and draws with ``torch.multinomial`` from the global torch
generator seeded once by ``--seed``, as HF ``generate(do_sample=True)`` does: the same seed, batch and
device give HF's tokens. Our GPT-2 has no KV cache: each new token recomputes the whole sequence
(O(n^2) per sequence; correct, not fast). Exit codes: 0 done, 2 bad input (the message names the file or
option), 1 anything else.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import nn

from groupbert.config import ModelConfig, SquadConfig, load_config
from groupbert.errors import BadInput
from groupbert.models import build_model
from groupbert.models.qa import BertForQuestionAnswering
from groupbert.squad.dataset import load_squad
from groupbert.squad.evaluate import score as squad_score
from groupbert.squad.features import build_features
from groupbert.squad.postprocess import postprocess_predictions
from groupbert.tasks.squad import predict_logits
from groupbert.training.checkpoint import CheckpointError, read_checkpoint, load_model_weights
from groupbert.training.initialize import check_vocabulary

logger = logging.getLogger(__name__)

TASKS = ("fill-mask", "qa", "generate")
# task -> the checkpoint task name (engine's ``state.json`` "task") whose model carries the head
RUN_TASKS = {"fill-mask": "mlm_nsp", "qa": "squad", "generate": "causal_lm"}
NEEDS = {"fill-mask": "a BERT or GroupBERT pretraining run (its MLM head)",
         "qa": "a SQuAD fine-tuning run (run_squad.py; its span head)",
         "generate": "a GPT-2 pretraining run (model.type gpt2)"}
HF_HEADS = {"fill-mask": "AutoModelForMaskedLM", "qa": "AutoModelForQuestionAnswering",
            "generate": "AutoModelForCausalLM"}
HF_NEEDS = {"fill-mask": "a masked-LM checkpoint (e.g. BertForMaskedLM, BertForPreTraining)",
            "qa": "a question-answering checkpoint (e.g. BertForQuestionAnswering)",
            "generate": "a causal-LM checkpoint (e.g. GPT2LMHeadModel)"}
END_OF_TEXT = "<|endoftext|>"


class InferenceError(BadInput, ValueError):
    """Bad input to the inference command line (exit 2): the message names the file, text or option."""


@dataclass
class Loaded:
    """A model ready for one task, with its tokenizer (always a transformers fast tokenizer)."""
    model: nn.Module            # eval mode, on ``device``
    tokenizer: Any              # transformers PreTrainedTokenizerFast (ours wrapped, or the directory's)
    kind: str                   # "run" (ours) or "hf"
    source: str                 # the checkpoint or directory read
    max_positions: int
    device: torch.device
    squad: SquadConfig          # QA defaults: the run's squad section, or SquadConfig() for HF directories
    seq_len: int                # QA window length: the run's data.seq_len, or min(384, positions) for HF
    eos_id: Optional[int] = None
    pad_id: Optional[int] = None


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InferenceError("--device cuda: torch sees no GPU")
    return torch.device(name)


def load(model_path: str | Path, task: str, device: str | torch.device = "cpu") -> Loaded:
    """``model_path``: a Hugging Face directory (it has ``config.json``) or one of our runs / checkpoints."""
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {TASKS}")
    path = Path(model_path)
    device = device if isinstance(device, torch.device) else select_device(device)
    if not path.exists():
        raise InferenceError(f"model {path} does not exist (a run directory, a checkpoint or a Hugging Face "
                             "directory)")
    if (path / "config.json").is_file():
        return load_hf(path, task, device)
    return load_run(path, task, device)


def wrap_tokenizer(tok, gpt2: bool = False):
    """Our ``tokenizers.Tokenizer`` as a transformers fast tokenizer (its normaliser and pre-tokeniser
    untouched: ``BertTokenizerFast(vocab_file=...)`` is wrong in transformers 5, ``groupbert.data.tokenizer``)."""
    from transformers import PreTrainedTokenizerFast

    if gpt2:
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=END_OF_TEXT, bos_token=END_OF_TEXT,
                                       unk_token=END_OF_TEXT)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def load_run(path: Path, task: str, device: torch.device) -> Loaded:
    """One of our checkpoints, with the model class of its task and the tokenizer its run used."""
    ckpt = read_checkpoint(path)   # a run (latest), checkpoints/best, a step-N; CheckpointError otherwise
    saved = ckpt.state.get("task")
    if saved != RUN_TASKS[task]:
        hint = ""
        if saved == "mlm_nsp" and task == "qa":
            hint = (" (a pretraining run has no span head: fine-tune it with run_squad.py --set "
                    "train.init_checkpoint=RUN)")
        elif saved == "squad" and task == "fill-mask":
            hint = " (fine-tuning for SQuAD drops the MLM head: use the pretraining run it started from)"
        raise InferenceError(f"{ckpt.path} is a {saved!r} checkpoint; {task} needs {NEEDS[task]}{hint}")
    try:
        mcfg = ModelConfig(**ckpt.state["model_config"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt.path / 'state.json'}: no usable model_config ({e})") from None
    run_dir = ckpt.path.parent.parent   # <run>/checkpoints/step-N
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise InferenceError(f"{run_dir} has no config.yaml, which names the tokenizer the run used "
                             f"(checkpoint {ckpt.path})")
    cfg = load_config(cfg_file)
    d = cfg.data
    if mcfg.type == "gpt2":
        from groupbert.data.causal_lm import bpe_fingerprint, load_gpt2_bpe
        tok = load_gpt2_bpe(d.vocab_file, d.merges_file)
        digest = bpe_fingerprint(d.vocab_file, d.merges_file)
    else:
        from groupbert.data.tokenizer import bundled_vocab_file, load_wordpiece, vocab_fingerprint
        vocab = Path(d.vocab_file) if d.vocab_file else bundled_vocab_file()
        tok = load_wordpiece(vocab, lowercase=d.lowercase)
        digest = vocab_fingerprint(vocab)
    check_vocabulary(ckpt.state, digest, ckpt.path)
    if tok.get_vocab_size(with_added_tokens=True) > mcfg.vocab_size:
        raise InferenceError(f"{cfg_file}: the tokenizer has {tok.get_vocab_size()} tokens but the model "
                             f"{ckpt.path} only {mcfg.vocab_size}")
    model = BertForQuestionAnswering(mcfg) if task == "qa" else build_model(mcfg)
    load_model_weights(model, ckpt)
    model.to(device).eval()
    tokenizer = wrap_tokenizer(tok, gpt2=mcfg.type == "gpt2")
    eos = tok.token_to_id(END_OF_TEXT) if mcfg.type == "gpt2" else None
    logger.info("loaded %s (%s, step %d) for %s", ckpt.path, mcfg.type, ckpt.step, task)
    return Loaded(model, tokenizer, "run", str(ckpt.path), mcfg.max_positions, device, cfg.squad, d.seq_len,
                  eos_id=eos, pad_id=eos)


def load_hf(path: Path, task: str, device: torch.device) -> Loaded:
    """A ``save_pretrained`` directory through transformers' Auto classes; refused when the task's head
    weights are missing (transformers would initialise them at random)."""
    import transformers

    cfg_file = path / "config.json"
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InferenceError(f"{cfg_file}: unreadable ({e})") from None
    model_type = str(raw.get("model_type", "")) if isinstance(raw, dict) else ""
    names = [model_type, *(raw.get("architectures") or [] if isinstance(raw, dict) else [])]
    if any("groupbert" in str(n).lower() for n in names):
        return load_groupbert_dir(path, task, device)
    if model_type not in transformers.CONFIG_MAPPING:
        raise InferenceError(f"{cfg_file}: model_type {model_type!r} is not an architecture transformers "
                             f"{transformers.__version__} knows")
    auto = getattr(transformers, HF_HEADS[task])
    try:
        model, info = auto.from_pretrained(str(path), output_loading_info=True, dtype=torch.float32)
    except ValueError as e:   # no such head for this architecture
        raise InferenceError(f"{path}: transformers has no {HF_HEADS[task]} for model_type {model_type!r} "
                             f"({str(e).splitlines()[0]})") from None
    except OSError as e:      # no weights file
        raise InferenceError(f"{path}: cannot load the weights ({str(e).splitlines()[0]})") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        arch = ", ".join(raw.get("architectures") or [model_type])
        raise InferenceError(
            f"{path} has no {task} head: it is a {arch} checkpoint and lacks {len(missing)} weights of "
            f"{type(model).__name__} ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
            f"{task} needs {HF_NEEDS[task]}")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as e:
        raise InferenceError(f"{path}: no usable tokenizer files ({str(e).splitlines()[0]})") from None
    model.to(device).eval()
    hf = model.config
    positions = getattr(hf, "max_position_embeddings", None) or getattr(hf, "n_positions", None) or 512
    eos = pad = None
    if task == "generate":
        gen = getattr(model, "generation_config", None)
        eos = _first(getattr(gen, "eos_token_id", None)) if gen is not None else None
        eos = eos if eos is not None else _first(getattr(hf, "eos_token_id", None))
        eos = eos if eos is not None else tokenizer.eos_token_id
        pad = _first(getattr(gen, "pad_token_id", None)) if gen is not None else None
        pad = pad if pad is not None else (tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    logger.info("loaded %s (%s) for %s", path, type(model).__name__, task)
    return Loaded(model, tokenizer, "hf", str(path), int(positions), device, SquadConfig(), min(384, int(positions)),
                  eos_id=eos, pad_id=pad if pad is not None else 0)


def load_groupbert_dir(path: Path, task: str, device: torch.device) -> Loaded:
    """A GroupBERT directory in optimum-graphcore's layout (transformers has no GroupBERT class: e.g.
    ``Graphcore/groupbert-base-uncased`` or our export) into our GroupBERT classes; its tokenizer files
    through transformers. The task's head must be there, as for any directory."""
    import transformers

    from groupbert.interop import optimum_groupbert as og

    if task == "generate":
        raise InferenceError(f"{path} is a GroupBERT (an encoder): generate needs {HF_NEEDS[task]}")
    mcfg, sd = og.load_groupbert_dir(path)
    if task == "qa":
        model, weights, head = BertForQuestionAnswering(mcfg), og.qa_state_dict(sd), "qa_outputs.weight"
    else:
        model, weights, head = build_model(mcfg), sd, "cls.predictions.transform.dense.weight"
    if head not in weights:
        raise InferenceError(f"{path} has no {task} head ({head} is missing); {task} needs {HF_NEEDS[task]}")
    model.load_state_dict({k: v for k, v in weights.items() if not k.startswith(og.OTHER_HEAD_PREFIXES)},
                          strict=True)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as e:
        raise InferenceError(f"{path}: no usable tokenizer files ({str(e).splitlines()[0]})") from None
    model.to(device).eval()
    logger.info("loaded %s (GroupBERT, optimum-graphcore layout) for %s", path, task)
    # our model classes: called as a run's model is
    return Loaded(model, tokenizer, "run", str(path), mcfg.max_positions, device, SquadConfig(),
                  min(384, mcfg.max_positions))


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) and x else (x if isinstance(x, int) else None)


# --------------------------------------------------------------------------------------------------
# Fill-mask
# --------------------------------------------------------------------------------------------------

@torch.no_grad()
def fill_mask(loaded: Loaded, texts: Sequence[str], top_k: int = 5, batch_size: int = 8,
              names: Optional[Sequence[str]] = None) -> list:
    """For each text, HF's fill-mask pipeline result (module docstring). ``names`` label the texts in errors."""
    tok = loaded.tokenizer
    mask_id, pad_id = tok.mask_token_id, tok.pad_token_id
    if mask_id is None:
        raise InferenceError(f"{loaded.source}: the tokenizer has no mask token")
    names = names or [f"text {i + 1}" for i in range(len(texts))]
    results = []
    for lo in range(0, len(texts), batch_size):
        chunk = list(texts[lo:lo + batch_size])
        enc = tok(chunk, padding=True, return_tensors="pt")
        lengths = enc["attention_mask"].sum(1).tolist()
        for i, n in enumerate(lengths):
            if n > loaded.max_positions:
                raise InferenceError(f"{names[lo + i]} is {n} tokens long; the model takes {loaded.max_positions}")
        masks = [torch.nonzero(enc["input_ids"][i, :n] == mask_id).flatten() for i, n in enumerate(lengths)]
        for i, m in enumerate(masks):
            if m.numel() == 0:
                raise InferenceError(f"{names[lo + i]} has no {tok.mask_token} to fill: {chunk[i]!r}")
        logits = _masked_logits(loaded, enc, masks)   # list of [P_i, V]
        k = min(top_k, logits[0].shape[-1])
        for i, (n, m, lg) in enumerate(zip(lengths, masks, logits)):
            ids = enc["input_ids"][i, :n]
            values, preds = lg.float().softmax(-1).topk(k)
            single = m.numel() == 1
            rows = []
            for j, pos in enumerate(m.tolist()):
                row = []
                for v, p in zip(values[j].tolist(), preds[j].tolist()):
                    filled = ids.clone()
                    filled[pos] = p
                    filled = filled[filled != pad_id] if pad_id is not None else filled
                    row.append({"score": v, "token": p, "token_str": tok.decode([p]),
                                "sequence": tok.decode(filled.tolist(), skip_special_tokens=single)})
                rows.append(row)
            results.append(rows[0] if single else rows)
    return results


def _masked_logits(loaded: Loaded, enc, masks: list) -> list:
    """[P_i, V] logits at each row's mask positions; ours run the vocabulary projection there only."""
    dev = loaded.device
    inputs = {k: v.to(dev) for k, v in enc.items() if k in ("input_ids", "token_type_ids", "attention_mask")}
    if loaded.kind == "run":
        P = max(m.numel() for m in masks)
        positions = torch.zeros(len(masks), P, dtype=torch.long)
        for i, m in enumerate(masks):
            positions[i, :m.numel()] = m
        out = loaded.model(**inputs, masked_lm_positions=positions.to(dev)).mlm_logits   # B, P, V
        return [out[i, :m.numel()].cpu() for i, m in enumerate(masks)]
    out = loaded.model(**inputs).logits   # B, T, V
    return [out[i, m.to(dev)].cpu() for i, m in enumerate(masks)]


# --------------------------------------------------------------------------------------------------
# Extractive QA
# --------------------------------------------------------------------------------------------------

@dataclass
class QASettings:
    seq_len: int
    doc_stride: int
    max_query_length: int
    n_best: int
    max_answer_length: int


def qa_settings(loaded: Loaded, seq_len=None, doc_stride=None, max_query_length=None, n_best=None,
                max_answer_length=None) -> QASettings:
    """The run's (or SquadConfig's) settings, each replaced where given; checked as ``run_squad.py`` does."""
    s = loaded.squad
    out = QASettings(seq_len or loaded.seq_len, doc_stride or s.doc_stride, max_query_length or s.max_query_length,
                     n_best or s.n_best, max_answer_length or s.max_answer_length)
    if out.seq_len > loaded.max_positions:
        raise InferenceError(f"--max-seq-length {out.seq_len} exceeds the model's {loaded.max_positions} positions")
    room = out.seq_len - out.max_query_length - 3
    if room <= out.doc_stride:
        raise InferenceError(f"--doc-stride {out.doc_stride} leaves no progress between windows: max-seq-length "
                             f"{out.seq_len} - max-query-length {out.max_query_length} - 3 = {room} context tokens "
                             "must exceed it")
    return out


def _backend(tokenizer):
    """The tokenizer's ``tokenizers.Tokenizer`` without truncation or padding (features.py windows itself)."""
    import tokenizers

    inner = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(inner, tokenizers.Tokenizer):
        raise InferenceError(f"{type(tokenizer).__name__} is not a fast (tokenizers) tokenizer; qa needs its offsets")
    backend = tokenizers.Tokenizer.from_str(inner.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def answer(loaded: Loaded, examples: list[dict], settings: QASettings, batch_size: int = 8,
           ) -> tuple[dict[str, str], dict[str, list[dict]]]:
    """(question id -> answer, question id -> n-best entries with character offsets) for SQuAD-style
    examples (``{id, question, context}``): the evaluation's windows, logits loop and post-processing."""
    features = build_features(examples, _backend(loaded.tokenizer), seq_len=settings.seq_len,
                              doc_stride=settings.doc_stride, max_query_length=settings.max_query_length,
                              training=False)
    start, end = predict_logits(loaded.model, features, batch_size, loaded.device, contextlib.nullcontext)
    return postprocess_predictions(examples, features, start, end, settings.n_best, settings.max_answer_length,
                                   with_offsets=True)


def qa_records(examples: list[dict], nbest: dict, top_k: int = 1) -> list[dict]:
    return [{"id": ex["id"], "question": ex["question"],
             "answers": [{"answer": e["text"], "score": e["probability"], "start": e["start"], "end": e["end"],
                          "start_logit": e["start_logit"], "end_logit": e["end_logit"]}
                         for e in nbest[ex["id"]][:top_k]]} for ex in examples]


def pair_examples(questions: Sequence[str], contexts: Sequence[str]) -> list[dict]:
    """``--question``/``--context`` pairs: as many contexts as questions, or one context for them all."""
    if not questions or not contexts:
        raise InferenceError("qa needs --question and --context (repeatable), or --squad-file FILE")
    if len(contexts) == 1:
        contexts = list(contexts) * len(questions)
    if len(contexts) != len(questions):
        raise InferenceError(f"{len(questions)} --question but {len(contexts)} --context: give one context for all "
                             "the questions, or one per question")
    examples = []
    for i, (q, c) in enumerate(zip(questions, contexts)):
        if not q.strip() or not c.strip():
            raise InferenceError(f"question {i + 1}: empty {'question' if not q.strip() else 'context'}")
        examples.append({"id": str(i), "title": "", "question": q, "context": c,
                         "answers": {"text": [], "answer_start": []}})
    return examples


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------

@dataclass
class Sampling:
    """Greedy when ``greedy`` or ``temperature == 0``; else temperature, then top-k (0: off), then top-p
    (1: off), HF's ``TemperatureLogitsWarper`` / ``TopKLogitsWarper`` / ``TopPLogitsWarper`` in HF's order."""
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    @property
    def argmax(self) -> bool:
        return self.greedy or self.temperature == 0.0


def warp_logits(scores: torch.Tensor, s: Sampling) -> torch.Tensor:
    """[B, V] float32 next-token logits -> the sampling logits (-inf where removed), arithmetic as HF's."""
    if s.temperature != 1.0:
        scores = scores / s.temperature
    if s.top_k:
        k = min(s.top_k, scores.size(-1))
        scores = scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], -float("inf"))
    if s.top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - s.top_p)
        remove[..., -1:] = False   # keep at least one token
        remove = remove.scatter(1, sorted_indices, remove)
        scores = scores.masked_fill(remove, -float("inf"))
    return scores


@torch.no_grad()
def generate(loaded: Loaded, prompts: Sequence[str], max_new_tokens: int = 32, sampling: Optional[Sampling] = None,
             seed: Optional[int] = None, batch_size: int = 8) -> list[dict]:
    """Continue each prompt (module docstring; ``sampling`` None: greedy); ``seed`` seeds torch's global
    generator once, before the first batch (as ``torch.manual_seed`` before HF ``generate``)."""
    sampling = sampling or Sampling(greedy=True)
    tok, eos, pad = loaded.tokenizer, loaded.eos_id, loaded.pad_id
    pad = pad if pad is not None else 0
    if seed is not None:
        torch.manual_seed(seed)
    encoded = []
    for i, p in enumerate(prompts):
        ids = tok(p, add_special_tokens=False)["input_ids"]
        if not ids:
            if eos is None:
                raise InferenceError(f"prompt {i + 1} is empty and the model has no end-of-text token to start from")
            ids = [eos]   # GPT-2's unconditional start
        if len(ids) + max_new_tokens > loaded.max_positions:
            raise InferenceError(f"prompt {i + 1} has {len(ids)} tokens; with --max-new-tokens {max_new_tokens} that "
                                 f"exceeds the model's {loaded.max_positions} positions")
        encoded.append(ids)
    out = []
    for lo in range(0, len(encoded), batch_size):
        chunk = encoded[lo:lo + batch_size]
        new = _generate_batch(loaded, chunk, max_new_tokens, sampling, eos, pad)
        for prompt, ids, gen in zip(prompts[lo:lo + batch_size], chunk, new):
            finished = eos is not None and eos in gen
            kept = gen[:gen.index(eos)] if finished else gen
            prompt_text = tok.decode(ids, skip_special_tokens=True)
            full = tok.decode(ids + kept, skip_special_tokens=True)
            completion = full[len(prompt_text):] if full.startswith(prompt_text) else tok.decode(
                kept, skip_special_tokens=True)
            out.append({"prompt": prompt, "completion": completion, "generated_text": prompt + completion,
                        "token_ids": kept, "finished": finished})
    return out


def _generate_batch(loaded: Loaded, chunk: list[list[int]], max_new_tokens: int, s: Sampling,
                    eos: Optional[int], pad: int) -> list[list[int]]:
    """New token ids per row: left padding, HF ``generate``'s position ids (cumsum of the mask - 1, 0 at
    padding), finished rows continued with ``pad``; the whole sequence recomputed each step (no KV cache)."""
    dev = loaded.device
    T = max(len(c) for c in chunk)
    input_ids = torch.tensor([[pad] * (T - len(c)) + c for c in chunk], device=dev)
    mask = torch.tensor([[0] * (T - len(c)) + [1] * len(c) for c in chunk], device=dev)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    unfinished = torch.ones(len(chunk), dtype=torch.bool, device=dev)
    for _ in range(max_new_tokens):
        scores = _last_logits(loaded, input_ids, mask, positions).to(dtype=torch.float32)   # B, V
        if s.argmax:
            nxt = scores.argmax(-1)
        else:
            probs = warp_logits(scores, s).softmax(-1)
            nxt = torch.multinomial(probs, num_samples=1).squeeze(1)
        if eos is not None:
            nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad))
        input_ids = torch.cat([input_ids, nxt[:, None]], dim=-1)
        mask = torch.cat([mask, mask.new_ones(len(chunk), 1)], dim=-1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=-1)
        if eos is not None:
            unfinished &= nxt != eos
            if not bool(unfinished.any()):
                break
    return input_ids[:, T:].tolist()


def _last_logits(loaded: Loaded, input_ids, mask, positions) -> torch.Tensor:
    """[B, V] logits at the last position (the vocabulary projection of that position only)."""
    if loaded.kind == "run":
        hidden = loaded.model.transformer(input_ids, mask, positions)[:, -1]   # B, H
        return loaded.model.lm_head(hidden)
    kwargs = {}
    if "logits_to_keep" in inspect.signature(loaded.model.forward).parameters:
        kwargs = {"logits_to_keep": 1, "use_cache": False}
    return loaded.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, **kwargs).logits[:, -1]


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m groupbert.infer", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                                epilog="examples:\n" + __doc__.split("\n\n")[1] + "\n\nOutput: JSON lines (module "
                                "docstring, README \"Inference\"). Exit codes: 0 done; 2 bad input (naming the file "
                                "or option); 1 anything else.")
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("model", metavar="MODEL",
                        help="a run directory (its latest checkpoint), checkpoints/best, checkpoints/step-N, or a "
                             "Hugging Face save_pretrained directory")
    common.add_argument("--batch-size", type=_positive, default=8, help="inputs per forward pass (default 8)")
    common.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when torch sees a GPU (default)")
    common.add_argument("--output", type=Path, metavar="FILE", help="write the results here instead of stdout")
    common.add_argument("--threads", type=_positive, help="torch intra-op threads (default: torch's)")
    common.add_argument("--quiet", action="store_true", help="log errors only")
    sub = p.add_subparsers(dest="task", required=True, metavar="{fill-mask,qa,generate}")

    fm = sub.add_parser("fill-mask", parents=[common], allow_abbrev=False,
                        help="predict [MASK] tokens (BERT / GroupBERT pretraining runs, HF masked-LM directories)")
    fm.add_argument("texts", nargs="*", metavar="TEXT", help="texts with one or more [MASK]")
    fm.add_argument("--file", type=Path, help="more texts, one per line (UTF-8; blank lines skipped)")
    fm.add_argument("--top-k", type=_positive, default=5, help="predictions per mask (default 5)")

    qa = sub.add_parser("qa", parents=[common], allow_abbrev=False,
                        help="extractive question answering (SQuAD runs, HF question-answering directories)")
    qa.add_argument("--question", action="append", default=[], help="a question (repeatable)")
    qa.add_argument("--context", action="append", default=[],
                    help="its context (repeatable: one per question, or one for all)")
    qa.add_argument("--squad-file", type=Path, metavar="FILE",
                    help="SQuAD v1.1 JSON (nested or flattened; answers optional): write predictions.json "
                         "(question id -> answer) to --output or stdout, and log EM / F1 when answers are given")
    qa.add_argument("--nbest-output", type=Path, metavar="FILE", help="with --squad-file: nbest_predictions.json")
    qa.add_argument("--top-k", type=_positive, default=1, help="answers per question in the JSON lines (default 1)")
    qa.add_argument("--n-best", type=_positive,
                    help="start/end candidates per window (default: the run's squad.n_best)")
    qa.add_argument("--max-answer-length", type=_positive, help="tokens (default: the run's squad.max_answer_length)")
    qa.add_argument("--max-seq-length", type=_positive, help="window length (default: the run's data.seq_len; HF: 384)")
    qa.add_argument("--doc-stride", type=_positive, help="tokens shared by consecutive windows (default: the run's)")
    qa.add_argument("--max-query-length", type=_positive, help="question tokens kept (default: the run's)")

    gen = sub.add_parser("generate", parents=[common], allow_abbrev=False,
                         help="continue prompts (GPT-2 runs, HF causal-LM directories)")
    gen.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    gen.add_argument("--file", type=Path, help="more prompts, one per line (UTF-8; blank lines skipped)")
    gen.add_argument("--max-new-tokens", type=_positive, default=32, help="default 32")
    gen.add_argument("--greedy", action="store_true", help="argmax decoding (default: sampling)")
    gen.add_argument("--temperature", type=_non_negative, help="sampling temperature (default 1; 0 = greedy)")
    gen.add_argument("--top-k", type=_non_negative_int, help="sample from the k most likely tokens (default 0: all)")
    gen.add_argument("--top-p", type=_probability, help="nucleus sampling mass in (0, 1] (default 1: off)")
    gen.add_argument("--seed", type=_non_negative_int, help="torch seed for sampling (default: unseeded)")
    return p


def _positive(text: str) -> int:
    v = _non_negative_int(text)
    if v == 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return v


def _non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def _non_negative(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def _probability(text: str) -> float:
    v = _non_negative(text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return v


def read_lines(path: Path) -> list[tuple[str, str]]:
    """(name for messages, text) of each non-blank line of a UTF-8 file."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise InferenceError(f"{path}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise InferenceError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    return [(f"{path} line {n}", line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def _inputs(args, items: list[str], kind: str) -> tuple[list[str], list[str]]:
    named = [(f"{kind} {i + 1}", t) for i, t in enumerate(items)]
    if getattr(args, "file", None) is not None:
        named += read_lines(args.file)
    if not named:
        raise InferenceError(f"no {kind}s: give them as arguments{' (--prompt)' if kind == 'prompt' else ''} "
                             "or with --file FILE")
    return [n for n, _ in named], [t for _, t in named]


def _sampling(args) -> Sampling:
    chosen = [f"--{k.replace('_', '-')}" for k in ("temperature", "top_k", "top_p") if getattr(args, k) is not None]
    if args.greedy and chosen:
        raise InferenceError(f"--greedy takes the most likely token; {', '.join(chosen)} only apply to sampling")
    return Sampling(greedy=args.greedy, temperature=1.0 if args.temperature is None else args.temperature,
                    top_k=args.top_k or 0, top_p=1.0 if args.top_p is None else args.top_p)


def run(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.task == "qa":
        given = bool(args.question or args.context)
        if given == (args.squad_file is not None):
            raise InferenceError("qa takes --question/--context or --squad-file FILE (one of them)")
        if args.nbest_output is not None and args.squad_file is None:
            raise InferenceError("--nbest-output goes with --squad-file")
    if args.task == "generate":
        sampling = _sampling(args)
        names, prompts = _inputs(args, args.prompt, "prompt")
    elif args.task == "fill-mask":
        names, texts = _inputs(args, args.texts, "text")
    loaded = load(args.model, args.task, args.device)
    if args.task == "fill-mask":
        results = fill_mask(loaded, texts, args.top_k, args.batch_size, names)
        _write_lines(args.output, ({"text": t, "predictions": r} for t, r in zip(texts, results)))
    elif args.task == "generate":
        _write_lines(args.output, generate(loaded, prompts, args.max_new_tokens, sampling, args.seed, args.batch_size))
    else:
        settings = qa_settings(loaded, args.max_seq_length, args.doc_stride, args.max_query_length, args.n_best,
                               args.max_answer_length)
        if args.squad_file is None:
            examples = pair_examples(args.question, args.context)
            _, nbest = answer(loaded, examples, settings, args.batch_size)
            _write_lines(args.output, qa_records(examples, nbest, args.top_k))
            return
        examples, report = load_squad(args.squad_file, "dev", require_answers=False)
        predictions, nbest = answer(loaded, examples, settings, args.batch_size)
        _write_json(args.output, predictions)
        if args.nbest_output is not None:
            _write_json(args.nbest_output, {k: [{n: e[n] for n in ("text", "probability", "start_logit", "end_logit")}
                                                for e in v] for k, v in nbest.items()})
        references = {ex["id"]: ex["answers"]["text"] for ex in examples}
        if all(references.values()):
            scores = squad_score(references, predictions)
            print(json.dumps({"squad_file": str(args.squad_file), "questions": len(examples), **scores}),
                  file=sys.stderr)
        else:
            logger.warning("%s: %d of %d questions have no reference answers: not scored", args.squad_file,
                           sum(not r for r in references.values()), len(references))


def _open_output(path: Optional[Path]):
    if path is None:
        return contextlib.nullcontext(sys.stdout)
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as e:
        raise InferenceError(f"--output {path}: cannot write it ({e.strerror or e})") from None


def _write_lines(path: Optional[Path], records: Iterable[dict]) -> None:
    with _open_output(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _write_json(path: Optional[Path], obj: Any) -> None:
    with _open_output(path) as f:
        f.write(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def main(argv: Optional[list[str]] = None) -> int:
    from groupbert.cli import EXIT_ERROR, EXIT_OK, exit_code_for   # a sibling of this layer: entry point only

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("groupbert")
    try:
        import transformers   # its load report and progress bars would interleave with ours on stderr
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        run(args)
    except KeyboardInterrupt:
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - bad input: exit 2 with its message; else 1 with the traceback
        return exit_code_for(e, log)
    return EXIT_OK


__all__ = ["InferenceError", "Loaded", "QASettings", "Sampling", "answer", "fill_mask", "generate", "load",
           "load_hf", "load_run", "main", "pair_examples", "qa_records", "qa_settings", "warp_logits",
           "wrap_tokenizer"]

if __name__ == "__main__":
    sys.exit(main())
