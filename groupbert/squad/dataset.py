"""SQuAD v1.1 examples from the official nested JSON, the flattened Hugging Face layout, or ``hf:squad``.

Every example is a dict ``{id, title, context, question, answers: {text: [...], answer_start: [...]}}``
(the layout of ``datasets``' ``squad``). Bad input is refused, never dropped: the file is read whole and
every problem found is collected, then a :class:`DataError` (exit code 2 from ``run_squad.py``) names the
file, each offending question by id and where it sits (``data[a].paragraphs[p].qas[q]``, a JSONL line, a
record index), and how many problems there are in all. Refused:

- a file that is not UTF-8 or not JSON, or whose top level is not ``{"data": [...]}`` or a list;
- an article, paragraph or question that is not an object, a paragraph without its context text, a
  question without ``id`` / ``question`` / ``answers``, or with no answer at all (train and dev alike:
  training labels the first answer and the official v1.1 evaluation takes a max over the references);
- a SQuAD v2.0 unanswerable question (``is_impossible``);
- a question id seen before in the same file: the official v1.1 evaluation script keys the references and
  the predictions by id, so a duplicate is scored once however often it is counted;
- an answer whose text is empty or whose ``answer_start`` is not an int with ``0 <= answer_start`` and
  ``answer_start + len(text) <= len(context)`` (a negative start would pass as Python's negative index).

An in-range ``answer_start`` whose span is not the answer text is not an error the real data can avoid
(e.g. offsets counted in UTF-8 bytes, or a context stripped after its offsets were computed as Hugging Face
``datasets`` once did: huggingface/datasets#2585): it is moved to the occurrence of the text nearest to it,
counted in the :class:`LoadReport` and logged. A train answer whose text occurs nowhere in its context
cannot be labelled and is refused; a dev reference is only compared as text by the official evaluation, so
it is kept as it is and counted.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from groupbert.data.errors import DataError

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
MAX_LISTED = 5   # problems spelled out in the error; the rest are counted


def shipped_file(split: str) -> Path:
    """The project's SQuAD-format set over the bundled Wikipedia articles (``train`` or ``dev``)."""
    return DATA_DIR / f"wiki_qa_{split}.json"


@dataclass
class LoadReport:
    source: str
    examples: int = 0                 # questions loaded (after max_examples)
    questions: int = 0                # questions in the file, all validated
    moved_answer_starts: int = 0      # answer_start moved to the nearest occurrence of its text
    answers_not_in_context: int = 0   # dev references whose text is not in the context (kept for scoring)
    samples: list = field(default_factory=list)   # first few "where: what" lines for the log

    def note(self, line: str) -> None:
        if len(self.samples) < MAX_LISTED:
            self.samples.append(line)

    def summary(self) -> str:
        parts = [f"{self.source}: {self.examples} questions" +
                 (f" (of {self.questions})" if self.questions != self.examples else "")]
        if self.moved_answer_starts:
            parts.append(f"{self.moved_answer_starts} answer_start moved to the nearest occurrence of the answer text")
        if self.answers_not_in_context:
            parts.append(f"{self.answers_not_in_context} reference answers not in their context (kept for scoring)")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {"source": self.source, "examples": self.examples, "questions": self.questions,
                "moved_answer_starts": self.moved_answer_starts,
                "answers_not_in_context": self.answers_not_in_context}


class _Problems:
    """Every problem of one file; :meth:`check` raises them together as one :class:`DataError`."""

    def __init__(self, source: str):
        self.source, self.lines = source, []

    def add(self, where: str, qid: Any, what: str) -> None:
        if qid is _NOT_A_QUESTION:
            self.lines.append(f"{where}: {what}")
        else:
            who = f"question {qid!r}" if isinstance(qid, str) and qid else "question (no id)"
            self.lines.append(f"{where}: {who}: {what}")

    def check(self) -> None:
        if not self.lines:
            return
        n = len(self.lines)
        more = f"; and {n - MAX_LISTED} more" if n > MAX_LISTED else ""
        raise DataError(f"{self.source}: {n} problem{'s' if n > 1 else ''} in the SQuAD data, nothing loaded: "
                        + "; ".join(self.lines[:MAX_LISTED]) + more)


_NOT_A_QUESTION = object()   # qid of a problem above the question level (an article, a paragraph)


def load_squad(source: str | Path | None, split: str = "train", max_examples: int | None = None,
               require_answers: bool = True) -> tuple[list[dict], LoadReport]:
    """Examples and their load report from a path, ``hf:squad[:SPLIT]`` or None (the shipped ``split``).
    The whole file is validated (a :class:`DataError` lists what is wrong) before ``max_examples`` apply.
    ``require_answers=False`` (inference, ``groupbert.infer``) accepts a question without ``answers`` or with
    an empty list (its example has no reference texts); answers that are given are checked as always."""
    if source is None:
        source = shipped_file(split)
        if not Path(source).is_file():
            raise DataError(f"the shipped SQuAD-format file {source} is missing; set squad.train_file / "
                            f"squad.dev_file to a SQuAD v1.1 JSON file")
    if isinstance(source, str) and source.startswith("hf:"):
        name = source
        problems = _Problems(name)
        records = [(f"record {i}", r) for i, r in enumerate(_load_hf(source, split))]
    else:
        name = str(source)
        problems = _Problems(name)
        records = list(_load_file(Path(source), problems))
    report = LoadReport(name)
    examples, seen = [], {}   # seen: id -> where it first appears
    for where, record in records:
        qid = record.get("id") if isinstance(record, dict) else None
        if isinstance(qid, str) and qid:
            if qid in seen:
                problems.add(where, qid, f"duplicate id, first at {seen[qid]} (the official SQuAD v1.1 "
                                         f"evaluation keys answers by id, so a duplicate cannot be scored)")
            else:
                seen[qid] = where
        ex = _validate(where, record, split, report, problems, require_answers)
        if ex is not None:
            examples.append(ex)
    problems.check()
    if not examples:
        raise DataError(f"{name}: no SQuAD questions in it")
    report.questions = len(examples)
    if max_examples is not None:
        examples = examples[:max_examples]
    report.examples = len(examples)
    if report.moved_answer_starts or report.answers_not_in_context:
        logger.warning("%s (e.g. %s)", report.summary(), "; ".join(report.samples))
    else:
        logger.info("%s", report.summary())
    return examples, report


def _read_text(path: Path) -> str:
    """The file as text: UTF-8 (a byte-order mark is allowed), else a DataError naming the first bad byte."""
    if not path.is_file():
        raise DataError(f"SQuAD file not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the SQuAD file: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}, line {line}): "
                        f"SQuAD JSON files are UTF-8; re-encode it (e.g. iconv -f latin1 -t utf-8)") from None


def _load_file(path: Path, problems: _Problems) -> Iterator[tuple[str, Any]]:
    """(where, flattened record) of a nested or flattened file; a nested record carries its title."""
    text = _read_text(path)
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: malformed JSON on line {n} column {e.colno}: {e.msg}") from None
            yield f"line {n}", record
        return
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if isinstance(obj, list):
        yield from ((f"[{i}]", r) for i, r in enumerate(obj))
        return
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        got = f"an object with keys {sorted(obj)[:6]}" if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"{path}: expected the SQuAD v1.1 layout {{'version': '1.1', 'data': [articles]}} (or "
                        f"a list of flattened records), got {got}")
    data = obj["data"]
    if any(isinstance(article, dict) and "paragraphs" in article for article in data):
        yield from _flatten(data, problems)
    else:   # HF's run_qa layout: {"data": [flattened records]}
        yield from ((f"data[{i}]", r) for i, r in enumerate(data))


def _flatten(articles: list, problems: _Problems) -> Iterator[tuple[str, dict]]:
    for a, article in enumerate(articles):
        at = f"data[{a}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            problems.add(at, _NOT_A_QUESTION, "an article must be an object with a 'paragraphs' list")
            continue
        title = article.get("title") or ""
        for p, paragraph in enumerate(article["paragraphs"]):
            pat = f"{at}.paragraphs[{p}]" + (f" (article {title!r})" if title else "")
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                problems.add(pat, _NOT_A_QUESTION, "a paragraph must be an object with a 'qas' list")
                continue
            for q, qa in enumerate(paragraph["qas"]):
                where = f"{at}.paragraphs[{p}].qas[{q}]" + (f" (article {title!r})" if title else "")
                if not isinstance(qa, dict):
                    yield where, qa
                    continue
                yield where, {**qa, "title": title, "context": paragraph.get("context")}


def _load_hf(source: str, split: str) -> list[dict]:
    parts = source.split(":")
    name = parts[1] if len(parts) > 1 and parts[1] else "squad"
    hf_split = parts[2] if len(parts) > 2 else ("train" if split == "train" else "validation")
    try:
        import datasets
        ds = datasets.load_dataset(name, split=hf_split)
    except Exception as e:  # noqa: BLE001 - offline, unknown name, missing package: all bad input
        raise DataError(f"cannot load the Hugging Face dataset '{name}' split '{hf_split}': {e}") from None
    return [dict(r) for r in ds]


def _answer_pairs(answers: Any) -> list[tuple[Any, Any]] | str:
    """[(text, answer_start)] of the nested (list of objects) or flattened (object of lists) layout, or
    what is wrong with it."""
    if isinstance(answers, list):
        if not all(isinstance(a, dict) and "text" in a and "answer_start" in a for a in answers):
            return "every answer must be an object with 'text' and 'answer_start'"
        return [(a["text"], a["answer_start"]) for a in answers]
    if isinstance(answers, dict) and isinstance(answers.get("text"), list) \
            and isinstance(answers.get("answer_start"), list):
        if len(answers["text"]) != len(answers["answer_start"]):
            return (f"'answers' has {len(answers['text'])} texts but {len(answers['answer_start'])} "
                    f"answer_start values")
        return list(zip(answers["text"], answers["answer_start"]))
    return "'answers' must be a list of {'text', 'answer_start'} objects"


def _nearest(context: str, text: str, start: int) -> int:
    """Start of the occurrence of ``text`` in ``context`` nearest to ``start``; -1 if there is none."""
    best, i = -1, context.find(text)
    while i >= 0:
        if best < 0 or abs(i - start) < abs(best - start):
            best = i
        if i > start:
            break
        i = context.find(text, i + 1)
    return best


def _validate(where: str, record: Any, split: str, report: LoadReport, problems: _Problems,
              require_answers: bool = True) -> dict | None:
    """The example of one record, or None with its problems added (all of them, not just the first)."""
    if not isinstance(record, dict):
        problems.add(where, _NOT_A_QUESTION, f"a question must be an object, got {type(record).__name__}")
        return None
    qid, bad = record.get("id"), []
    if not isinstance(qid, str) or not qid:
        bad.append("no 'id'" if qid in (None, "") else f"id {qid!r} is not a string (ids key the predictions)")
    if not isinstance(record.get("question"), str):
        bad.append("no 'question' text")
    context = record.get("context")
    if not isinstance(context, str) or not context:
        bad.append("no 'context' text")
    if record.get("is_impossible"):
        bad.append("a SQuAD v2.0 unanswerable question (is_impossible); only SQuAD v1.1 is supported")
    pairs = _answer_pairs(record.get("answers")) if "answers" in record else "no 'answers'"
    if not require_answers and (pairs == [] or record.get("answers") is None):   # no references to score
        pairs = []
    elif isinstance(pairs, str):
        bad.append(pairs)
    elif not pairs:
        bad.append("no answers (every SQuAD v1.1 question has at least one)")
    if bad:
        for what in bad:
            problems.add(where, qid, what)
        return None
    texts, starts = [], []
    for k, (text, start) in enumerate(pairs):
        what = None
        if not isinstance(text, str) or not text.strip():
            what = f"answer {k}: empty or non-text answer text {text!r}"
        elif isinstance(start, bool) or not isinstance(start, int):
            what = f"answer {k}: answer_start {start!r} is not an integer"
        elif start < 0 or start + len(text) > len(context):
            what = (f"answer {k}: answer_start {start} with a text of {len(text)} characters is outside the "
                    f"context of {len(context)} characters")
        elif context[start:start + len(text)] != text:
            moved = _nearest(context, text, start)
            if moved >= 0:
                report.moved_answer_starts += 1
                report.note(f"{qid} answer {k}: answer_start {start} -> {moved}")
                start = moved
            elif split == "train":
                what = f"answer {k}: the text {text!r} occurs nowhere in the context (answer_start {start})"
            else:
                report.answers_not_in_context += 1
                report.note(f"{qid} answer {k}: {text!r} not in the context")
        if what:
            problems.add(where, qid, what)
        else:
            texts.append(text)
            starts.append(start)
    if len(texts) != len(pairs):
        return None
    return {"id": qid, "title": record.get("title") or "", "context": context,
            "question": record["question"], "answers": {"text": texts, "answer_start": starts}}
