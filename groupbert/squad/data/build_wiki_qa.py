"""Build (or check) the project's SQuAD v1.1-format question-answering set over the bundled Wikipedia sample.

The contexts are runs of consecutive sentences of an article of the English Wikipedia sample that ships in
the gensim wheel (``groupbert.data.corpus.load_wikipedia_sample``), joined with single spaces exactly as
``" ".join(document.sentences)`` joins them, so every context is a verbatim substring of the cleaned
article text. The questions and answers were written by hand for this project; they live, as data to edit
and review, in ``wiki_qa_source.json`` (any top-level key besides ``articles`` is a comment)::

    {"articles": [{"title": "Alabama", "split": "train",            # or "dev"
                   "paragraphs": [{"sentences": [0, 5],             # [first, end) of Document.sentences
                                   "starts_with": "Alabama is a",   # opening words: a splitter change fails
                                   "qas": [[question, answer], ...]}]}]}

Each answer is given as its text; ``answer_start`` is computed by locating the text in the context. A text
must occur exactly once in the context (as a whole-word match: not inside a longer word) unless it is given
as ``{"text": text, "occurrence": k}`` (an object, so it cannot pass for a list of answers), which picks
the k-th such occurrence (0-based). Anything that cannot be located, or is ambiguous without an occurrence,
makes the build fail. A train question has one answer; a dev question always a list of one to three
reference answers, each an exact span of the context.

Usage (from the repository root)::

    .venv/bin/python groupbert/squad/data/build_wiki_qa.py          # write wiki_qa_train.json / wiki_qa_dev.json
    .venv/bin/python groupbert/squad/data/build_wiki_qa.py --check  # rebuild in memory, compare with the files
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN_FILE = HERE / "wiki_qa_train.json"
DEV_FILE = HERE / "wiki_qa_dev.json"
SOURCE_FILE = HERE / "wiki_qa_source.json"

MIN_CONTEXT_WORDS = 50
MAX_CONTEXT_WORDS = 220


class BuildError(ValueError):
    """The hand-written spec is malformed or does not fit the corpus text."""


def slugify(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def find_occurrences(context: str, text: str) -> list[int]:
    """Start offsets of ``text`` in ``context`` that are not glued to a longer word on either side."""
    if not text:
        return []
    left = r"(?<!\w)" if text[0].isalnum() else ""
    right = r"(?!\w)" if text[-1].isalnum() else ""
    return [m.start() for m in re.finditer(left + re.escape(text) + right, context)]


def load_source(path: Path = SOURCE_FILE) -> list[dict]:
    """The hand-written articles of ``wiki_qa_source.json``, in file order."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))["articles"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BuildError(f"{path.name}: cannot read the articles ({exc})") from exc


def locate(context: str, answer: str | dict, where: str) -> dict:
    explicit = isinstance(answer, dict) and set(answer) == {"text", "occurrence"}
    text, index = (answer["text"], answer["occurrence"]) if explicit else (answer, None)
    if not isinstance(text, str) or (explicit and type(index) is not int):
        raise BuildError(f"{where}: an answer is a text or {{\"text\": text, \"occurrence\": k}}, not {answer!r}")
    starts = find_occurrences(context, text)
    if not starts:
        raise BuildError(f"{where}: answer {text!r} not found in the context")
    if index is None:
        if len(starts) > 1:
            raise BuildError(f"{where}: answer {text!r} occurs {len(starts)} times; give its \"occurrence\"")
        index = 0
    if not 0 <= index < len(starts):
        raise BuildError(f"{where}: answer {text!r} has {len(starts)} occurrence(s), occurrence {index} asked")
    start = starts[index]
    assert context[start:start + len(text)] == text
    return {"text": text, "answer_start": start}


def build(documents, articles: list[dict] | None = None) -> dict[str, dict]:
    """``{"train": squad_json, "dev": squad_json}`` from the spec (default: the source file) and the corpus."""
    if articles is None:
        articles = load_source()
    by_title = {d.title: d for d in documents}
    out = {"train": [], "dev": []}
    slugs: set[str] = set()
    errors: list[str] = []
    for article in articles:
        title, split = article["title"], article["split"]
        if title not in by_title:
            raise BuildError(f"article {title!r} is not in the corpus")
        if split not in out:
            raise BuildError(f"{title}: unknown split {split!r}")
        sentences = by_title[title].sentences
        slug = slugify(title)
        if slug in slugs:
            raise BuildError(f"{title}: id slug {slug!r} already used (duplicate ids)")
        slugs.add(slug)
        paragraphs = []
        n = 0
        for p, para in enumerate(article["paragraphs"]):
            first, end = para["sentences"]
            if not 0 <= first < end <= len(sentences):
                raise BuildError(f"{title} paragraph {p}: sentence range {first}:{end} out of bounds")
            context = " ".join(sentences[first:end])
            if not context.startswith(para["starts_with"]):
                raise BuildError(f"{title} paragraph {p}: context starts {context[:60]!r}, "
                                 f"expected {para['starts_with']!r}")
            words = len(context.split())
            if not MIN_CONTEXT_WORDS <= words <= MAX_CONTEXT_WORDS:
                errors.append(f"{title} paragraph {p}: {words} words")
            qas = []
            for item in para["qas"]:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                    raise BuildError(f"{title} paragraph {p}: a qa is [question, answer], not {item!r}")
                question, answers = item
                n += 1
                qid = f"wikiqa-{slug}-{n}"
                where = f"{qid} ({question})"
                if isinstance(answers, list) != (split == "dev") or split == "dev" and not 1 <= len(answers) <= 3:
                    raise BuildError(f"{where}: a train question takes one answer, a dev question a list of 1 to 3")
                answers = answers if split == "dev" else [answers]
                try:
                    located = [locate(context, a, where) for a in answers]
                except BuildError as exc:
                    errors.append(str(exc))
                    continue
                if len({(a["text"], a["answer_start"]) for a in located}) != len(located):
                    raise BuildError(f"{where}: duplicate reference answers")
                qas.append({"id": qid, "question": question, "answers": located})
            paragraphs.append({"context": context, "qas": qas})
        out[split].append({"title": title, "paragraphs": paragraphs})
    if errors:
        raise BuildError("\n".join(errors))
    both = {a["title"] for a in out["train"]} & {a["title"] for a in out["dev"]}
    if both:
        raise BuildError(f"articles in both splits: {sorted(both)}")
    return {split: {"version": "1.1", "data": data} for split, data in out.items()}


def dumps(dataset: dict) -> str:
    return json.dumps(dataset, ensure_ascii=False, indent=1) + "\n"


def count(dataset: dict) -> tuple[int, int, int]:
    """(articles, paragraphs, questions)."""
    data = dataset["data"]
    paragraphs = [p for a in data for p in a["paragraphs"]]
    return len(data), len(paragraphs), sum(len(p["qas"]) for p in paragraphs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    args = parser.parse_args(argv)

    root = HERE.parents[2]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from groupbert.data.corpus import load_wikipedia_sample

    try:
        datasets = build(load_wikipedia_sample())
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    status = 0
    for split, path in (("train", TRAIN_FILE), ("dev", DEV_FILE)):
        text = dumps(datasets[split])
        articles, paragraphs, questions = count(datasets[split])
        summary = f"{split}: {articles} articles, {paragraphs} paragraphs, {questions} questions"
        if args.check:
            same = path.exists() and path.read_text(encoding="utf-8") == text
            print(f"{summary} -> {path.name} {'up to date' if same else 'DIFFERS'}")
            status |= 0 if same else 1
        else:
            path.write_text(text, encoding="utf-8")
            print(f"{summary} -> {path.name}")
    return status


if __name__ == "__main__":
    sys.exit(main())
