"""The shipped SQuAD v1.1-format set over the bundled Wikipedia sample (groupbert/squad/data/wiki_qa_*.json)."""
import importlib.util
import json
from pathlib import Path

import pytest

from groupbert.data.corpus import load_wikipedia_sample

DATA_DIR = Path(__file__).resolve().parents[2] / "groupbert" / "squad" / "data"
SPLITS = ("train", "dev")


def _load(split):
    with open(DATA_DIR / f"wiki_qa_{split}.json", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def datasets():
    return {split: _load(split) for split in SPLITS}


@pytest.fixture(scope="module")
def documents():
    return load_wikipedia_sample()


@pytest.fixture(scope="module")
def corpus(documents):
    """Article title -> cleaned article text, sentences joined with single spaces."""
    return {d.title: " ".join(d.sentences) for d in documents}


def _questions(dataset):
    for article in dataset["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                yield article["title"], paragraph["context"], qa


def test_official_squad_v11_layout(datasets):
    for split, ds in datasets.items():
        assert ds["version"] == "1.1", split
        assert isinstance(ds["data"], list) and ds["data"], split
        for article in ds["data"]:
            assert set(article) == {"title", "paragraphs"}
            assert article["paragraphs"]
            for paragraph in article["paragraphs"]:
                assert set(paragraph) == {"context", "qas"}
                assert isinstance(paragraph["context"], str) and paragraph["qas"]
                for qa in paragraph["qas"]:
                    assert set(qa) == {"id", "question", "answers"}
                    assert qa["question"].strip().endswith("?"), qa["id"]
                    assert qa["answers"]
                    for answer in qa["answers"]:
                        assert set(answer) == {"text", "answer_start"}
                        assert isinstance(answer["answer_start"], int)


def test_counts_disjoint_splits_and_unique_ids(datasets):
    titles = {split: [a["title"] for a in ds["data"]] for split, ds in datasets.items()}
    for split in SPLITS:
        assert len(set(titles[split])) == len(titles[split]), f"{split}: an article listed twice"
    assert not set(titles["train"]) & set(titles["dev"]), "an article is in both splits"
    assert len(set(titles["train"]) | set(titles["dev"])) >= 20
    assert len(titles["dev"]) >= 5

    ids = [qa["id"] for ds in datasets.values() for _, _, qa in _questions(ds)]
    assert len(ids) >= 240
    assert len(set(ids)) == len(ids), "duplicate question ids"
    assert sum(1 for _ in _questions(datasets["train"])) >= 180
    assert sum(1 for _ in _questions(datasets["dev"])) >= 50


def test_every_answer_start_points_at_its_text(datasets):
    for split, ds in datasets.items():
        for _, context, qa in _questions(ds):
            for answer in qa["answers"]:
                start, text = answer["answer_start"], answer["text"]
                assert text and text == text.strip(), qa["id"]
                assert 0 <= start and context[start:start + len(text)] == text, (split, qa["id"], text)


def test_answer_counts_per_split(datasets):
    for _, _, qa in _questions(datasets["train"]):
        assert len(qa["answers"]) == 1, qa["id"]
    dev_counts = [len(qa["answers"]) for _, _, qa in _questions(datasets["dev"])]
    assert all(1 <= n <= 3 for n in dev_counts)
    assert sum(n > 1 for n in dev_counts) >= 20, "dev should carry several reference answers where natural"


def test_contexts_are_verbatim_corpus_text(datasets, corpus):
    for split, ds in datasets.items():
        for article in ds["data"]:
            assert article["title"] in corpus, article["title"]
            text = corpus[article["title"]]
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                assert 50 <= len(context.split()) <= 220, (split, article["title"], context[:60])
                assert context in text, (split, article["title"], context[:60])


def _builder():
    spec = importlib.util.spec_from_file_location("build_wiki_qa", DATA_DIR / "build_wiki_qa.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_reproduces_the_files(capsys):
    """The JSON files are what build_wiki_qa.py makes from wiki_qa_source.json and the corpus: --check passes."""
    assert _builder().main(["--check"]) == 0
    assert capsys.readouterr().out.count("up to date") == 2


def test_generator_rejects_unlocatable_and_ambiguous_answers(documents):
    builder = _builder()
    articles = builder.load_source()
    qa = articles[0]["paragraphs"][0]["qas"][0]
    for answer, message in (("no such span", "not found"), ("Alabama", "occurs")):
        qa[1] = answer
        with pytest.raises(builder.BuildError, match=message) as exc:
            builder.build(documents, articles)
        assert qa[0] in str(exc.value)
