"""Pretraining inputs read as a stream of documents, cut into pieces that workers read on their own.

An input is named by one string (``data.corpus``): ``"wikipedia"`` (the sample in the gensim wheel), a file,
a directory (recursive), a glob, ``hf:NAME[:CONFIG[:SPLIT]]`` (a ``datasets`` dataset, map-style) or
``hf-streaming:NAME[:CONFIG[:SPLIT]]`` (an ``IterableDataset``). :func:`resolve_inputs` finds the files and
their format, :func:`plan_pieces` cuts them into pieces of about ``piece_bytes``, and :func:`read_piece`
yields the documents of one piece with bounded memory, whatever the size of the file or the piece, so
that worker processes, or separate machines, can each read their share of a corpus of any size.

File formats (compression, ``gz`` or ``bz2``, is detected from the magic bytes; the format from the
first 64 KiB of content):

- ``text``: documents are blocks of lines separated by blank lines;
- ``jsonl``: one JSON object per line, the text in ``text_field``, an optional ``title``
  (WikiExtractor's ``--json`` output is this format);
- ``wikiextractor``: ``<doc id=… url=… title=…>`` … ``</doc>`` blocks (WikiExtractor's default output);
- ``wiki-xml``: a MediaWiki XML dump (``pages-articles``), plain or bz2, including the multistream
  dumps. Articles (namespace 0, not redirects) are yielded as wiki markup: stripping it is the expensive
  part and runs in the workers (``corpus.document_sentences`` / ``corpus.document_text``).

Pieces and documents. Every document belongs to exactly one piece, the one where it starts:

- an uncompressed file larger than ``piece_bytes`` is cut into byte ranges whose boundaries are moved
  forward to a document start (found with bounded reads from the nominal offset);
- a bz2 file is cut at the starts of its bz2 streams (Wikipedia's ``*-multistream.xml.bz2`` holds one
  stream per 100 pages; ``pbzip2`` output also has many). A stream start need not be a document start
  (``pbzip2`` cuts anywhere), so a range piece skips the partial document it begins in and reads past its
  end to finish its last document. Whether a position is a document start is decided from the data at and
  after the stream start alone (see :class:`_StartFinder`), so the reader of a piece and the reader of the
  piece before it draw the same line between them without seeing each other's data;
- a gz file is one piece (gzip cannot be entered in the middle);
- a map-style dataset is cut into row ranges of about ``piece_bytes`` of Arrow data; a streaming dataset
  gives one piece per shard (``IterableDataset.num_shards``, usually one per data file).

Bad documents (``read_piece``'s ``on_bad``): "undecodable" (not UTF-8), "malformed" (not JSON, not an
object, no string text field, a page that is not XML, a ``<doc>`` without ``</doc>``), "empty" (only
whitespace), "too_long" (over ``max_document_bytes``) are counted and skipped, or raise
:class:`DataError` naming the file and line (or page, or row). "non_article" and "redirect" pages of a
dump are counted only. Line numbers are known only in a piece that starts at the beginning of its file;
the messages and titles of a piece cut from the middle name the byte offset instead (counting the lines
before it would mean reading them).

No torch here (workers start without it); ``datasets`` is imported only for ``hf`` inputs.
"""
from __future__ import annotations

import bz2
import collections
import functools
import glob
import gzip
import html
import io
import json
import logging
import mmap
import os
import re
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Collection, Iterator, NamedTuple, Optional, Union

from groupbert.data.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "BAD_REASONS",
    "HFInput",
    "InputFile",
    "Piece",
    "RawDocument",
    "input_fingerprint",
    "plan_pieces",
    "read_piece",
    "resolve_inputs",
]

# Reasons a document is skipped. The last two are not errors: a dump is mostly such pages.
BAD_REASONS = ("undecodable", "malformed", "empty", "too_long", "non_article", "redirect")
_NEVER_FAIL = frozenset({"non_article", "redirect"})

_SNIFF_BYTES = 64 << 10
_FRAGMENT = 64 << 10            # readline() limit: a longer line is read in fragments
_READ_CHUNK = 1 << 20           # XML scanning / bz2 input reads
_BUFFER = 256 << 10             # file buffers
_PROGRESS_STEP = 1 << 20        # report progress about every MiB on disk
_HF_BATCH_BYTES = 4 << 20       # rows fetched from a map-style dataset per batch, by estimated size

_COMPRESSION_SUFFIXES = (".gz", ".bz2")
_CORPUS_SUFFIXES = (".txt", ".text", ".jsonl", ".json", ".xml")
_WIKIEXTRACTOR_NAME_RE = re.compile(r"wiki_\d+(?:\.bz2)?")
_BZ2_STREAM_RE = re.compile(rb"BZh[1-9]1AY&SY")    # stream header + first block's magic (pi)
_BZ2_HEAD_RE = re.compile(rb"BZh[1-9](?:1AY&SY|\x17rE8P\x90)")
_XML_HEAD_RE = re.compile(r"\A\s*(?:<\?xml[^>]*\?>\s*)?(?:<!--.*?-->\s*)*<(?:mediawiki\b|page>)", re.DOTALL)
_DOC_TITLE_RE = re.compile(rb'\btitle="(.*)"\s*>\s*$')   # greedy: WikiExtractor does not escape quotes
_XML_TITLE_RE = re.compile(rb"<title>(.*?)</title>", re.DOTALL)

_PAGE_OPEN, _PAGE_CLOSE = b"<page>", b"</page>"
_BOM = b"\xef\xbb\xbf"


# --------------------------------------------------------------------------------------------------
# Interface types
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputFile:
    """One input file as found on disk; ``format`` and ``compression`` as sniffed from its content."""

    path: str                 # absolute path
    size: int                 # bytes on disk
    mtime_ns: int
    format: str               # "text" | "jsonl" | "wiki-xml" | "wikiextractor"
    compression: Optional[str]   # None | "gz" | "bz2"


@dataclass(frozen=True)
class HFInput:
    """A ``datasets`` dataset: map-style (``load_from_disk`` / ``load_dataset``) or streaming."""

    name: str
    config: Optional[str]
    split: str
    streaming: bool

    @property
    def spec(self) -> str:
        """The canonical spec string (``Piece.source``), parsed back by :func:`resolve_inputs`."""
        return f"{'hf-streaming' if self.streaming else 'hf'}:{self.name}:{self.config or ''}:{self.split}"

    @property
    def label(self) -> str:
        """``NAME[:CONFIG]:SPLIT``, as in titles and messages."""
        return ":".join(x for x in (self.name, self.config, self.split) if x)


@dataclass(frozen=True)
class Piece:
    """A part of the input that one worker reads on its own (see the module docstring)."""

    index: int                # position in the plan, 0..n-1 (deterministic for the same inputs and piece_bytes)
    source: str               # file path, or the hf spec
    format: str               # as InputFile.format, or "hf"
    compression: Optional[str]
    start: int                # byte offset in the file (compressed, for bz2 stream ranges); row or shard for hf
    end: int                  # exclusive; -1 = to the end of the file
    size: int                 # bytes on disk (or rows, or 1 per streaming shard) covered: the progress unit


@dataclass
class RawDocument:
    """One document before sentence splitting; ``text`` is MediaWiki source when ``wikitext``."""

    title: str
    text: str
    wikitext: bool
    location: str             # for messages: "path:LINE", "path page 'Title'", "hf:...[row]"


# --------------------------------------------------------------------------------------------------
# Resolving a spec
# --------------------------------------------------------------------------------------------------

def resolve_inputs(spec: str) -> Union[list[InputFile], HFInput]:
    """The files (sorted, format and compression sniffed) or the dataset that ``spec`` names.

    Raises:
        DataError: a missing path, an empty glob, a directory without corpus files, a file that cannot
            be opened or decompressed, a malformed ``hf:`` spec.
    """
    spec = str(spec)
    if spec == "wikipedia":
        from groupbert.data.corpus import wikipedia_sample_path   # corpus imports this module

        return [_input_file(str(wikipedia_sample_path()))]
    for prefix, streaming in (("hf:", False), ("hf-streaming:", True)):
        if spec.startswith(prefix):
            parts = spec[len(prefix):].split(":")
            if not parts[0] or len(parts) > 3:
                raise DataError(f"bad dataset source {spec!r}: expected {prefix}NAME[:CONFIG[:SPLIT]]")
            config = parts[1] if len(parts) > 1 and parts[1] else None
            split = parts[2] if len(parts) > 2 and parts[2] else "train"
            return HFInput(parts[0], config, split, streaming)
    return [_input_file(p) for p in _expand_paths(spec)]


def _expand_paths(spec: str) -> list[str]:
    path = os.path.abspath(os.path.expanduser(spec))
    if os.path.isfile(path):
        return [path]          # a file named explicitly is read whatever its name
    if os.path.isdir(path):
        files, skipped = _walk(path)
        if not files:
            raise DataError(
                f"corpus directory {path} holds no corpus files (*.txt, *.text, *.jsonl, *.json, *.xml, "
                f"optionally .gz/.bz2, other *.gz/*.bz2, WikiExtractor wiki_NN){_skipped_note(skipped)}"
            )
        _log_skipped(skipped, path)
        return files
    if any(c in spec for c in "*?["):
        matches = sorted(glob.glob(path, recursive=True))
        if not matches:
            raise DataError(f"no files match the corpus pattern {spec!r}")
        found: set[str] = set()
        skipped = []
        for match in matches:
            if os.path.isdir(match):
                more, more_skipped = _walk(match)
                found.update(more)
                skipped += more_skipped
            elif _is_corpus_name(os.path.basename(match)):
                found.add(match)
            else:
                skipped.append(match)
        if not found:
            raise DataError(f"the corpus pattern {spec!r} matches no corpus files{_skipped_note(skipped)}")
        _log_skipped(skipped, spec)
        return sorted(found)
    raise DataError(f"corpus file not found: {path}")


def _walk(root: str) -> tuple[list[str], list[str]]:
    """Corpus files under ``root`` (recursive, hidden files and folders skipped), sorted by path."""
    files, skipped = [], []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if name.startswith("."):
                continue
            (files if _is_corpus_name(name) else skipped).append(os.path.join(folder, name))
    return sorted(files), sorted(skipped)


def _is_corpus_name(name: str) -> bool:
    return (
        name.endswith(_COMPRESSION_SUFFIXES)
        or name.endswith(_CORPUS_SUFFIXES)
        or _WIKIEXTRACTOR_NAME_RE.fullmatch(name) is not None
    )


def _skipped_note(skipped: list[str]) -> str:
    return f"; skipped {len(skipped)} other files, e.g. {skipped[0]}" if skipped else ""


def _log_skipped(skipped: list[str], where: str) -> None:
    if skipped:
        logger.info("%s: skipped %d files that are not corpus files, e.g. %s", where, len(skipped), skipped[0])


def _input_file(path: str) -> InputFile:
    try:
        stat = os.stat(path)
        with open(path, "rb") as f:
            magic = f.read(10)
            f.seek(0)
            compression = _compression(magic)
            if compression == "gz":
                head = gzip.GzipFile(fileobj=f).read(_SNIFF_BYTES)
            elif compression == "bz2":
                head = bz2.BZ2File(f).read(_SNIFF_BYTES)
            else:
                head = f.read(_SNIFF_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read corpus file {path}: {exc}") from exc
    return InputFile(path, stat.st_size, stat.st_mtime_ns, _sniff_format(path, head), compression)


def _compression(magic: bytes) -> Optional[str]:
    """From the first 10 bytes: gzip's 1f 8b, or bz2's "BZh1".."BZh9" followed by a block's magic
    (or the end-of-stream magic of an empty stream)."""
    if magic[:2] == b"\x1f\x8b":
        return "gz"
    if _BZ2_HEAD_RE.match(magic):
        return "bz2"
    return None


def _sniff_format(path: str, head: bytes) -> str:
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    if _XML_HEAD_RE.match(text):
        return "wiki-xml"
    start = text.lstrip()
    if start.startswith("<doc "):
        return "wikiextractor"
    name = os.path.basename(path)
    for suffix in _COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    ext = os.path.splitext(name)[1].lower()
    if ext in (".jsonl", ".json"):
        return "jsonl"
    if start.startswith("{") and ext not in (".txt", ".text"):   # a .txt file may start with "{{Infobox"
        return "jsonl"
    return "text"


# --------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------

def plan_pieces(spec: str, piece_bytes: int, *, cache_dir: Optional[str] = None) -> list[Piece]:
    """Cut the input into pieces of about ``piece_bytes`` that together hold every document once.

    Deterministic for the same input and ``piece_bytes``. Empty files give no piece. ``cache_dir`` is
    where ``datasets`` keeps hf datasets (its default cache when None).
    """
    if piece_bytes < 1:
        raise DataError(f"piece_bytes must be >= 1, got {piece_bytes}")
    resolved = resolve_inputs(spec)
    if isinstance(resolved, HFInput):
        ranges = _plan_hf(resolved, piece_bytes, cache_dir)
        return [Piece(i, resolved.spec, "hf", None, a, b, n) for i, (a, b, n) in enumerate(ranges)]
    pieces: list[Piece] = []
    for f in resolved:
        if f.size == 0:
            continue
        if f.compression == "gz":
            cuts = [0]
        elif f.compression == "bz2":
            cuts = _bz2_cuts(f.path, f.size, max(1, piece_bytes // 4)) if f.size > piece_bytes // 4 else [0]
        else:
            cuts = _text_cuts(f, piece_bytes) if f.size > piece_bytes else [0]
        for j, start in enumerate(cuts):
            end = cuts[j + 1] if j + 1 < len(cuts) else -1
            size = (end if end >= 0 else f.size) - start
            pieces.append(Piece(len(pieces), f.path, f.format, f.compression, start, end, size))
    return pieces


def _bz2_cuts(path: str, size: int, step: int) -> list[int]:
    """Stream starts, the first at or after each nominal offset ``step`` past the previous cut."""
    cuts = [0]
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            while cuts[-1] + step < size:
                m = _BZ2_STREAM_RE.search(mm, cuts[-1] + step)
                if m is None:
                    break
                cuts.append(m.start())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read corpus file {path}: {exc}") from exc
    return cuts


def _text_cuts(f: InputFile, piece_bytes: int) -> list[int]:
    """Document starts about ``piece_bytes`` apart in an uncompressed file."""
    cuts = [0]
    try:
        with open(f.path, "rb", buffering=_BUFFER) as stream:
            while cuts[-1] + piece_bytes < f.size:
                start = _next_document_start(stream, f.format, cuts[-1] + piece_bytes)
                if start is None or start >= f.size:
                    break
                cuts.append(start)
    except OSError as exc:
        raise DataError(f"cannot read corpus file {f.path}: {exc}") from exc
    return cuts


def _next_document_start(stream: BinaryIO, fmt: str, offset: int) -> Optional[int]:
    """The first document start at or after ``offset`` that :class:`_StartFinder` recognises (the
    byte before ``offset`` tells whether ``offset`` begins a line)."""
    stream.seek(offset - 1)
    at_line_start = stream.read(1) == b"\n"
    finder = _StartFinder(fmt)
    for line in _lines(stream, offset, cap=0):
        if line.pos > offset or at_line_start:
            found = finder.feed(line)
            if found is not None:
                return found
    return None


def _plan_hf(hf: HFInput, piece_bytes: int, cache_dir: Optional[str]) -> list[tuple[int, int, int]]:
    ds = _open_hf(hf, cache_dir)
    if hf.streaming:
        return [(k, k + 1, 1) for k in range(ds.num_shards)]
    n = len(ds)
    bytes_per_row = ds.data.nbytes / max(1, ds.data.num_rows)
    step = max(1, int(piece_bytes // max(bytes_per_row, 1.0)))
    return [(a, min(a + step, n), min(a + step, n) - a) for a in range(0, n, step)]


# --------------------------------------------------------------------------------------------------
# Fingerprint
# --------------------------------------------------------------------------------------------------

def input_fingerprint(spec: str, *, cache_dir: Optional[str] = None) -> dict:
    """A JSON-able identity of the input: ``{"files": [{path, size, mtime_ns}, ...]}`` for files; for a
    dataset its name, config, split and mode, ``datasets``' fingerprint (map-style) and the stats of its
    files when ``NAME`` is a local path."""
    resolved = resolve_inputs(spec)
    if not isinstance(resolved, HFInput):
        return {"files": [{"path": f.path, "size": f.size, "mtime_ns": f.mtime_ns} for f in resolved]}
    ds = _open_hf(resolved, cache_dir)
    files = []
    if os.path.exists(resolved.name):
        if os.path.isfile(resolved.name):
            paths = [os.path.abspath(resolved.name)]
        else:
            paths = sorted(sum(_walk(os.path.abspath(resolved.name)), []))    # data files and all
        for p in paths:
            stat = os.stat(p)
            files.append({"path": p, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return {
        "hf": {"name": resolved.name, "config": resolved.config, "split": resolved.split,
               "streaming": resolved.streaming},
        "fingerprint": getattr(ds, "_fingerprint", None),
        "files": files,
    }


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------

class _Bad(NamedTuple):
    """A skipped document: why, where, and the message of the error it raises in "fail" mode."""

    reason: str
    location: str
    detail: str

    def message(self) -> str:
        return f"{self.location}: {self.detail} [{self.reason}]"


def read_piece(
    piece: Piece,
    *,
    text_field: str = "text",
    max_document_bytes: int = 16 << 20,
    on_bad: Union[str, Collection[str]] = "skip",
    counts: Optional[collections.Counter] = None,
    progress: Optional[Callable[[int], None]] = None,
    cache_dir: Optional[str] = None,
) -> Iterator[RawDocument]:
    """The documents of one piece, in order, holding about ``max_document_bytes`` plus a read buffer.

    ``on_bad``: ``"skip"`` (count the document in ``counts[reason]`` and go on), ``"fail"`` (raise
    :class:`DataError` naming the reason and location) or a collection of the reasons that fail (the
    others are skipped: the loaders of ``corpus`` skip empty documents but stop at malformed ones, as
    they always did). "non_article" and "redirect" never fail. ``progress(n)`` is called about every MiB and at the
    end with the bytes on disk (rows for map-style datasets, 1 per streaming shard) consumed since the
    last call; over the piece they add up to ``piece.size``.

    Raises:
        DataError: a bad document in "fail" mode; a file that cannot be opened or decompressed; a
            dataset that cannot be loaded or lacks ``text_field``.
    """
    if on_bad in ("skip", "fail"):
        fail = frozenset(BAD_REASONS) if on_bad == "fail" else frozenset()
    elif isinstance(on_bad, str) or not set(on_bad) <= set(BAD_REASONS):
        raise DataError(f"on_bad must be 'skip', 'fail' or a set of {BAD_REASONS}, got {on_bad!r}")
    else:
        fail = frozenset(on_bad)
    fail -= _NEVER_FAIL
    if max_document_bytes < 1:
        raise DataError(f"max_document_bytes must be >= 1, got {max_document_bytes}")
    counts = counts if counts is not None else collections.Counter()
    report = _Progress(piece.size, progress, 1 if piece.format == "hf" else _PROGRESS_STEP)
    if piece.format == "hf":
        items = _read_hf(piece, text_field, max_document_bytes, report, cache_dir)
    else:
        items = _read_file(piece, text_field, max_document_bytes, report)
    try:
        for item in items:
            if isinstance(item, _Bad):
                counts[item.reason] += 1
                if item.reason in fail:
                    raise DataError(item.message())
                continue
            yield item
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read corpus file {piece.source}: {exc}") from exc
    finally:
        items.close()
    report.finish()


class _Progress:
    """Turns "consumed so far" into ``progress(delta)`` calls about every MiB, summing to the total."""

    def __init__(self, total: int, callback: Optional[Callable[[int], None]], step: int = _PROGRESS_STEP):
        self.total, self.callback, self.step, self.sent = total, callback, step, 0

    def at(self, consumed: int) -> None:
        if self.callback is not None:
            consumed = min(consumed, self.total)
            if consumed - self.sent >= self.step:
                self.callback(consumed - self.sent)
                self.sent = consumed

    def finish(self) -> None:
        if self.callback is not None and self.total > self.sent:
            self.callback(self.total - self.sent)
            self.sent = self.total


# ---- bytes of a file, decompressed -------------------------------------------------------------------

class _Bz2Streams(io.RawIOBase):
    """The decompressed bytes of the bz2 streams from compressed offset ``start`` on, as many as are read
    (a range piece reads past its end to finish its last document); one ``BZ2Decompressor`` per stream.

    ``boundary``: the decompressed offset (counted from ``start``) where the stream at compressed offset
    ``end`` begins, once decompression gets there. ``fed``: the file offset read up to.
    """

    def __init__(self, f: BinaryIO, path: str, start: int, end: int):
        self.f, self.path, self.end = f, path, end
        f.seek(start)
        self.fed = start
        self.out = 0
        self.boundary: Optional[int] = None
        self.pending = b""                    # input read past the end of the previous stream
        self.dec = bz2.BZ2Decompressor()
        self.done = not self._begin_stream(start, first=True)

    def readable(self) -> bool:
        return True

    def _begin_stream(self, offset: int, first: bool = False) -> bool:
        while len(self.pending) < 10:
            more = self.f.read(_READ_CHUNK)
            if not more:
                break
            self.fed += len(more)
            self.pending += more
        if not self.pending:
            return False
        if _compression(self.pending[:10]) != "bz2":
            if first:
                raise DataError(f"{self.path}: no bz2 stream starts at byte {offset} (was the file changed?)")
            logger.warning("%s: ignoring what follows the last bz2 stream (byte %d on)", self.path, offset)
            return False
        if offset == self.end:
            self.boundary = self.out
        self.dec = bz2.BZ2Decompressor()
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.done:
            if self.dec.eof:
                self.pending = self.dec.unused_data
                if not self._begin_stream(self.fed - len(self.pending)):
                    self.done = True
                    break
            if self.pending:
                data, self.pending = self.pending, b""
            elif self.dec.needs_input:
                data = self.f.read(_READ_CHUNK)
                if not data:
                    raise EOFError("compressed file ended before the end-of-stream marker was reached")
                self.fed += len(data)
            else:
                data = b""
            chunk = self.dec.decompress(data, len(buffer))
            if chunk:
                buffer[: len(chunk)] = chunk
                self.out += len(chunk)
                return len(chunk)
        return 0


class _Opened(NamedTuple):
    stream: BinaryIO                               # decompressed bytes from the piece's start
    consumed: Callable[[], int]                    # bytes on disk read since the piece's start
    boundary: Callable[[], Optional[int]]          # bz2 ranges: see _Bz2Streams.boundary
    closers: list


def _open_piece(piece: Piece) -> _Opened:
    f = open(piece.source, "rb", buffering=_BUFFER)
    try:
        if piece.compression == "gz":
            g = gzip.GzipFile(fileobj=f, mode="rb")
            return _Opened(g, f.tell, lambda: None, [g, f])
        if piece.compression == "bz2":
            raw = _Bz2Streams(f, piece.source, piece.start, piece.end)
            stream = io.BufferedReader(raw, _BUFFER)
            return _Opened(stream, lambda: raw.fed - piece.start, lambda: raw.boundary, [stream, f])
        f.seek(piece.start)
        return _Opened(f, lambda: f.tell() - piece.start, lambda: None, [f])
    except BaseException:
        f.close()
        raise


class _Line(NamedTuple):
    pos: int                  # offset of the line's first byte (file offset, or from a bz2 range's start)
    lineno: int               # 1-based, counted from the piece's start
    data: Optional[bytes]     # without the line break; None when longer than the cap
    head: bytes               # the first fragment as read (up to _FRAGMENT bytes)
    blank: bool               # only whitespace


def _is_blank(fragment: bytes) -> bool:
    s = fragment.strip()
    if not s:
        return True
    if s[0] < 0x80 and not 0x1C <= s[0] <= 0x1F:      # str.isspace() also holds for \x1c-\x1f
        return False
    return not s.decode("utf-8", errors="replace").strip()


def _lines(stream: BinaryIO, pos: int, cap: int, stop: int = -1,
           tick: Optional[Callable[[int], None]] = None) -> Iterator[_Line]:
    """The lines from ``stream`` (positioned at ``pos``) that start before ``stop``, read in fragments so
    that a line longer than ``cap`` is never held whole. A BOM at offset 0 is dropped."""
    readline = stream.readline
    lineno = 0
    next_tick = pos + _PROGRESS_STEP
    while stop < 0 or pos < stop:
        head = readline(_FRAGMENT)
        if not head:
            return
        lineno += 1
        start = pos
        pos += len(head)
        complete = head[-1:] == b"\n" or len(head) < _FRAGMENT
        if start == 0 and head.startswith(_BOM):
            head = head[len(_BOM):]
        blank = _is_blank(head)
        data: Optional[bytes] = head
        if not complete:                                 # a long line: the rest in fragments
            parts: Optional[list[bytes]] = [head]
            n = len(head)
            while True:
                more = readline(_FRAGMENT)
                if not more:
                    break
                pos += len(more)
                n += len(more)
                blank = blank and _is_blank(more)
                if parts is not None:
                    if n <= cap + 2:
                        parts.append(more)
                    else:
                        parts = None
                if more[-1:] == b"\n" or len(more) < _FRAGMENT:
                    break
            data = b"".join(parts) if parts is not None else None
        if data is not None:
            if data[-1:] == b"\n":
                data = data[:-2] if data[-2:] == b"\r\n" else data[:-1]
            if len(data) > cap:
                data = None
        yield _Line(start, lineno, data, head, blank)
        if tick is not None and pos >= next_tick:
            tick(pos)
            next_tick = pos + _PROGRESS_STEP


class _StartFinder:
    """Finds document starts from lines whose start is known, without any context before them.

    Fed the lines after a position ``u`` whose line start is known (every line but the one containing
    ``u``), it returns the first document start it can be sure of: jsonl, the first line; wikiextractor,
    the first ``<doc `` line; text, the first non-blank line after a blank line; wiki-xml (uncompressed
    plans only), the first line whose stripped content starts with ``<page>``. Both the reader of a bz2
    range and the reader of the range before it run this from the range's start, so they agree on
    where one's documents end and the other's begin.
    """

    def __init__(self, fmt: str):
        self.fmt = fmt
        self.after_blank = False

    def feed(self, line: _Line) -> Optional[int]:
        if self.fmt == "jsonl":
            return line.pos
        if self.fmt == "wikiextractor":
            return line.pos if line.head.startswith(b"<doc ") else None
        if self.fmt == "wiki-xml":
            return line.pos if line.head.lstrip().startswith(_PAGE_OPEN) else None
        if line.blank:
            self.after_blank = True
            return None
        return line.pos if self.after_blank else None


class _Range:
    """The lines of a piece, and where its documents end.

    Exact pieces (uncompressed byte ranges, whole compressed files) start at a document start, and an
    uncompressed range ends at one (the plan put them there). A bz2 range starts at a stream start: the
    lines before the first document start that :class:`_StartFinder` sees from there are skipped, and
    reading goes on past the end stream's start until the finder, run from there, sees a document start.
    """

    def __init__(self, fmt: str, skip_head: bool, boundary: Callable[[], Optional[int]], stop: int):
        self.fmt, self.skip_head, self.boundary, self.stop = fmt, skip_head, boundary, stop
        self.end_finder = _StartFinder(fmt)
        self.end_at: Optional[int] = None

    def lines(self, lines: Iterator[_Line]) -> Iterator[_Line]:
        head = _StartFinder(self.fmt) if self.skip_head else None
        for line in lines:
            if self.end_at is None:
                u = self.boundary()
                if u is not None and line.pos > u:
                    self.end_at = self.end_finder.feed(line)
            if head is not None:      # the line at offset 0 may be the tail of one before the range
                if line.pos == 0 or head.feed(line) is None:
                    continue
                head = None
            yield line

    def ended(self, pos: int) -> bool:
        """Whether a document starting at ``pos`` belongs to a later piece."""
        if self.stop >= 0 and pos >= self.stop:
            return True
        return self.end_at is not None and pos >= self.end_at


# ---- the formats ------------------------------------------------------------------------------------

class _Context(NamedTuple):
    piece: Piece
    name: str                 # file name, for titles
    text_field: str
    max_bytes: int

    def where(self, pos: int, lineno: int) -> str:
        """Location of a line for messages: exact line numbers when the piece starts the file."""
        p = self.piece
        if p.start == 0:
            return f"{p.source}:{lineno}"
        if p.compression == "bz2":
            return f"{p.source} (bz2 stream at byte {p.start}, decompressed byte {pos})"
        return f"{p.source} (byte {pos})"

    def title(self, pos: int, number: int, sep: str) -> str:
        """A title for a document without one: its number (line or block) when the piece starts the
        file, else its offset."""
        p = self.piece
        if p.start == 0:
            return f"{self.name}{sep}{number}"
        return f"{self.name}@{p.start}+{pos}" if p.compression == "bz2" else f"{self.name}@{pos}"

    def decode(self, data: bytes, location: str) -> Union[str, _Bad]:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _Bad("undecodable", location,
                        f"not valid UTF-8 ({exc.reason} at byte {exc.start} of the document)")

    def too_long(self, location: str) -> _Bad:
        return _too_long(location, self.max_bytes)


def _too_long(location: str, max_bytes: int) -> _Bad:
    return _Bad("too_long", location, f"document longer than max_document_bytes={max_bytes}")


def _read_file(piece: Piece, text_field: str, max_bytes: int, report: _Progress) -> Iterator[Any]:
    opened = _open_piece(piece)
    try:
        ctx = _Context(piece, os.path.basename(piece.source), text_field, max_bytes)
        stop, base = (piece.end, piece.start) if piece.compression is None else (-1, 0)
        ranged = piece.compression == "bz2" and (piece.start > 0 or piece.end >= 0)
        boundary = opened.boundary if ranged else (lambda: None)
        tick = lambda _pos: report.at(opened.consumed())   # noqa: E731
        if piece.format == "wiki-xml":
            yield from _wiki_pages(opened.stream, base, stop, boundary, tick, ctx)
            return
        parse = {"text": _text_documents, "jsonl": _jsonl_documents, "wikiextractor": _wikiextractor_documents}
        if piece.format not in parse:
            raise DataError(f"{piece.source}: unknown format {piece.format!r}")
        bounds = _Range(piece.format, ranged and piece.start > 0, boundary, stop)
        lines = bounds.lines(_lines(opened.stream, base, max_bytes, stop, tick))
        yield from parse[piece.format](lines, bounds, ctx)
    finally:
        for closer in opened.closers:
            closer.close()


def _text_documents(lines: Iterator[_Line], bounds: _Range, ctx: _Context) -> Iterator[Any]:
    block: Optional[list[bytes]] = []
    first: Optional[_Line] = None
    size, number = 0, 0

    def finish() -> Any:
        location = ctx.where(first.pos, first.lineno)
        if block is None:
            return ctx.too_long(location)
        text = ctx.decode(b"\n".join(block), location)
        if isinstance(text, _Bad):
            return text
        return RawDocument(ctx.title(first.pos, number, "#"), text, False, location)

    for line in lines:
        if line.blank:
            if first is not None:
                yield finish()
                first, block, size = None, [], 0
            continue
        if first is None:
            if bounds.ended(line.pos):
                return
            first, number = line, number + 1
        if block is not None:
            size += (len(line.data) + 1) if line.data is not None else ctx.max_bytes + 2
            if size > ctx.max_bytes + 1:
                block = None
            else:
                block.append(line.data)
    if first is not None:
        yield finish()


def _jsonl_documents(lines: Iterator[_Line], bounds: _Range, ctx: _Context) -> Iterator[Any]:
    field = ctx.text_field
    for line in lines:
        if line.blank:
            continue
        if bounds.ended(line.pos):
            return
        location = ctx.where(line.pos, line.lineno)
        if line.data is None:
            yield ctx.too_long(location)
            continue
        text = ctx.decode(line.data, location)
        if isinstance(text, _Bad):
            yield text
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            yield _Bad("malformed", location, f"malformed JSON line ({exc.msg})")
            continue
        if not isinstance(record, dict):
            yield _Bad("malformed", location, f"expected a JSON object, got {type(record).__name__}")
            continue
        value = record.get(field)
        if not isinstance(value, str):
            yield _Bad("malformed", location, f"no string field {field!r} (fields: {sorted(record)}); "
                                              "set the text field name in the data config")
            continue
        if not value.strip():
            yield _Bad("empty", location, "empty document")
            continue
        title = record.get("title")
        yield RawDocument(str(title) if title else ctx.title(line.pos, line.lineno, ":"), value, False, location)


@dataclass
class _OpenDoc:
    """A WikiExtractor ``<doc>`` being read."""

    title: str
    location: str
    paragraphs: Optional[list[bytes]]     # None once over the size limit
    size: int = 0
    title_line: bool = True               # the next non-blank line repeats the title


def _wikiextractor_documents(lines: Iterator[_Line], bounds: _Range, ctx: _Context) -> Iterator[Any]:
    doc: Optional[_OpenDoc] = None

    def finish(doc: _OpenDoc) -> Any:
        if doc.paragraphs is None:
            return ctx.too_long(doc.location)
        text = ctx.decode(b"\n".join(doc.paragraphs), doc.location)
        if isinstance(text, _Bad):
            return text
        if not text.strip():
            return _Bad("empty", doc.location, "empty document")
        return RawDocument(doc.title, text, False, doc.location)

    for line in lines:
        if line.head.startswith(b"<doc "):
            if doc is not None:
                yield _Bad("malformed", doc.location, "<doc> without </doc>")
            if bounds.ended(line.pos):
                return
            m = _DOC_TITLE_RE.search(line.data if line.data is not None else line.head)
            title = html.unescape(m.group(1).decode("utf-8", errors="replace")) if m else ""
            where = ctx.where(line.pos, line.lineno)
            doc = _OpenDoc(title or ctx.title(line.pos, line.lineno, ":"), f"{where} ({title!r})", [])
        elif doc is None or line.blank:
            continue
        elif line.head.startswith(b"</doc>"):
            yield finish(doc)
            doc = None
        elif doc.title_line and line.data is not None and \
                line.data.strip().decode("utf-8", errors="replace") == doc.title:
            doc.title_line = False
        elif doc.paragraphs is not None:
            doc.title_line = False
            doc.size += (len(line.data) + 1) if line.data is not None else ctx.max_bytes + 2
            if doc.size > ctx.max_bytes + 1:
                doc.paragraphs = None
            else:
                doc.paragraphs.append(line.data.strip())
    if doc is not None:
        yield _Bad("malformed", doc.location, "<doc> without </doc> at the end of the input")


def _wiki_pages(stream: BinaryIO, base: int, stop: int, boundary: Callable[[], Optional[int]],
                tick: Callable[[int], None], ctx: _Context) -> Iterator[Any]:
    """The pages of a MediaWiki XML stream. Each ``<page>`` … ``</page>`` span (page text escapes ``<``,
    so neither tag occurs inside a page) is parsed on its own, so a fragment of a dump (a bz2 range, a
    file without the ``<mediawiki>`` header) reads the same as the whole. A page belongs to the piece
    where its ``<page>`` starts: before ``stop`` (uncompressed ranges) or before the boundary stream
    (bz2 ranges)."""
    buf = bytearray()
    pos = base                 # offset of buf[0]
    next_tick = base + _PROGRESS_STEP

    def fill() -> bool:
        nonlocal next_tick
        n = _READ_CHUNK if stop < 0 else min(_READ_CHUNK, stop - pos - len(buf))
        chunk = stream.read(n) if n > 0 else b""
        if not chunk:
            return False
        buf.extend(chunk)
        if pos + len(buf) >= next_tick:
            tick(pos + len(buf))
            next_tick = pos + len(buf) + _PROGRESS_STEP
        return True

    def drop(n: int) -> None:
        nonlocal pos
        del buf[:n]
        pos += n

    while True:
        i = buf.find(_PAGE_OPEN)
        if i < 0:                                         # between pages: keep a possible partial tag
            drop(max(0, len(buf) - len(_PAGE_OPEN) + 1))
            if not fill():
                return
            continue
        drop(i)
        u = boundary()
        if (stop >= 0 and pos >= stop) or (u is not None and pos >= u):
            return
        start, scanned, title = pos, len(_PAGE_OPEN), None   # title is set once the page is too long
        while True:                                       # find this page's end
            close = buf.find(_PAGE_CLOSE, scanned)
            reopen = buf.find(_PAGE_OPEN, scanned)
            if reopen >= 0 and (close < 0 or reopen < close):
                where = _page_location(ctx, title if title is not None else _page_title(buf[:reopen]), start)
                yield _Bad("malformed", where, "<page> without </page>")
                drop(reopen)
                break
            if close >= 0:
                end = close + len(_PAGE_CLOSE)
                if title is None and end > ctx.max_bytes:
                    title = _page_title(buf)
                yield _parse_page(bytes(buf[:end]), start, ctx) if title is None else \
                    ctx.too_long(_page_location(ctx, title, start))
                drop(end)
                break
            if title is None and len(buf) > ctx.max_bytes:
                title = _page_title(buf)
            if title is not None:                         # too long: keep only a possible partial tag
                drop(max(0, len(buf) - len(_PAGE_CLOSE) + 1))
                scanned = 0
            else:
                scanned = max(len(_PAGE_OPEN), len(buf) - len(_PAGE_CLOSE) + 1)
            if not fill():
                where = _page_location(ctx, title if title is not None else _page_title(buf), start)
                yield _Bad("malformed", where, "<page> without </page> at the end of the input")
                return


def _page_title(span: Union[bytes, bytearray]) -> bytes:
    m = _XML_TITLE_RE.search(span, 0, 1 << 16)
    return bytes(m.group(1)) if m else b""


def _page_location(ctx: _Context, title: bytes, start: int) -> str:
    if title:
        return f"{ctx.piece.source} page {html.unescape(title.decode('utf-8', errors='replace'))!r}"
    if ctx.piece.compression == "bz2" and ctx.piece.start > 0:
        return f"{ctx.piece.source} (bz2 stream at byte {ctx.piece.start}) page at decompressed byte {start}"
    return f"{ctx.piece.source} page at byte {start}"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse_page(span: bytes, start: int, ctx: _Context) -> Any:
    location = _page_location(ctx, _page_title(span), start)
    text = ctx.decode(span, location)
    if isinstance(text, _Bad):
        return text
    try:
        page = ET.fromstring(text)
    except ET.ParseError as exc:
        return _Bad("malformed", location, f"page is not well-formed XML ({exc})")
    title, namespace, redirect, wikitext = "", "0", False, ""
    for child in page:
        name = _local(child.tag)
        if name == "title":
            title = child.text or ""
        elif name == "ns":
            namespace = (child.text or "").strip()
        elif name == "redirect":
            redirect = True
        elif name == "revision":                    # the last one: the newest, in a history dump
            for sub in child:
                if _local(sub.tag) == "text":
                    wikitext = sub.text or ""
    location = f"{ctx.piece.source} page {title!r}"
    if namespace != "0":
        return _Bad("non_article", location, f"namespace {namespace}")
    if redirect or wikitext.lstrip().upper().startswith("#REDIRECT"):
        return _Bad("redirect", location, "redirect")
    if not wikitext.strip():
        return _Bad("empty", location, "empty page")
    return RawDocument(title, wikitext, True, location)


# ---- datasets ---------------------------------------------------------------------------------------

def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file()
        or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())
    )


@functools.lru_cache(maxsize=4)
def _open_hf(hf: HFInput, cache_dir: Optional[str]) -> Any:
    """The dataset (opened once per process: workers read many pieces of it)."""
    try:
        import datasets
    except ImportError as exc:   # pragma: no cover - datasets is a hard dependency
        raise DataError(f"loading dataset {hf.label!r} needs the `datasets` package") from exc
    try:
        if not hf.streaming and _is_saved_dataset(Path(hf.name)):
            ds = datasets.load_from_disk(hf.name)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[hf.split]
            return ds
        return datasets.load_dataset(hf.name, hf.config, split=hf.split, streaming=hf.streaming,
                                     cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ConnectionError, KeyError...)
        raise DataError(f"cannot load dataset {hf.label!r}: {type(exc).__name__}: {exc}") from exc


def _read_hf(piece: Piece, text_field: str, max_bytes: int, report: _Progress,
             cache_dir: Optional[str]) -> Iterator[Any]:
    hf = resolve_inputs(piece.source)
    if not isinstance(hf, HFInput):
        raise DataError(f"piece {piece.index}: {piece.source!r} is not a dataset spec")
    ds = _open_hf(hf, cache_dir)
    columns = ds.column_names            # None for some streaming datasets: checked on the first row
    if columns is not None and text_field not in columns:
        raise DataError(f"dataset {hf.label!r} has no column {text_field!r} (columns: {columns})")
    wanted = [text_field] + (["title"] if columns is not None and "title" in columns else [])

    def document(row: dict, name: str) -> Any:
        location = f"{hf.spec}[{name}]"
        if text_field not in row:
            raise DataError(f"dataset {hf.label!r} has no column {text_field!r} (columns: {sorted(row)})")
        text = row[text_field]
        if text is None:                 # a missing value, as an empty one
            return _Bad("empty", location, "no text")
        if not isinstance(text, str):
            return _Bad("malformed", location, f"{text_field!r} is a {type(text).__name__}, not a string")
        if len(text) > max_bytes or (4 * len(text) > max_bytes and len(text.encode("utf-8")) > max_bytes):
            return _too_long(location, max_bytes)
        if not text.strip():
            return _Bad("empty", location, "empty document")
        title = row.get("title")
        return RawDocument(str(title) if title else f"{hf.label}[{name}]", text, False, location)

    try:
        if hf.streaming:
            shard = ds.shard(num_shards=ds.num_shards, index=piece.start)
            if columns is not None:
                shard = shard.select_columns(wanted)
            for i, row in enumerate(shard):
                yield document(row, f"{piece.start}:{i}")
            return
        table = ds.select_columns(wanted)
        bytes_per_row = ds.data.nbytes / max(1, ds.data.num_rows)
        batch = max(1, min(1024, int(_HF_BATCH_BYTES // max(bytes_per_row, 1.0))))
        for a in range(piece.start, piece.end, batch):
            b = min(a + batch, piece.end)
            rows = table[a:b]
            for i in range(b - a):
                yield document({k: rows[k][i] for k in rows}, str(a + i))
            report.at(b - piece.start)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many types while reading (CastError, ArrowInvalid, OSError...)
        raise DataError(f"cannot read dataset {hf.label!r} (piece {piece.index}): {type(exc).__name__}: "
                        f"{exc}") from exc
