"""Corpus loading: wiki markup stripping, sentence splitting, text/JSONL/datasets loaders, splits."""
import json
import types

import pytest

from groupbert.data import corpus
from groupbert.data.corpus import (
    DataError,
    Document,
    load_corpus,
    load_hf_dataset,
    load_text_files,
    load_wikipedia_sample,
    split_documents,
    split_sentences,
    strip_wiki_markup,
)

# --------------------------------------------------------------------------------------------------
# Markup stripping (expected outputs written by hand)
# --------------------------------------------------------------------------------------------------

ARTICLE = """{{Infobox person|name={{nowrap|X Y}}|born=1900}}
'''Ada Lovelace''' (born [[1815]]) was an [[England|English]] [[mathematician]].<ref name="a">{{cite web|url=http://x}}</ref> She wrote ''notes''.<ref name="b" />
[[File:Ada.jpg|thumb|A portrait of [[Ada Lovelace|Ada]] [1840].]]
<!-- hidden comment -->
== Early life ==
She was born in [[London]]&nbsp;in 1815. See [http://example.org the archive] for more.
{| class="wikitable"
|-
| cell || {{flag|UK}}
|}
* First item with [[Charles Babbage]]
* Second item
== References ==
{{reflist}}
* Some citation
[[Category:Mathematicians]]
"""


def test_strip_article_snippet():
    assert strip_wiki_markup(ARTICLE) == (
        "Ada Lovelace (born 1815) was an English mathematician. She wrote notes.\n"
        "She was born in London in 1815. See the archive for more.\n"
        "First item with Charles Babbage\n"
        "Second item"
    )


@pytest.mark.parametrize(
    "wikitext, expected",
    [
        ("A {{outer|x={{inner|{{deep}}}}|y}}B.", "A B."),                       # nested templates
        ("Text {{unclosed|a=1 junk\nNext line.", "Text Next line."),             # truncated template
        ("Stray }} braces.", "Stray braces."),
        ("A [[target|label]] and [[plain]] and [[Paris, Texas|]].", "A label and plain and Paris."),
        ("See [[:Category:Birds|bird pages]].[[de:Vogel]]", "See bird pages."),
        ("[[Image:X.png|thumb|Cap [[with|link]] [x].]]Kept.", "Kept."),         # nested caption
        ("Go [http://a.org/x?y=1 there] or [https://b.org].", "Go there or."),
        ("'''Bold''' and ''italic'' and '''''both'''''.", "Bold and italic and both."),
        ("Fact.<ref>{{cite|a}} <b>x</b></ref> More.<ref name=n/>", "Fact. More."),
        ("Water is H<sub>2</sub>O and <math>x^2</math> is gone.", "Water is H2O and is gone."),
        ("Fish &amp; chips &ndash; 5&nbsp;kg.", "Fish & chips \u2013 5 kg."),
        ("It weighs {{convert|7|-|10|kg|lb}} or {{convert|3|kg}}.", "It weighs 7 - 10 kg or 3 kg."),
        ("Called {{lang|fr|la vie}} there.", "Called la vie there."),
        ("Born ({{IPA|x}}; 1900) here.", "Born (1900) here."),
        ("Intro.\n== Section ==\nBody text.", "Intro.\nBody text."),
        ("Line one\ncontinues here.\n\nNew paragraph.", "Line one continues here.\nNew paragraph."),
        ("# first\n#* nested\n: indented\n; term", "first\nnested\nindented\nterm"),
        ("__NOTOC__Text<!-- a\nmultiline comment -->here.", "Texthere."),
        ("A<br />B<div class='x'>C</div>.", "A BC."),
        ("Keep.\n== See also ==\n* [[X]]\n=== Sub ===\nno\n== History ==\nYes.", "Keep.\nYes."),
    ],
)
def test_strip_markup_cases(wikitext, expected):
    assert strip_wiki_markup(wikitext) == expected


# --------------------------------------------------------------------------------------------------
# Sentence splitting
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, expected",
    [
        ("Dr. Smith arrived. He left.", ["Dr. Smith arrived.", "He left."]),
        ("Cities, e.g. Paris and Rome, are old. They are big.",
         ["Cities, e.g. Paris and Rome, are old.", "They are big."]),
        ("That is, i.e. This one. Next.", ["That is, i.e. This one.", "Next."]),
        ("The U.S. Army was formed. It grew.", ["The U.S. Army was formed.", "It grew."]),
        ("J. R. R. Tolkien wrote books. He died.", ["J. R. R. Tolkien wrote books.", "He died."]),
        ("Pi is 3.14 roughly. Yes!", ["Pi is 3.14 roughly.", "Yes!"]),
        ('Is it? Yes. "Quoted." Then (a) ok.', ["Is it?", "Yes.", '"Quoted."', "Then (a) ok."]),
        ("He was born in 1900. 1901 was good.", ["He was born in 1900.", "1901 was good."]),
        ("Version 2.0 is out. and more", ["Version 2.0 is out. and more"]),
        ("Smith et al. (2005) agree. Mr. X too.", ["Smith et al. (2005) agree.", "Mr. X too."]),
        ("  spaced \n out  text  ", ["spaced out text"]),
        ("", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


# --------------------------------------------------------------------------------------------------
# The bundled Wikipedia sample
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wikipedia():
    return load_wikipedia_sample()


def test_wikipedia_sample_is_clean_real_text(wikipedia):
    assert len(wikipedia) >= 100
    titles = [d.title for d in wikipedia]
    assert len(set(titles)) == len(titles)
    assert {"Anarchism", "Autism", "Albedo"} <= set(titles)
    text = "\n".join(s for d in wikipedia for s in d.sentences)
    for junk in ("{{", "}}", "[[", "]]", "<ref", "</ref", "&nbsp;", "thumb|", "{|", "|}"):
        assert junk not in text, junk
    anarchism = wikipedia[titles.index("Anarchism")].sentences
    assert anarchism[0] == (
        "Anarchism is a political philosophy that advocates self-governed societies based on "
        "voluntary institutions."
    )
    assert 300_000 < sum(len(s.split()) for s in text.split("\n")) < 700_000


def test_load_corpus_wikipedia_max_documents():
    docs = load_corpus("wikipedia", max_documents=3)
    assert [d.title for d in docs] == ["Anarchism", "Autism", "Albedo"]


def test_wikipedia_needs_gensim(monkeypatch):
    fake = types.SimpleNamespace(util=types.SimpleNamespace(find_spec=lambda name: None))
    monkeypatch.setattr(corpus, "importlib", fake)
    with pytest.raises(DataError, match=r"pip install --no-deps gensim==4\.4\.0"):
        load_corpus("wikipedia")


# --------------------------------------------------------------------------------------------------
# Text and JSONL files
# --------------------------------------------------------------------------------------------------

def test_text_file_blocks_are_documents(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("First doc line one.\nStill the first sentence? Yes.\n\n\nSecond doc.\n", "utf-8")
    docs = load_text_files(path)
    assert docs == [
        Document("book.txt#1", ["First doc line one.", "Still the first sentence?", "Yes."]),
        Document("book.txt#2", ["Second doc."]),
    ]


def test_jsonl_title_and_text_field(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [{"body": "One. Two.\n\nThree.", "title": "T1"}, {"body": "Four."}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", "utf-8")
    docs = load_text_files(path, text_field="body")
    assert docs == [Document("T1", ["One.", "Two.", "Three."]), Document("c.jsonl:2", ["Four."])]


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "Fine."}\n\n{"text": "broken"\n', "utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:3: malformed JSON"):
        load_text_files(path)


def test_jsonl_missing_field_names_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "Fine."}\n{"content": "x"}\n', "utf-8")
    with pytest.raises(DataError, match=r"c\.jsonl:2: no string field 'text'"):
        load_text_files(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="not found: .*nope.txt"):
        load_text_files(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", "utf-8")
    with pytest.raises(DataError, match="empty.txt contains no text"):
        load_corpus(str(empty))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match=r"bin\.txt:1: not valid UTF-8 .*\[undecodable\]"):
        load_text_files(binary)


def test_directory_loads_sorted_corpus_files_recursively(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"text": "From jsonl."}\n', "utf-8")
    (tmp_path / "a.txt").write_text("From text.", "utf-8")
    (tmp_path / "c.csv").write_text("ignored,1", "utf-8")
    (tmp_path / "a").mkdir()                                   # "a/x.txt" sorts between a.txt and b.jsonl
    (tmp_path / "a" / "x.txt").write_text("From a subfolder.", "utf-8")
    (tmp_path / ".hidden.txt").write_text("Hidden.", "utf-8")
    docs = load_corpus(str(tmp_path))
    assert [d.sentences for d in docs] == [["From text."], ["From a subfolder."], ["From jsonl."]]
    assert len(load_corpus(str(tmp_path), max_documents=1)) == 1
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.csv").write_text("x", "utf-8")
    with pytest.raises(DataError, match="sub holds no corpus files .*skipped 1 other files"):
        load_text_files(tmp_path / "sub")


# --------------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------------

def test_hf_local_data_folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "part.jsonl").write_text(
        '{"text": "Alpha one. Alpha two.", "title": "A"}\n{"text": ""}\n{"text": "Beta."}\n', "utf-8"
    )
    docs = load_hf_dataset(str(data), cache_dir=tmp_path / "hf-cache")
    assert [d.title for d in docs] == ["A", f"{data}:train[2]"]
    assert docs[0].sentences == ["Alpha one.", "Alpha two."]
    with pytest.raises(DataError, match="has no column 'body'"):
        load_hf_dataset(str(data), text_field="body", cache_dir=tmp_path / "hf-cache")


def test_hf_saved_dataset_via_load_corpus(tmp_path):
    import datasets

    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": ["One. Two.", "Three."]}).save_to_disk(str(saved))
    docs = load_corpus(f"hf:{saved}")
    assert [d.sentences for d in docs] == [["One.", "Two."], ["Three."]]


def test_hf_errors_name_the_dataset():
    with pytest.raises(DataError, match="cannot load dataset '/nonexistent/corpus"):
        load_corpus("hf:/nonexistent/corpus")
    with pytest.raises(DataError, match="expected hf:NAME"):
        load_corpus("hf:")


# --------------------------------------------------------------------------------------------------
# Held-out split
# --------------------------------------------------------------------------------------------------

def test_split_by_document_is_disjoint_and_deterministic():
    docs = [Document(f"doc{i}", [f"Sentence {i}."]) for i in range(50)]
    train, val = split_documents(docs, 0.1, seed=3)
    assert len(val) == 5 and len(train) == 45
    assert not {d.title for d in train} & {d.title for d in val}
    assert sorted(d.title for d in train + val) == sorted(d.title for d in docs)
    assert [d.title for d in train] == [d.title for d in docs if d in train]   # order kept
    again = split_documents(docs, 0.1, seed=3)
    assert (again[0], again[1]) == (train, val)
    assert split_documents(docs, 0.1, seed=4)[1] != val


def test_split_edge_cases():
    docs = [Document("a", ["A."]), Document("b", ["B."]), Document("c", ["C."])]
    assert len(split_documents(docs, 0.001, seed=0)[1]) == 1      # at least one
    assert len(split_documents(docs, 0.9, seed=0)[0]) == 1        # never all
    assert split_documents(docs, 0.0, seed=0) == (docs, [])
    assert split_documents(docs[:1], 0.5, seed=0) == (docs[:1], [])
    with pytest.raises(DataError, match="validation_fraction"):
        split_documents(docs, 1.0, seed=0)
