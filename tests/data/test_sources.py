"""groupbert.data.sources: resolving inputs, cutting them into pieces, reading pieces as documents.

Every format is read whole (expected documents written by hand), then in pieces of many sizes (tiny ones
too, so that nearly every byte is a cut point): the pieces must give the same documents, in order, each
once, start at document starts, and report progress adding up to their sizes.
"""
import bz2
import collections
import gzip
import json
import os
import pickle
import tracemalloc

import pytest

from groupbert.data.corpus import Document, document_sentences, document_text, load_wikipedia_sample
from groupbert.data.errors import DataError
from groupbert.data.sources import (
    HFInput,
    InputFile,
    Piece,
    RawDocument,
    input_fingerprint,
    plan_pieces,
    read_piece,
    resolve_inputs,
)


def read_all(spec, piece_bytes, **kwargs):
    """(documents of all pieces in plan order, the pieces); checks each piece's progress total."""
    docs, pieces = [], plan_pieces(str(spec), piece_bytes)
    assert [p.index for p in pieces] == list(range(len(pieces)))
    for piece in pieces:
        reported = []
        docs += list(read_piece(piece, progress=reported.append, **kwargs))
        assert sum(reported) == piece.size and all(n > 0 for n in reported), piece
    return docs, pieces


def texts(docs):
    return [d.text for d in docs]


def write(path, data: bytes):
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------------
# Inputs, with the documents expected from them
# --------------------------------------------------------------------------------------------------

TEXT = (
    "\ufeffFirst doc, line one.\nLine two of the first.\n"
    "\n\n\n"
    "Second doc.\n"
    "  \t\n"                                   # a whitespace-only line separates too
    "Third doc, caf\u00e9 \u2014 one line.\n"
    "\n"
    "Fourth\r\ndoc with CRLF.\r\n"
)
TEXT_DOCS = ["First doc, line one.\nLine two of the first.", "Second doc.",
             "Third doc, caf\u00e9 \u2014 one line.", "Fourth\ndoc with CRLF."]

JSONL = (
    '{"text": "Alpha. Beta.", "title": "A"}\n'
    "\n"
    '{"text": "Gamma \\u00e9.", "id": 7}\n'
    '{"title": "", "text": "Delta\\n\\nEpsilon."}\n'
    '  {"text": "Zeta."}  \n'
)
JSONL_DOCS = ["Alpha. Beta.", "Gamma \u00e9.", "Delta\n\nEpsilon.", "Zeta."]

WIKIEXTRACTOR = (
    '<doc id="12" url="https://en.wikipedia.org/wiki?curid=12" title="Anarchism">\n'
    "Anarchism\n"
    "\n"
    "Anarchism is a political philosophy.\n"
    "It has many schools.\n"
    "</doc>\n"
    '<doc id="25" url="https://en.wikipedia.org/wiki?curid=25" title="Fish &amp; Chips">\n'
    "Fish & Chips\n"
    "\n"
    "A dish.\n"
    "</doc>\n"
)
WIKIEXTRACTOR_DOCS = ["Anarchism is a political philosophy.\nIt has many schools.", "A dish."]


def page(title, text, ns=0, redirect=False):
    body = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        "  <page>\n"
        f"    <title>{title}</title>\n"
        f"    <ns>{ns}</ns>\n"
        f"    <id>{len(title)}</id>\n"
        + ('    <redirect title="Elsewhere" />\n' if redirect else "")
        + "    <revision>\n      <id>1</id>\n"
        f'      <text xml:space="preserve">{body}</text>\n'
        "    </revision>\n  </page>\n"
    )


XML_HEADER = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">\n'
    "  <siteinfo>\n    <sitename>Wikipedia</sitename>\n  </siteinfo>\n"
)
XML_FOOTER = "</mediawiki>\n"
PAGES = [
    page("Alpha", "'''Alpha''' is the first letter.<ref>x</ref>\n\n== History ==\nIt is old."),
    page("Talk:Alpha", "Discussion.", ns=1),
    page("Beta", "Beta is second. Tom & Jerry <b>x</b>."),
    page("Old name", "#REDIRECT [[Beta]]"),
    page("Gamma", "Gamma [[Greek alphabet|letter]]."),
    page("Moved", "Text of a redirect", redirect=True),
    page("Delta", "Delta\u00e9 text."),
    page("Epsilon", "Epsilon."),
]
XML_DOCS = ["'''Alpha''' is the first letter.<ref>x</ref>\n\n== History ==\nIt is old.",
            "Beta is second. Tom & Jerry <b>x</b>.", "Gamma [[Greek alphabet|letter]].", "Delta\u00e9 text.",
            "Epsilon."]
XML = XML_HEADER + "".join(PAGES) + XML_FOOTER


def multistream(groups: list[str]) -> bytes:
    """A multistream dump as Wikipedia writes it: the header, then groups of pages, then the footer,
    each compressed as its own bz2 stream."""
    return b"".join(bz2.compress(g.encode()) for g in [XML_HEADER, *groups, XML_FOOTER])


FORMATS = {
    "text": ("corpus.txt", TEXT, TEXT_DOCS),
    "jsonl": ("corpus.jsonl", JSONL, JSONL_DOCS),
    "wikiextractor": ("wiki_00", WIKIEXTRACTOR, WIKIEXTRACTOR_DOCS),
    "wiki-xml": ("dump.xml", XML, XML_DOCS),
}


# --------------------------------------------------------------------------------------------------
# Whole files
# --------------------------------------------------------------------------------------------------

def test_whole_files_read_as_expected(tmp_path):
    for fmt, (name, content, expected) in FORMATS.items():
        path = write(tmp_path / name, content.encode())
        (f,) = resolve_inputs(str(path))
        assert f == InputFile(str(path), len(content.encode()), path.stat().st_mtime_ns, fmt, None)
        docs, pieces = read_all(path, 1 << 30)
        assert pieces == [Piece(0, str(path), fmt, None, 0, -1, f.size)]
        assert texts(docs) == expected, fmt

    docs, _ = read_all(tmp_path / "corpus.txt", 1 << 30)
    assert [d.title for d in docs] == ["corpus.txt#1", "corpus.txt#2", "corpus.txt#3", "corpus.txt#4"]
    assert [d.location for d in docs] == [f"{tmp_path / 'corpus.txt'}:{n}" for n in (1, 6, 8, 10)]
    docs, _ = read_all(tmp_path / "corpus.jsonl", 1 << 30)
    assert [d.title for d in docs] == ["A", "corpus.jsonl:3", "corpus.jsonl:4", "corpus.jsonl:5"]
    docs, _ = read_all(tmp_path / "wiki_00", 1 << 30)
    assert [d.title for d in docs] == ["Anarchism", "Fish & Chips"]
    docs, _ = read_all(tmp_path / "dump.xml", 1 << 30)
    assert [(d.title, d.wikitext) for d in docs] == [
        ("Alpha", True), ("Beta", True), ("Gamma", True), ("Delta", True), ("Epsilon", True)]
    assert docs[0].location == f"{tmp_path / 'dump.xml'} page 'Alpha'"


def test_sniffing_formats_and_compression(tmp_path):
    cases = {
        "a.jsonl.gz": (gzip.compress(JSONL.encode()), "jsonl", "gz"),
        "b.json.bz2": (bz2.compress(JSONL.encode()), "jsonl", "bz2"),
        "c.bz2": (bz2.compress(b'{"text": "x"}\n'), "jsonl", "bz2"),             # by content
        "d.txt": (b"{{Infobox}} is wikitext, not JSON\n", "text", None),          # .txt wins over "{"
        "e.data": (b"\n\n  plain words\n", "text", None),
        "wiki_01.bz2": (bz2.compress(WIKIEXTRACTOR.encode()), "wikiextractor", "bz2"),
        "enwiki-latest-pages-articles1.xml-p1p41242.bz2": (multistream(PAGES[:2]), "wiki-xml", "bz2"),
        "f.xml": (("\ufeff  " + XML).encode(), "wiki-xml", None),
        "g.gz": (gzip.compress(b"gzip'd text\n"), "text", "gz"),       # the name says nothing
        "h.txt.gz": (b"BZh9 is just text here\n", "text", None),       # magic bytes, not the name
    }
    for name, (data, fmt, compression) in cases.items():
        (f,) = resolve_inputs(str(write(tmp_path / name, data)))
        assert (f.format, f.compression) == (fmt, compression), name


# --------------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------------

def _is_document_start(fmt: str, data: bytes, start: int) -> bool:
    before, line = data[:start], data[start:].split(b"\n", 1)[0]
    if not before.endswith(b"\n"):
        return False
    if fmt == "jsonl":
        return True
    if fmt == "wikiextractor":
        return line.startswith(b"<doc ")
    if fmt == "wiki-xml":
        return line.strip().startswith(b"<page>")
    previous = before[:-1].rsplit(b"\n", 1)[-1]
    return bool(line.strip()) and not previous.strip()     # text: a non-blank line after a blank one


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_uncompressed_pieces_cover_every_document_once(tmp_path, fmt):
    name, content, expected = FORMATS[fmt]
    data = content.encode()
    path = write(tmp_path / name, data)
    seen_cuts = set()
    for piece_bytes in [*range(1, len(data) + 2), 1 << 20]:
        docs, pieces = read_all(path, piece_bytes)
        assert texts(docs) == expected, piece_bytes
        assert pieces[0].start == 0 and pieces[-1].end == -1
        for a, b in zip(pieces, pieces[1:]):
            assert a.end == b.start and a.size == a.end - a.start > 0
            assert _is_document_start(fmt, data, b.start), (piece_bytes, b.start)
            seen_cuts.add(b.start)
        assert sum(p.size for p in pieces) == len(data)
    # every document start (jsonl: line start, wiki-xml: page) but the first is a cut for some size
    assert len(seen_cuts) == {"text": 3, "jsonl": 4, "wikiextractor": 1, "wiki-xml": 8}[fmt]


def test_piece_cuts_move_forward_to_the_next_document(tmp_path):
    path = write(tmp_path / "c.jsonl", b'{"text": "aaaa"}\n{"text": "bb"}\n{"text": "c"}\n')
    assert [(p.start, p.end, p.size) for p in plan_pieces(str(path), 10)] == [(0, 17, 17), (17, 32, 15),
                                                                              (32, -1, 14)]
    assert [(p.start, p.end) for p in plan_pieces(str(path), 17)] == [(0, 17), (17, -1)]   # 17 starts a line
    path = write(tmp_path / "t.txt", b"one\ntwo\n\nthree\n\n\nfour\n")
    assert [(p.start, p.end) for p in plan_pieces(str(path), 1)] == [(0, 9), (9, 17), (17, -1)]
    assert [(p.start, p.end) for p in plan_pieces(str(path), 9)] == [(0, 17), (17, -1)]   # 9 is "three"
    assert [(p.start, p.end) for p in plan_pieces(str(path), 100)] == [(0, -1)]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_bz2_streams_cut_anywhere_read_like_the_whole(tmp_path, fmt):
    """pbzip2 cuts streams at any byte: a range piece skips the document it starts in and reads past its
    end to finish its last one, so every split gives the same documents."""
    name, content, expected = FORMATS[fmt]
    data = content.encode()
    path = tmp_path / (name + ".bz2")
    for cut in range(1, len(data)):
        write(path, bz2.compress(data[:cut]) + bz2.compress(data[cut:]))
        docs, pieces = read_all(path, 4)
        assert [p.start for p in pieces] == [0, len(bz2.compress(data[:cut]))]
        assert texts(docs) == expected, cut
    cuts = list(range(7, len(data), 9))                      # many small streams
    write(path, b"".join(bz2.compress(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)])))
    for piece_bytes in (1, 40, 150, 400, 1 << 20):
        assert texts(read_all(path, piece_bytes)[0]) == expected, piece_bytes


def test_wikipedia_multistream_dump(tmp_path):
    data = multistream(["".join(PAGES[:3]), "".join(PAGES[3:6]), "".join(PAGES[6:])])
    path = write(tmp_path / "enwiki-20240101-pages-articles-multistream.xml.bz2", data)
    streams = [0]
    for group in [XML_HEADER, "".join(PAGES[:3]), "".join(PAGES[3:6]), "".join(PAGES[6:])]:
        streams.append(streams[-1] + len(bz2.compress(group.encode())))
    docs, pieces = read_all(path, 4)
    assert [p.start for p in pieces] == streams
    assert [p.end for p in pieces] == streams[1:] + [-1]
    assert [len(list(read_piece(p))) for p in pieces] == [0, 2, 1, 2, 0]
    assert texts(docs) == XML_DOCS
    single = write(tmp_path / "single.xml.bz2", bz2.compress(XML.encode()))
    assert len(plan_pieces(str(single), 4)) == 1              # one stream: one piece
    assert texts(read_all(single, 4)[0]) == XML_DOCS
    assert len(plan_pieces(str(path), 1 << 20)) == 1          # small next to piece_bytes // 4


def test_gz_is_one_piece(tmp_path):
    path = write(tmp_path / "c.jsonl.gz", gzip.compress(JSONL.encode()))
    docs, pieces = read_all(path, 1)
    assert [(p.start, p.end, p.size, p.compression) for p in pieces] == [(0, -1, path.stat().st_size, "gz")]
    assert texts(docs) == JSONL_DOCS
    assert docs[1].location == f"{path}:3"                    # line numbers of the decompressed text


def test_wikipedia_sample_in_pieces_gives_the_loader_documents(tmp_path):
    """The bundled dump re-compressed as a multistream dump of 10 pages per stream, read in pieces,
    gives exactly the Documents of load_wikipedia_sample (which reads the original file)."""
    (sample,) = resolve_inputs("wikipedia")
    assert (sample.format, sample.compression) == ("wiki-xml", "bz2")
    xml = bz2.decompress(open(sample.path, "rb").read())
    header, rest = xml.split(b"  <page>", 1)
    pages = [b"  <page>" + p for p in rest.split(b"  <page>")]
    footer = pages[-1][pages[-1].rindex(b"</page>") + len(b"</page>\n"):]
    pages[-1] = pages[-1][: len(pages[-1]) - len(footer)]
    groups = [header] + [b"".join(pages[i:i + 10]) for i in range(0, len(pages), 10)] + [footer]
    assert b"".join(groups) == xml
    path = write(tmp_path / "sample-multistream.xml.bz2", b"".join(bz2.compress(g, 1) for g in groups))
    counts = collections.Counter()
    pieces = plan_pieces(str(path), 200_000)
    assert len(pieces) > 5
    docs = []
    for piece in pieces:
        for raw in read_piece(piece, counts=counts):
            if sentences := document_sentences(raw):
                docs.append(Document(raw.title, sentences))
    assert docs == load_wikipedia_sample()
    assert len(docs) == 106 and counts["redirect"] > 50


# --------------------------------------------------------------------------------------------------
# Bad documents
# --------------------------------------------------------------------------------------------------

BAD_JSONL = [
    b'{"text": "Good one."}',                        # 1
    b'{"text": "caf\xe9"}',                          # 2 undecodable (latin-1)
    b'{"text": "   "}',                              # 3 empty
    b'{"text": "' + b"x" * 3000 + b'"}',             # 4 too_long (max_document_bytes=1000)
    b'{"text": "broken"',                            # 5 malformed: not JSON
    b'["a list"]',                                   # 6 malformed: not an object
    b'{"body": "no text field"}',                    # 7 malformed: no text field
    b'{"text": 5}',                                  # 8 malformed: text not a string
    b'{"text": "Good two."}',                        # 9
]


def test_bad_jsonl_documents_counted_or_raised(tmp_path):
    path = write(tmp_path / "bad.jsonl", b"\n".join(BAD_JSONL) + b"\n")
    (piece,) = plan_pieces(str(path), 1 << 20)
    counts = collections.Counter()
    docs = list(read_piece(piece, max_document_bytes=1000, counts=counts))
    assert texts(docs) == ["Good one.", "Good two."]
    assert counts == {"undecodable": 1, "empty": 1, "too_long": 1, "malformed": 4}
    expected = {2: "not valid UTF-8", 3: "empty document", 4: "document longer than max_document_bytes=1000",
                5: "malformed JSON line", 6: "expected a JSON object, got list", 7: "no string field 'text'",
                8: "no string field 'text'"}
    for lineno, message in expected.items():
        one = write(tmp_path / f"bad{lineno}.jsonl", BAD_JSONL[0] + b"\n" + BAD_JSONL[lineno - 1] + b"\n")
        (piece,) = plan_pieces(str(one), 1 << 20)
        with pytest.raises(DataError, match=f"bad{lineno}\\.jsonl:2: {message}"):
            list(read_piece(piece, max_document_bytes=1000, on_bad="fail"))
    offset = sum(len(line) + 1 for line in BAD_JSONL[:3])    # a piece from the middle names the byte
    (cut,) = [p for p in plan_pieces(str(path), 50) if p.start == offset]
    with pytest.raises(DataError, match=f"bad\\.jsonl \\(byte {offset}\\): .*\\[too_long\\]"):
        list(read_piece(cut, max_document_bytes=1000, on_bad="fail"))
    with pytest.raises(DataError, match="on_bad"):
        list(read_piece(piece, on_bad="ignore"))


def test_bad_text_and_wikiextractor_documents(tmp_path):
    path = write(tmp_path / "t.txt", b"Good.\n\nBad \xff byte.\n\n" + b"long " * 300 + b"\n\nEnd.\n")
    (piece,) = plan_pieces(str(path), 1 << 20)
    counts = collections.Counter()
    assert texts(read_piece(piece, max_document_bytes=1000, counts=counts)) == ["Good.", "End."]
    assert counts == {"undecodable": 1, "too_long": 1}
    with pytest.raises(DataError, match=r"t\.txt:3: not valid UTF-8"):
        list(read_piece(piece, on_bad="fail"))
    with pytest.raises(DataError, match=r"t\.txt:5: document longer"):
        list(read_piece(piece, max_document_bytes=1000, on_bad={"too_long"}))   # undecodable skipped
    path = write(tmp_path / "wiki_00", (
        '<doc id="1" url="u" title="Empty">\nEmpty\n\n</doc>\n'
        '<doc id="2" url="u" title="Open">\nOpen\n\nNo end tag.\n'
        '<doc id="3" url="u" title="Fine">\nFine\n\nFine text.\n</doc>\n').encode())
    (piece,) = plan_pieces(str(path), 1 << 20)
    counts = collections.Counter()
    assert texts(read_piece(piece, counts=counts)) == ["Fine text."]
    assert counts == {"empty": 1, "malformed": 1}
    with pytest.raises(DataError, match=r"wiki_00:5 \('Open'\): <doc> without </doc> \[malformed\]"):
        list(read_piece(piece, on_bad={"malformed"}))


def test_bad_wiki_pages(tmp_path):
    broken = "  <page>\n    <title>Broken</title>\n    <ns>0<ns>\n  </page>\n"       # not well-formed
    latin1 = page("Latin", "caf\u00e9").encode().replace("caf\u00e9".encode(), b"caf\xe9")
    data = (XML_HEADER + "".join(PAGES[:6]) + broken + page("Blank", "  \n ")).encode() + latin1 + \
        (page("Big", "word " * 400) + page("Last", "Last words.") + XML_FOOTER).encode()
    path = write(tmp_path / "dump.xml", data)
    counts = collections.Counter()
    (piece,) = plan_pieces(str(path), 1 << 20)
    docs = list(read_piece(piece, max_document_bytes=1500, counts=counts))
    assert [d.title for d in docs] == ["Alpha", "Beta", "Gamma", "Last"]
    assert counts == {"non_article": 1, "redirect": 2, "malformed": 1, "empty": 1, "undecodable": 1,
                      "too_long": 1}
    for name, reason in (("Broken", "malformed"), ("Blank", "empty"), ("Latin", "undecodable"),
                         ("Big", "too_long")):
        with pytest.raises(DataError, match=f"dump\\.xml page '{name}': .*\\[{reason}\\]"):
            list(read_piece(piece, max_document_bytes=1500, on_bad={reason}))
    assert len(list(read_piece(piece, max_document_bytes=1 << 20, on_bad={"non_article", "redirect"}))) == 5
    assert texts(read_all(path, 100, max_document_bytes=1500)[0]) == texts(docs)   # cut into pieces too


def test_huge_line_is_never_held_whole(tmp_path):
    huge = 24 << 20
    with open(tmp_path / "big.jsonl", "wb") as f:
        f.write(b'{"text": "before"}\n{"text": "')
        for _ in range(huge >> 20):
            f.write(b"y" * (1 << 20))
        f.write(b'"}\n{"text": "after"}\n')
    (piece,) = plan_pieces(str(tmp_path / "big.jsonl"), 1 << 30)
    counts = collections.Counter()
    tracemalloc.start()
    try:
        docs = list(read_piece(piece, max_document_bytes=1 << 20, counts=counts))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert texts(docs) == ["before", "after"] and counts == {"too_long": 1}
    assert peak < 4 << 20, peak


# --------------------------------------------------------------------------------------------------
# Broken files, paths, globs, directories
# --------------------------------------------------------------------------------------------------

def test_truncated_and_unreadable_files(tmp_path):
    text = (JSONL * 1000).encode()                             # > the 64 KiB read to sniff the format
    path = write(tmp_path / "cut.jsonl.bz2", bz2.compress(text) + bz2.compress(text)[:-30])
    (piece,) = plan_pieces(str(path), 1 << 30)
    with pytest.raises(DataError, match="cannot read corpus file .*cut.jsonl.bz2: .*ended before"):
        list(read_piece(piece))
    data = gzip.compress(os.urandom(100_000))
    path = write(tmp_path / "cut.gz", data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read corpus file .*cut.gz"):
        resolve_inputs(str(path))
    piece = Piece(0, str(tmp_path / "gone.txt"), "text", None, 0, -1, 5)
    with pytest.raises(DataError, match="cannot read corpus file .*gone.txt"):
        list(read_piece(piece))


def test_directories_and_globs_resolve_sorted(tmp_path):
    root = tmp_path / "corpus"
    for rel in ["b.txt", "a/z.jsonl", "a/y.txt.bz2", "c/wiki_00", "c/wiki_01.bz2", "d.xml", "e.json.gz",
                "enwiki-pages-articles1.xml-p1p41242.bz2", "notes.md", "data.csv", ".hidden.txt",
                ".git/x.txt", "sub/.cache/y.txt"]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = b"Some text.\n"
        path.write_bytes(bz2.compress(data) if rel.endswith(".bz2") else
                         gzip.compress(data) if rel.endswith(".gz") else data)
    names = lambda files: [os.path.relpath(f.path, root) for f in files]   # noqa: E731
    assert names(resolve_inputs(str(root))) == [
        "a/y.txt.bz2", "a/z.jsonl", "b.txt", "c/wiki_00", "c/wiki_01.bz2", "d.xml", "e.json.gz",
        "enwiki-pages-articles1.xml-p1p41242.bz2"]
    assert names(resolve_inputs(str(root / "**" / "*.txt*"))) == ["a/y.txt.bz2", "b.txt"]
    assert names(resolve_inputs(str(root / "c" / "wiki_0[01]*"))) == ["c/wiki_00", "c/wiki_01.bz2"]
    assert names(resolve_inputs(str(root / "?.*"))) == ["b.txt", "d.xml", "e.json.gz"]
    assert names(resolve_inputs(str(root / "notes.md"))) == ["notes.md"]     # named explicitly
    with pytest.raises(DataError, match="corpus file not found: .*nope.txt"):
        resolve_inputs(str(root / "nope.txt"))
    with pytest.raises(DataError, match="no files match"):
        resolve_inputs(str(root / "*.parquet"))
    with pytest.raises(DataError, match="matches no corpus files"):
        resolve_inputs(str(root / "*.md"))
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no corpus files"):
        plan_pieces(str(root / "empty"), 100)
    docs, pieces = read_all(root, 1 << 20)
    assert len(pieces) == 8 and texts(docs) == ["Some text."] * 6      # the .jsonl/.json.gz are not JSON


def test_input_fingerprint_of_files(tmp_path):
    a = write(tmp_path / "a.txt", b"One.\n")
    b = write(tmp_path / "b.jsonl", b'{"text": "Two."}\n')
    assert input_fingerprint(str(tmp_path)) == {"files": [
        {"path": str(a), "size": 5, "mtime_ns": a.stat().st_mtime_ns},
        {"path": str(b), "size": 17, "mtime_ns": b.stat().st_mtime_ns}]}
    json.dumps(input_fingerprint("wikipedia"))


# --------------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------------

def test_hf_specs():
    assert resolve_inputs("hf:wikitext:wikitext-103-raw-v1:validation") == HFInput(
        "wikitext", "wikitext-103-raw-v1", "validation", False)
    assert resolve_inputs("hf-streaming:/data/folder") == HFInput("/data/folder", None, "train", True)
    assert resolve_inputs("hf:name::test") == HFInput("name", None, "test", False)
    for bad in ("hf:", "hf:a:b:c:d", "hf-streaming:"):
        with pytest.raises(DataError, match="expected hf"):
            resolve_inputs(bad)


def test_hf_map_style_row_ranges(tmp_path):
    import datasets

    rows = [f"Row number {i}. " * (1 + i % 3) for i in range(23)]
    rows[5] = "   "
    titles = [f"T{i}" if i % 2 else "" for i in range(23)]
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": rows, "title": titles, "n": list(range(23))}).save_to_disk(str(saved))
    spec = f"hf:{saved}"
    whole, (piece,) = read_all(spec, 1 << 30)
    assert (piece.format, piece.start, piece.end, piece.size) == ("hf", 0, 23, 23)
    assert texts(whole) == rows[:5] + rows[6:]
    assert [d.title for d in whole[:3]] == [f"{saved}:train[0]", "T1", f"{saved}:train[2]"]
    counts = collections.Counter()
    docs, pieces = read_all(spec, 200, counts=counts)
    assert len(pieces) > 3 and pieces[0].start == 0 and pieces[-1].end == 23
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))
    assert docs == whole and counts == {"empty": 1}
    (fifth,) = [p for p in pieces if p.start <= 5 < p.end]
    with pytest.raises(DataError, match=r"\[5\]: empty document"):
        list(read_piece(fifth, on_bad="fail"))
    with pytest.raises(DataError, match="has no column 'body'"):
        list(read_piece(pieces[0], text_field="body"))
    fingerprint = input_fingerprint(spec)
    assert fingerprint["hf"] == {"name": str(saved), "config": None, "split": "train", "streaming": False}
    assert fingerprint["fingerprint"] and fingerprint["files"]
    json.dumps(fingerprint)


def test_hf_streaming_one_piece_per_shard(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "part-0.jsonl").write_text(
        '{"text": "A one.", "title": ""}\n{"text": "A two.", "title": ""}\n', "utf-8")
    (data / "part-1.jsonl").write_text('{"text": "B one.", "title": "B"}\n', "utf-8")
    (data / "part-2.jsonl").write_text('{"text": "", "title": ""}\n{"text": "C two.", "title": ""}\n', "utf-8")
    counts = collections.Counter()
    docs, pieces = read_all(f"hf-streaming:{data}", 1, counts=counts)
    assert [(p.start, p.end, p.size) for p in pieces] == [(0, 1, 1), (1, 2, 1), (2, 3, 1)]
    assert sorted(texts(docs)) == ["A one.", "A two.", "B one.", "C two."] and counts == {"empty": 1}
    assert [d.title for d in docs if d.text != "B one."] == [f"{data}:train[{k}:{i}]" for k, i in
                                                            ((0, 0), (0, 1), (2, 1))]
    assert [d.title for d in docs if d.text == "B one."] == ["B"]


# --------------------------------------------------------------------------------------------------
# corpus.document_sentences / document_text
# --------------------------------------------------------------------------------------------------

def test_document_sentences_and_text():
    wiki = RawDocument("T", "'''Bold''' start. Next one.<ref>cite</ref>\n\n== Notes ==\nGone.", True, "x")
    assert document_sentences(wiki) == ["Bold start.", "Next one."]
    assert document_text(wiki) == "Bold start. Next one."
    wiki = RawDocument("T", "First para. Two.\n\nSecond para.", True, "x")
    assert document_sentences(wiki) == ["First para.", "Two.", "Second para."]
    assert document_text(wiki) == "First para. Two.\nSecond para."
    plain = RawDocument("T", "  Line one\ncontinues. Yes!\n\nNew para.  \n", False, "x")
    assert document_sentences(plain) == ["Line one continues.", "Yes!", "New para."]
    assert document_text(plain) == "Line one\ncontinues. Yes!\n\nNew para."
    assert pickle.loads(pickle.dumps(plain)) == plain
