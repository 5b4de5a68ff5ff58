"""Pretraining corpora as documents made of sentences.

Google BERT's ``create_pretraining_data.py`` (github.com/google-research/bert) works on documents given
as lists of sentences: next-sentence prediction pairs sentences of one document, and the "random next"
segment comes from another document. Every loader here returns ``list[Document]`` in that shape.

Inputs are read by :mod:`groupbert.data.sources` (one reading path for these in-memory loaders and the
streaming preparation); :func:`document_sentences` / :func:`document_text` turn its documents into
sentences or text. ``load_corpus`` takes the same strings:

- ``"wikipedia"``: the real English Wikipedia sample that ships inside the ``gensim`` wheel
  (106 articles of the 2017 dump, CC BY-SA), a bz2 MediaWiki dump whose wiki markup is removed by
  :func:`strip_wiki_markup`; gensim itself is never imported (its compiled extensions need scipy,
  which ``pip install --no-deps gensim==4.4.0`` does not bring).
- a path: plain text (one document per blank-line-separated block), JSON lines (one object per line with
  a text field and an optional ``title``), a MediaWiki XML dump or WikiExtractor output, each possibly
  ``.gz``/``.bz2``; a directory means its corpus files, recursively, sorted by path; a glob the files
  it matches.
- ``"hf:NAME[:CONFIG[:SPLIT]]"``: any dataset ``datasets.load_dataset`` can open (offline this means a
  local folder or a dataset already in the cache), or a folder written by ``Dataset.save_to_disk``;
  ``"hf-streaming:…"`` for an ``IterableDataset``.

The markup stripper and the sentence splitter are small regex passes, not a wikitext parser
(``mwparserfromhell`` would be exact). They aim at clean prose for language modelling: templates,
tables, references, files, categories and the reference/link sections at the end of articles are
dropped; link labels, bold/italic text and list items are kept.
"""
from __future__ import annotations

import html
import importlib.util
import logging
import os
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

from groupbert.data.errors import DataError
from groupbert.data.sources import HFInput, RawDocument, plan_pieces, read_piece, resolve_inputs

logger = logging.getLogger(__name__)

__all__ = [
    "Document",
    "DataError",
    "WIKIPEDIA_SAMPLE",
    "wikipedia_sample_path",
    "load_wikipedia_sample",
    "load_text_files",
    "load_hf_dataset",
    "load_corpus",
    "split_documents",
    "strip_wiki_markup",
    "split_sentences",
    "text_to_sentences",
    "document_sentences",
    "document_text",
]

# Inside the gensim wheel: gensim/test/test_data/<this name>.
WIKIPEDIA_SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

PathLike = Union[str, Path]


@dataclass
class Document:
    """One document: a title (for logs and held-out splits) and its sentences in order."""

    title: str
    sentences: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Sentence splitting
# --------------------------------------------------------------------------------------------------

# Lower-cased, without the final dot. A "." after one of these does not end a sentence.
# "etc." is deliberately absent: it ends sentences more often than not when a capital follows.
_ABBREVIATIONS = frozenset(
    """
    mr mrs ms dr prof st jr sr rev hon gen gens col lt sgt capt cmdr adm brig maj cpl pvt lieut
    gov sen rep pres messrs
    vs cf al approx ca c fig figs no nos vol vols pp p ed eds inc ltd co corp bros dept univ est
    jan feb mar apr jun jul aug sep sept oct nov dec mt ft op ibid viz
    """.split()
)
# A sentence may end at [.!?…] (plus closing quotes/brackets) followed by whitespace.
_BOUNDARY_RE = re.compile(r"([.!?\u2026]+)([\"'\u201d\u2019)\]]*)\s+")
_OPENERS = "\"'\u201c\u2018(["
_INITIAL_RE = re.compile(r"[A-Za-z]")                   # "J. R. R. Tolkien"
_DOTTED_RE = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")     # "U.S", "e.g", "i.e", "p.m"


def _is_abbreviation(prefix: str) -> bool:
    """Whether the word right before a "." (``prefix`` ends with it) is an abbreviation or initial."""
    words = prefix.split()
    if not words:
        return False
    word = words[-1].lstrip(_OPENERS)
    return (
        word.lower() in _ABBREVIATIONS
        or _INITIAL_RE.fullmatch(word) is not None
        or _DOTTED_RE.fullmatch(word) is not None
    )


def split_sentences(text: str) -> list[str]:
    """Split one paragraph into sentences with a regex rule set.

    A sentence ends at ``.``, ``!``, ``?`` or ``…`` (optionally followed by closing quotes or brackets)
    when whitespace and then an upper-case letter or a digit follow (opening quotes/brackets are
    skipped). A ``.`` does not end a sentence after a known abbreviation ("Dr.", "e.g.", "et al."),
    a dotted acronym ("U.S.") or a single-letter initial ("J. R. R. Tolkien"). Decimals ("3.14")
    never split because no whitespace follows the dot. Whitespace is normalised to single spaces.
    """
    text = " ".join(text.split())
    sentences: list[str] = []
    start = 0
    for m in _BOUNDARY_RE.finditer(text):
        j = m.end()
        while j < len(text) and text[j] in _OPENERS:
            j += 1
        if j >= len(text) or not (text[j].isupper() or text[j].isdigit()):
            continue
        if m.group(1) == "." and not m.group(2) and _is_abbreviation(text[start:m.start()]):
            continue
        sentence = text[start:m.start() + len(m.group(1)) + len(m.group(2))].strip()
        if sentence:
            sentences.append(sentence)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def text_to_sentences(text: str) -> list[str]:
    """Plain text -> sentences: blank lines separate paragraphs, lines inside one are joined."""
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        sentences.extend(split_sentences(paragraph))
    return sentences


# --------------------------------------------------------------------------------------------------
# Wiki markup stripping
# --------------------------------------------------------------------------------------------------

_COMMENT_RE = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_SELF_CLOSING_REF_RE = re.compile(r"<ref\b[^<>]*/\s*>", re.IGNORECASE)
# Tags whose content is not running text: drop tag and content.
_DROP_CONTENT_TAGS = (
    "ref", "math", "gallery", "timeline", "imagemap", "score", "hiero", "chem", "ce",
    "syntaxhighlight", "source", "references", "graph", "mapframe", "templatedata",
)
_DROP_CONTENT_RES = [
    re.compile(rf"<{tag}\b[^<>]*(?<!/)>.*?</{tag}\s*>", re.IGNORECASE | re.DOTALL)
    for tag in _DROP_CONTENT_TAGS
]
_BREAK_TAG_RE = re.compile(r"<br\s*/?\s*>|<hr\s*/?\s*>", re.IGNORECASE)
_ANY_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9]*\b[^<>]*>")
_MAGIC_WORD_RE = re.compile(r"__[A-Z]+__")
# [http://example.org label] -> label ; [http://example.org] -> "" (also protocol-relative //).
_EXTERNAL_LINK_RE = re.compile(r"\[(?:(?:https?|ftp|news|mailto):|//)[^\s\[\]]*(?:\s+([^\[\]]*))?\]")
_WIKILINK_RE = re.compile(r"\[\[([^\[\]]*)\]\]")
_FILE_LINK_RE = re.compile(r"\[\[\s*(?:file|image|category|media)\s*:", re.IGNORECASE)
_LINK_TOKEN_RE = re.compile(r"\[\[|\]\]")
# Templates that wrap running text; rendered instead of dropped (innermost, unnested ones only).
_SIMPLE_TEMPLATE_RE = re.compile(r"\{\{\s*([A-Za-z ]+?)\s*\|([^{}]*)\}\}")
_RANGE_WORDS = frozenset({"-", "\u2013", "to", "and", "or", "by", "x", "\u00d7", "+", "&"})
_DROP_NAMESPACES = frozenset({"file", "image", "category", "media"})
_LANGUAGE_PREFIX_RE = re.compile(r"[a-z]{2,3}(?:-[a-z]+)*")   # interlanguage links [[de:...]]
_BOLD_ITALIC_RE = re.compile(r"'{2,}")
_HEADING_RE = re.compile(r"^(={1,6})\s*(.*?)\s*\1\s*$")
_LIST_RE = re.compile(r"^[*#:;]+\s*")
# Sections at the end of articles that hold citations and link lists, not prose.
_SKIPPED_SECTIONS = frozenset({
    "references", "see also", "external links", "further reading", "notes", "bibliography",
    "sources", "citations", "footnotes", "notes and references", "references and notes",
    "works cited", "literature", "other reading",
})
_HAS_LETTER_RE = re.compile(r"[^\W\d_]")


def _remove_nested(text: str, opener: str, closer: str) -> str:
    """Remove balanced, possibly nested ``opener … closer`` spans (templates, tables).

    A stray closer is dropped; an opener that is never closed (truncated dump) drops the rest of its
    line, and scanning goes on after it.
    """
    token_re = re.compile(re.escape(opener) + "|" + re.escape(closer))
    pieces: list[str] = []
    while True:
        depth, last, span_start = 0, 0, 0
        for m in token_re.finditer(text):
            if m.group() == opener:
                if depth == 0:
                    pieces.append(text[last:m.start()])
                    span_start = m.start()
                depth += 1
            elif depth == 0:            # stray closer
                pieces.append(text[last:m.start()])
                last = m.end()
            else:
                depth -= 1
                if depth == 0:
                    last = m.end()
        if depth == 0:
            pieces.append(text[last:])
            return "".join(pieces)
        line_end = text.find("\n", span_start)
        if line_end < 0:
            return "".join(pieces)
        text = text[line_end:]


def _render_simple_template(m: re.Match) -> str:
    name = m.group(1).strip().lower()
    params = [p.strip() for p in m.group(2).split("|") if "=" not in p]
    if name in ("convert", "cvt") and len(params) >= 2:
        if len(params) >= 4 and params[1] in _RANGE_WORDS:   # {{convert|3|to|5|km}}
            return " ".join(params[:4])
        return f"{params[0]} {params[1]}"                     # {{convert|10|kg|lb}} -> 10 kg
    if name in ("lang", "transl") and len(params) >= 2:
        return params[-1]                                      # {{lang|fr|texte}} -> texte
    if name in ("nowrap", "nobr", "small", "smaller", "em", "keypress", "math", "mvar") and params:
        return params[0]
    return m.group(0)


def _remove_file_links(text: str) -> str:
    """Drop ``[[File:…]]`` / ``[[Image:…]]`` / ``[[Category:…]]`` including nested links in captions.

    Scans ``[[``/``]]`` depth because captions may hold single brackets and nested links.
    """
    pieces: list[str] = []
    pos = 0
    while True:
        m = _FILE_LINK_RE.search(text, pos)
        if m is None:
            pieces.append(text[pos:])
            return "".join(pieces)
        pieces.append(text[pos:m.start()])
        depth, end = 0, None
        for token in _LINK_TOKEN_RE.finditer(text, m.start()):
            depth += 1 if token.group() == "[[" else -1
            if depth == 0:
                end = token.end()
                break
        if end is None:                       # unclosed: drop the rest of the line
            newline = text.find("\n", m.start())
            end = len(text) if newline < 0 else newline
        pos = end


def _wikilink_replacement(m: re.Match) -> str:
    inner = m.group(1)
    target, _, label = inner.partition("|")
    target = target.strip()
    if target.startswith(":"):          # [[:Category:X]] links to the page instead of categorising
        target = target[1:]
    elif ":" in target:
        prefix = target.split(":", 1)[0].strip()
        if prefix.lower() in _DROP_NAMESPACES or _LANGUAGE_PREFIX_RE.fullmatch(prefix):
            return ""
    if label:
        return label.rsplit("|", 1)[-1]
    if inner.endswith("|"):             # pipe trick: [[Paris, Texas|]] -> Paris
        target = re.sub(r"\s*\(.*?\)$", "", target.split(":", 1)[-1]).split(",")[0]
    return target


def _replace_wikilinks(text: str) -> str:
    # Innermost first, so captions of [[File:…|… [[link]] …]] resolve before the file link is dropped.
    while True:
        new = _WIKILINK_RE.sub(_wikilink_replacement, text)
        if new == text:
            break
        text = new
    return text.replace("[[", "").replace("]]", "")


def _clean_paragraph(paragraph: str) -> str:
    p = html.unescape(paragraph).replace("\u00a0", " ")
    p = " ".join(p.split())
    p = re.sub(r"\(\s*[,;:]*\s*\)", "", p)          # "()" / "( ; )" left by removed templates
    p = re.sub(r"\(\s*[,;:]\s*", "(", p)            # "( , born 1900)" -> "(born 1900)"
    p = re.sub(r"\s*[,;:]\s*\)", ")", p)
    p = re.sub(r"([(\[])\s+", r"\1", p)
    p = re.sub(r"\s+([,.;:!?%)\]])", r"\1", p)      # space before punctuation left by removed refs
    p = re.sub(r",(?:\s*,)+", ",", p)
    return " ".join(p.split())


def strip_wiki_markup(wikitext: str) -> str:
    """MediaWiki source -> plain prose, one paragraph per line.

    Drops comments, ``<ref>`` citations, math/galleries, templates ``{{…}}`` (nested), tables
    ``{|…|}``, file/image/category/interlanguage links, headings (they end a paragraph) and the
    sections named in ``_SKIPPED_SECTIONS`` (References, See also, External links, …). Keeps the
    labels of ``[[target|label]]`` / ``[[target]]`` and ``[url label]`` links, bold/italic text
    without quotes, the text of other HTML tags, and list items (bullets removed, one paragraph
    each). Entities (``&nbsp;``, ``&ndash;``) are decoded with :func:`html.unescape`.
    """
    text = _COMMENT_RE.sub("", wikitext)
    text = _SELF_CLOSING_REF_RE.sub("", text)
    for pattern in _DROP_CONTENT_RES:
        text = pattern.sub("", text)
    text = _SIMPLE_TEMPLATE_RE.sub(_render_simple_template, text)
    text = _remove_nested(text, "{{", "}}")
    text = _remove_nested(text, "{|", "|}")
    text = _MAGIC_WORD_RE.sub("", text)
    text = _EXTERNAL_LINK_RE.sub(lambda m: m.group(1) or "", text)
    text = _remove_file_links(text)
    text = _replace_wikilinks(text)
    text = _BREAK_TAG_RE.sub(" ", text)
    text = _ANY_TAG_RE.sub("", text)
    text = _BOLD_ITALIC_RE.sub("", text)

    paragraphs: list[str] = []
    current: list[str] = []
    skip_level = 0  # > 0 while inside a skipped section of that heading level

    def flush() -> None:
        if current:
            cleaned = _clean_paragraph(" ".join(current))
            if _HAS_LETTER_RE.search(cleaned):
                paragraphs.append(cleaned)
            current.clear()

    for line in text.split("\n"):
        stripped = line.strip()
        heading = _HEADING_RE.match(stripped)
        if heading:
            flush()
            level = len(heading.group(1))
            title = heading.group(2).strip().lower()
            if skip_level and level > skip_level:
                continue
            skip_level = level if title in _SKIPPED_SECTIONS else 0
            continue
        if skip_level:
            continue
        if not stripped or stripped.startswith(("|", "!")):   # blank line or table remnant
            flush()
            continue
        if _LIST_RE.match(stripped):
            flush()
            current.append(_LIST_RE.sub("", stripped))
            flush()
            continue
        current.append(stripped)
    flush()
    return "\n".join(paragraphs)


# --------------------------------------------------------------------------------------------------
# Documents of groupbert.data.sources -> sentences / text
# --------------------------------------------------------------------------------------------------

def document_sentences(doc: RawDocument) -> list[str]:
    """A document's sentences: wiki markup stripped and each paragraph split (wikitext), or blank-line
    separated paragraphs split (plain text)."""
    if not doc.wikitext:
        return text_to_sentences(doc.text)
    sentences: list[str] = []
    for paragraph in strip_wiki_markup(doc.text).split("\n"):
        sentences.extend(split_sentences(paragraph))
    return sentences


def document_text(doc: RawDocument) -> str:
    """A document as one text for causal LM: markup-stripped paragraphs joined by newlines (wikitext),
    or the plain text without surrounding whitespace."""
    return strip_wiki_markup(doc.text) if doc.wikitext else doc.text.strip()


# --------------------------------------------------------------------------------------------------
# Loaders (in memory; the streaming preparation reads the same pieces with groupbert.data.sources)
# --------------------------------------------------------------------------------------------------

# What the loaders stop at, as they always did; empty and (non-)article pages are skipped.
_LOADER_FAILS = frozenset({"malformed", "undecodable", "too_long"})


def wikipedia_sample_path() -> Path:
    """Path of the Wikipedia sample inside the installed gensim wheel (gensim is not imported)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the bundled Wikipedia sample needs the gensim wheel: run "
            "`pip install --no-deps gensim==4.4.0` (only its test data is read; gensim is never "
            "imported), or point data at your own corpus"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data" / WIKIPEDIA_SAMPLE
    if not path.is_file():
        raise DataError(
            f"gensim is installed but its Wikipedia sample {path} is missing; reinstall with "
            "`pip install --no-deps --force-reinstall gensim==4.4.0`"
        )
    return path


def iter_documents(spec: str, text_field: str = "text", on_bad="skip",
                   cache_dir: Optional[PathLike] = None) -> Iterator[RawDocument]:
    """Every document of ``spec``, streamed in input order with bounded memory (``sources.read_piece``
    over one piece per file): for passes over a whole corpus in one process, such as vocabulary
    training. Bad documents are skipped and counted in the log, or fail (``on_bad``)."""
    counts: Counter = Counter()
    cache = str(cache_dir) if cache_dir else None
    for piece in plan_pieces(spec, sys.maxsize, cache_dir=cache):
        yield from read_piece(piece, text_field=text_field, on_bad=on_bad, counts=counts, cache_dir=cache)
    if counts:
        logger.info("%s: skipped %s", spec, ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())))


def _read_documents(
    spec: str,
    text_field: str,
    max_documents: Optional[int],
    documents: list[Document],
    cache_dir: Optional[PathLike] = None,
) -> None:
    """Append the documents of ``spec`` that have sentences to ``documents`` (one piece per file)."""
    if max_documents is not None and len(documents) >= max_documents:
        return
    for raw in iter_documents(spec, text_field, on_bad=_LOADER_FAILS, cache_dir=cache_dir):
        sentences = document_sentences(raw)
        if sentences:
            documents.append(Document(raw.title, sentences))
            if max_documents is not None and len(documents) >= max_documents:
                return


def load_wikipedia_sample(max_documents: Optional[int] = None) -> list[Document]:
    """The English Wikipedia sample in the gensim wheel: 106 articles, markup stripped.

    Raises:
        DataError: gensim (the wheel carrying the file) is not installed.
    """
    path = wikipedia_sample_path()
    documents: list[Document] = []
    _read_documents(str(path), "text", max_documents, documents)
    _log_loaded(documents, str(path))
    return documents


def load_text_files(
    paths: Union[PathLike, Sequence[PathLike]],
    text_field: str = "text",
    max_documents: Optional[int] = None,
) -> list[Document]:
    """Documents from corpus files (:mod:`groupbert.data.sources` reads them; format and compression
    are detected from the content).

    - JSON lines (``*.jsonl``, ``*.json``, or content starting with ``{``): one object per line;
      ``record[text_field]`` is the document (blank lines in it separate paragraphs), ``record["title"]``
      is optional.
    - plain text: UTF-8, one document per blank-line-separated block; the block's lines are joined and
      split into sentences (so both wrapped prose and one-sentence-per-line work).
    - a Wikipedia XML dump or WikiExtractor output; any of these gzip- or bzip2-compressed.
    - a directory: its corpus files, recursively, sorted by path (hidden ones and other names skipped);
      a glob pattern: the files it matches, sorted.

    Raises:
        DataError: a missing/unreadable file, a malformed or undecodable document (file and line
        number), or no text at all.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    specs = [os.path.abspath(os.path.expanduser(str(p))) for p in paths]   # never "wikipedia" / "hf:"
    documents: list[Document] = []
    for spec in specs:
        _read_documents(spec, text_field, max_documents, documents)
    source = ", ".join(specs)
    if not documents:
        raise DataError(f"corpus {source} contains no text")
    _log_loaded(documents, source)
    return documents


def load_hf_dataset(
    name: str,
    config: Optional[str] = None,
    split: str = "train",
    text_field: str = "text",
    max_documents: Optional[int] = None,
    cache_dir: Optional[PathLike] = None,
) -> list[Document]:
    """Documents from a Hugging Face ``datasets`` dataset, one row per document.

    ``name`` is anything ``datasets.load_dataset`` accepts (a Hub id, resolved from the local cache
    when offline, or a local folder of data files), or a folder written by ``save_to_disk``.
    Rows whose text is empty are skipped; a ``title`` column is used when present. Offline, set
    ``HF_DATASETS_OFFLINE=1`` so that an uncached Hub name fails at once instead of retrying.

    Raises:
        DataError: the dataset cannot be loaded or has no column ``text_field``.
    """
    hf = HFInput(name, config, split, streaming=False)
    documents: list[Document] = []
    _read_documents(hf.spec, text_field, max_documents, documents, cache_dir)
    if not documents:
        raise DataError(f"dataset {hf.label!r} contains no text in column {text_field!r}")
    _log_loaded(documents, f"dataset {hf.label}")
    return documents


def load_corpus(
    source: Union[str, Path], text_field: str = "text", max_documents: Optional[int] = None
) -> list[Document]:
    """Load a corpus named by one string, in memory.

    - ``"wikipedia"``: the bundled English Wikipedia sample (:func:`load_wikipedia_sample`);
    - ``"hf:NAME[:CONFIG[:SPLIT]]"``: a ``datasets`` dataset (:func:`load_hf_dataset`),
      e.g. ``hf:wikitext:wikitext-103-raw-v1:train``; ``hf-streaming:…`` reads it as an
      ``IterableDataset``;
    - anything else: a file, directory or glob (:func:`load_text_files`).
    """
    if max_documents is not None and max_documents < 1:
        raise DataError(f"max_documents must be >= 1 or None, got {max_documents}")
    source = str(source)
    if source == "wikipedia":
        return load_wikipedia_sample(max_documents=max_documents)
    if source.startswith(("hf:", "hf-streaming:")):
        hf = resolve_inputs(source)
        if not hf.streaming:
            return load_hf_dataset(hf.name, hf.config, hf.split, text_field=text_field,
                                   max_documents=max_documents)
        documents: list[Document] = []
        _read_documents(source, text_field, max_documents, documents)
        if not documents:
            raise DataError(f"dataset {hf.label!r} contains no text in column {text_field!r}")
        _log_loaded(documents, f"dataset {hf.label}")
        return documents
    return load_text_files(source, text_field=text_field, max_documents=max_documents)


def split_documents(
    documents: Sequence[Document], validation_fraction: float, seed: int
) -> tuple[list[Document], list[Document]]:
    """Hold out whole documents for validation (no sentence of a validation document is trained on).

    ``round(fraction * n)`` documents, drawn with ``random.Random(seed)``, go to validation; at least
    one when ``fraction > 0`` and there are two or more documents, and never all of them. Both parts
    keep the input order.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise DataError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    n = len(documents)
    if validation_fraction == 0.0 or n < 2:
        return list(documents), []
    n_val = min(max(1, round(validation_fraction * n)), n - 1)
    held_out = set(random.Random(seed).sample(range(n), n_val))
    train = [d for i, d in enumerate(documents) if i not in held_out]
    val = [d for i, d in enumerate(documents) if i in held_out]
    return train, val


def _log_loaded(documents: Iterable[Document], source: str) -> None:
    documents = list(documents)
    n_sentences = sum(len(d.sentences) for d in documents)
    logger.info("loaded %d documents (%d sentences) from %s", len(documents), n_sentences, source)
