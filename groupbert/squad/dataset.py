"""SQuAD v1.1 examples from the official nested JSON, the flattened Hugging Face layout, or ``hf:squad``.

Every example is a dict ``{id, title, context, question, answers: {text: [...], answer_start: [...]}}``
(the layout of ``datasets``' ``squad``). Problems are never dropped silently: a question without its
fields or whose ``answer_start`` does not point at its answer text is skipped, counted by reason in a
:class:`LoadReport` and logged; a malformed file raises :class:`DataError` naming it, and so does a
file with nothing usable left.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from groupbert.data.errors import DataError

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"


def shipped_file(split: str) -> Path:
    """The project's SQuAD-format set over the bundled Wikipedia articles (``train`` or ``dev``)."""
    return DATA_DIR / f"wiki_qa_{split}.json"


@dataclass
class LoadReport:
    source: str
    examples: int = 0                              # usable questions
    skipped: Counter = field(default_factory=Counter)   # reason -> questions skipped
    dropped_answers: Counter = field(default_factory=Counter)  # reason -> reference answers dropped
    samples: list = field(default_factory=list)     # first few "id: reason" lines for the log

    def skip(self, qid, reason: str) -> None:
        self.skipped[reason] += 1
        if len(self.samples) < 5:
            self.samples.append(f"{qid}: {reason}")

    def drop_answer(self, qid, reason: str) -> None:
        self.dropped_answers[reason] += 1
        if len(self.samples) < 5:
            self.samples.append(f"{qid}: answer dropped, {reason}")

    def summary(self) -> str:
        parts = [f"{self.source}: {self.examples} usable questions"]
        if self.skipped:
            parts.append("skipped " + ", ".join(f"{n} ({r})" for r, n in self.skipped.most_common()))
        if self.dropped_answers:
            parts.append("reference answers dropped " +
                         ", ".join(f"{n} ({r})" for r, n in self.dropped_answers.most_common()))
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {"source": self.source, "examples": self.examples, "skipped": dict(self.skipped),
                "dropped_answers": dict(self.dropped_answers)}


def load_squad(source: str | Path | None, split: str = "train", max_examples: int | None = None,
               ) -> tuple[list[dict], LoadReport]:
    """Examples and their load report from a path, ``hf:squad[:SPLIT]`` or None (the shipped ``split``)."""
    if source is None:
        source = shipped_file(split)
        if not Path(source).is_file():
            raise DataError(f"the shipped SQuAD-format file {source} is missing; set squad.train_file / "
                            f"squad.dev_file to a SQuAD v1.1 JSON file")
    if isinstance(source, str) and source.startswith("hf:"):
        raw, name = _load_hf(source, split), source
    else:
        raw, name = _load_file(Path(source)), str(source)
    report = LoadReport(name)
    examples = []
    for record in raw:
        ex = _validate(record, report)
        if ex is not None:
            examples.append(ex)
            if max_examples is not None and len(examples) >= max_examples:
                break
    report.examples = len(examples)
    if report.skipped or report.dropped_answers:
        logger.warning("%s (e.g. %s)", report.summary(), "; ".join(report.samples))
    else:
        logger.info("%s", report.summary())
    if not examples:
        raise DataError(f"{name}: no usable SQuAD questions ({report.summary()})")
    return examples, report


def _load_file(path: Path) -> list[dict]:
    """Flattened records (with ``title``/``paragraph`` context) from a nested or flattened file."""
    if not path.is_file():
        raise DataError(f"SQuAD file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: malformed JSON on line {n}: {e.msg}") from None
        return records
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        data = obj["data"]
        if data and isinstance(data[0], dict) and "paragraphs" in data[0]:
            return list(_flatten(data))
        return data  # HF's run_qa layout: {"data": [flattened records]}
    if isinstance(obj, list):
        return obj
    raise DataError(f"{path}: expected the SQuAD v1.1 layout {{'version', 'data': [articles]}} or a list "
                    f"of flattened records")


def _flatten(articles: list) -> list[dict]:
    for article in articles:
        title = article.get("title", "") if isinstance(article, dict) else ""
        for paragraph in (article.get("paragraphs") or []) if isinstance(article, dict) else []:
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            for qa in (paragraph.get("qas") or []) if isinstance(paragraph, dict) else []:
                if not isinstance(qa, dict):
                    qa = {}
                answers = qa.get("answers")
                if isinstance(answers, list):
                    try:
                        answers = {"text": [a["text"] for a in answers],
                                   "answer_start": [a["answer_start"] for a in answers]}
                    except (KeyError, TypeError):
                        answers = "malformed"
                yield {"id": qa.get("id"), "title": title, "context": context, "question": qa.get("question"),
                       "answers": answers}


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


def _validate(record, report: LoadReport) -> dict | None:
    if not isinstance(record, dict):
        report.skip("?", "record is not an object")
        return None
    qid = record.get("id")
    for key in ("id", "context", "question", "answers"):
        if not record.get(key) and record.get(key) != 0:
            report.skip(qid, f"missing field '{key}'")
            return None
    if not isinstance(record["context"], str) or not isinstance(record["question"], str):
        report.skip(qid, "context/question is not text")
        return None
    answers = record["answers"]
    if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) \
            or not isinstance(answers.get("answer_start"), list) \
            or len(answers["text"]) != len(answers["answer_start"]):
        report.skip(qid, "malformed answers")
        return None
    context, texts, starts = record["context"], [], []
    for text, start in zip(answers["text"], answers["answer_start"]):
        if not isinstance(text, str) or not text.strip() or isinstance(start, bool) or not isinstance(start, int):
            report.drop_answer(qid, "answer text or answer_start missing")
        elif context[start:start + len(text)] != text:
            report.drop_answer(qid, "answer_start does not match the answer text")
        else:
            texts.append(text)
            starts.append(start)
    if not texts:
        report.skip(qid, "no answer whose answer_start matches the context")
        return None
    return {"id": str(qid), "title": record.get("title") or "", "context": context,
            "question": record["question"], "answers": {"text": texts, "answer_start": starts}}
