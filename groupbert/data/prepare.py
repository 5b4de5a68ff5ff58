"""Prepare a pretraining corpus once: streamed, sharded, in parallel, restartable.

    python -m groupbert.data.prepare --config configs/groupbert/base_phase1.yaml \\
        --set data.corpus='dumps/enwiki-*-pages-articles*.bz2' --output data/wiki-128 [--num-proc N]
    python -m groupbert.data.prepare ... --shard-index I --num-shards N     # machine I of N
    python -m groupbert.data.prepare --merge DIR [DIR ...] --output DIR     # join the machines' parts
    python -m groupbert.data.prepare --verify DIR                           # re-hash every shard

The input (``data.corpus``: text/JSONL files, ``.gz``/``.bz2``, directories, globs, a Wikipedia XML dump,
WikiExtractor output, ``datasets`` datasets) is cut into *pieces* (``groupbert.data.sources``: byte ranges at
document starts, whole compressed files, bz2 streams of a multistream dump, dataset rows). A pool of
worker processes reads them, each piece on its own, never holding more than about ``data.shard_size_mb``
of text: clean the text, split sentences, tokenise in batches (Rust ``tokenizers``; tiktoken for GPT-2),
hold out ``data.validation_fraction`` of the documents, build the MLM + NSP instances or the causal-LM
token stream (vectorised numpy, ``groupbert.data.masked_lm``) and write one shard per split
(``groupbert.data.shards``). Memory is bounded by the shard size times the workers, whatever the corpus.

The output directory holds ``prepare.json`` (the settings and inputs, written first: a restart with
anything different is refused), ``shards/`` (each written to a temporary name and renamed), ``done/``
(a record per finished part and piece, written after its shards) and, last and atomically,
``manifest.json`` (settings, tokenizer and vocabulary hash, counts, every shard's size, sha256 and length
histogram, the documents skipped per reason). A killed run started again skips every finished piece and
part and never rewrites a finished shard. With ``--shard-index I --num-shards N`` a machine prepares the
pieces ``I, I + N, ...`` and writes ``manifest-part-I-of-N.json``; ``--merge`` checks that the parts agree and
cover every piece once and writes one ``manifest.json`` whose shard paths are relative to it.

Training reads the result with ``data.prepared: DIR`` (``groupbert.data.prepared``). Without it, the
training run prepares ``data.corpus`` through this same code into ``data.cache_dir`` (keyed by the inputs
and settings) and reuses it next time.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import queue as queue_module
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from groupbert.data.errors import DataError

logger = logging.getLogger(__name__)

FORMAT = "groupbert-prepared"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PLAN = "prepare.json"
SPLITS = ("train", "validation")


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PrepareSettings:
    """Everything that decides what a preparation writes (``data.*`` keys of the run config)."""
    kind: str                       # "mlm_nsp" (BERT, GroupBERT) | "causal_lm" (GPT-2)
    corpus: str
    text_field: str = "text"
    max_documents: Optional[int] = None
    vocab_file: Optional[str] = None
    merges_file: Optional[str] = None
    lowercase: bool = True
    seq_len: int = 128
    max_predictions: int = 20
    mask_prob: float = 0.15
    short_seq_prob: float = 0.1
    dupe_factor: int = 1
    masking: str = "static"
    whole_word_masking: bool = False
    seed: int = 12345
    validation_fraction: float = 0.05
    shard_size_mb: float = 16.0
    bad_documents: str = "skip"
    max_document_mb: float = 16.0

    @classmethod
    def from_config(cls, cfg) -> "PrepareSettings":
        kind = "causal_lm" if cfg.model.type == "gpt2" else "mlm_nsp"
        d = cfg.data
        return cls(kind=kind, **{f.name: getattr(d, f.name) for f in fields(cls) if f.name != "kind"})

    def content(self) -> dict:
        """The settings the output depends on (the vocabulary is identified by its hash, not its path)."""
        keys = ["corpus", "text_field", "max_documents", "seed", "validation_fraction", "shard_size_mb",
                "bad_documents", "max_document_mb"]
        if self.kind == "mlm_nsp":
            keys += ["lowercase", "seq_len", "short_seq_prob", "dupe_factor", "masking"]
            if self.masking == "static":
                keys += ["max_predictions", "mask_prob", "whole_word_masking"]
        return {"kind": self.kind, **{k: getattr(self, k) for k in keys}}


def tokenizer_for(settings: PrepareSettings):
    """(tokenizer used by the workers, manifest entry with the vocabulary hash checkpoints record)."""
    if settings.kind == "causal_lm":
        from groupbert.data.causal_lm import BPEEncoder, bpe_fingerprint, load_gpt2_bpe

        encoder = BPEEncoder(settings.vocab_file, settings.merges_file)
        n = load_gpt2_bpe(settings.vocab_file, settings.merges_file).get_vocab_size()
        return encoder, {"type": "byte-level-bpe", "vocab_file": settings.vocab_file or "gpt2 (bundled)",
                         "vocab_sha256": bpe_fingerprint(settings.vocab_file, settings.merges_file),
                         "vocab_size": n, "encoder": encoder.name}
    from groupbert.data.tokenizer import (bundled_vocab_file, load_wordpiece, tokenizer_fingerprint,
                                          vocab_fingerprint)

    vocab = Path(settings.vocab_file) if settings.vocab_file else bundled_vocab_file()
    tok = load_wordpiece(vocab, lowercase=settings.lowercase)
    return tok, {"type": "wordpiece", "vocab_file": str(vocab), "vocab_sha256": vocab_fingerprint(vocab),
                 "tokenizer_sha256": tokenizer_fingerprint(tok),
                 "vocab_size": tok.get_vocab_size(with_added_tokens=True)}


def _inputs_identity(fingerprint: dict) -> dict:
    """What must agree between a restart, or the machines of one preparation: the files by name relative
    to their common folder and size (not absolute paths or mtimes, which differ between machines)."""
    files = fingerprint.get("files")
    if not files:
        return {k: v for k, v in fingerprint.items() if k != "mtime_ns"}
    root = os.path.commonpath([os.path.dirname(f["path"]) for f in files])
    return {"files": [[os.path.relpath(f["path"], root), f["size"]] for f in files]}


# --------------------------------------------------------------------------------------------------
# One piece, in a worker process
# --------------------------------------------------------------------------------------------------

class _Worker:
    """Per-process state: settings, tokenizer, output folder, where progress goes."""

    def __init__(self, settings: PrepareSettings, out_dir: Path, report: Callable[[str, int], None]):
        self.settings, self.out_dir, self.report = settings, Path(out_dir), report
        self.tokenizer, _ = tokenizer_for(settings)
        if settings.kind == "mlm_nsp":
            from groupbert.data.masking import MaskingSpec
            from groupbert.data.masked_lm import continuation_table, plain_tokenizer
            from groupbert.data.tokenizer import special_ids

            self.tokenizer = plain_tokenizer(self.tokenizer)
            self.special = special_ids(self.tokenizer)
            vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
            self.mask_spec = MaskingSpec(settings.mask_prob, settings.max_predictions, vocab_size, self.special,
                                         continuation_table(self.tokenizer) if settings.whole_word_masking else None)
        else:
            from groupbert.data.causal_lm import load_gpt2_bpe

            vocab_size = load_gpt2_bpe(settings.vocab_file, settings.merges_file).get_vocab_size()
        from groupbert.data.shards import token_dtype

        self.dtype = token_dtype(vocab_size)


_WORKER: Optional[_Worker] = None


def _init_pool_worker(settings: PrepareSettings, out_dir: str, progress_queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the driver's to handle: it terminates the pool
    # one Rust thread per worker: the pool already uses every core
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _WORKER
    _WORKER = _Worker(settings, Path(out_dir), lambda kind, n: progress_queue.put((kind, n)))


def _run_piece_in_pool(piece) -> dict:
    return process_piece(_WORKER, piece)


def _part_name(piece: int, part: int) -> str:
    return f"{piece:06d}-{part:04d}"


def _piece_record_path(out_dir: Path, piece: int) -> Path:
    return out_dir / "done" / f"{piece:06d}.json"


def _read_record(path: Path, out_dir: Path) -> Optional[dict]:
    """A finished piece's or part's record, if it and every shard it lists are whole."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for shard in record.get("shards", []):
        try:
            if (out_dir / shard["path"]).stat().st_size != shard["bytes"]:
                return None
        except OSError:
            return None
    return record


def process_piece(worker: _Worker, piece, max_documents: Optional[int] = None) -> dict:
    """Read one piece, cut it into parts of about ``shard_size_mb`` of text, write each part's shards and
    record; skip the parts a killed run already finished. Returns the piece's record."""
    from groupbert.data.shards import write_json_atomically
    from groupbert.data.sources import read_piece

    s, out = worker.settings, worker.out_dir
    for tmp in (out / "shards").glob(f".*-{piece.index:06d}-*.tmp"):   # a killed attempt's leftovers
        tmp.unlink(missing_ok=True)
    # A planned piece (a byte range, bz2 streams, dataset rows) holds about one shard of input: one part,
    # with twice that as a safety bound. A whole compressed file or a streaming shard has no known size:
    # a new part every shard_size_mb of text.
    part_bytes = int(s.shard_size_mb * (1 << 20))
    if piece.end >= 0 and not piece.source.startswith("hf-streaming:"):
        part_bytes *= 2
    counts: Counter = Counter()
    records, batch, batch_bytes, n_docs = [], [], 0, 0
    reader = read_piece(piece, text_field=s.text_field, max_document_bytes=int(s.max_document_mb * (1 << 20)),
                        on_bad=s.bad_documents, counts=counts, progress=lambda n: worker.report("bytes", n))

    def flush() -> None:
        part = len(records)
        skipped = Counter(counts)
        counts.clear()
        path = out / "done" / f"{_part_name(piece.index, part)}.json"
        record = _read_record(path, out)
        if record is None:
            record = _build_part(worker, piece.index, part, batch)
            skipped["empty"] += record.pop("empty_after_cleaning")   # no text left once markup is stripped
            record["skipped"] = {k: n for k, n in skipped.items() if n}
            write_json_atomically(path, record)
        worker.report("tokens", sum(record["input_tokens"].values()))
        records.append(record)

    for doc in reader:
        batch.append(doc)
        batch_bytes += len(doc.text)
        n_docs += 1
        if batch_bytes >= part_bytes:
            flush()
            batch, batch_bytes = [], 0
        if max_documents is not None and n_docs >= max_documents:
            break
    if batch or not records:
        flush()
    record = {"piece": piece.index, "documents_read": n_docs,
              "parts": [{k: r[k] for k in ("part", "documents", "input_tokens", "skipped", "text_bytes")}
                        for r in records],
              "shards": [shard for r in records for shard in r["shards"]]}
    write_json_atomically(_piece_record_path(out, piece.index), record)
    return record


def _split_documents(items: list, fraction: float, seed: str) -> tuple[list, list]:
    """Hold out whole documents: ``round(fraction * n)`` of them (at least one when fraction > 0 and
    n >= 2, never all), chosen by a generator seeded per part (``corpus.split_documents``' rule)."""
    n = len(items)
    if fraction == 0.0 or n < 2:
        return items, []
    n_val = min(max(1, round(fraction * n)), n - 1)
    held_out = set(random.Random(seed).sample(range(n), n_val))
    return [x for i, x in enumerate(items) if i not in held_out], [x for i, x in enumerate(items) if i in held_out]


def _build_part(worker: _Worker, piece: int, part: int, docs: list) -> dict:
    from groupbert.data.corpus import document_sentences, document_text

    s = worker.settings
    convert = document_sentences if s.kind == "mlm_nsp" else document_text
    texts, empty = [], 0
    for doc in docs:
        value = convert(doc)
        if value:
            texts.append(value)
        else:
            empty += 1
    train, val = _split_documents(texts, s.validation_fraction, f"{s.seed}:{piece}:{part}:validation")
    record = {"piece": piece, "part": part, "documents": {"train": len(train), "validation": len(val)},
              "empty_after_cleaning": empty, "text_bytes": sum(len(d.text) for d in docs),
              "input_tokens": {}, "shards": []}
    uid = piece * 10_000 + part   # seeds this part's random draws (parts < 10,000 per piece)
    for split, items in (("train", train), ("validation", val)):
        build = _mlm_shard if s.kind == "mlm_nsp" else _causal_shard
        entry, input_tokens = build(worker, items, split, uid, f"shards/{split}-{_part_name(piece, part)}")
        record["input_tokens"][split] = input_tokens
        if entry is not None:
            entry.update(split=split, piece=piece, part=part, documents=len(items))
            record["shards"].append(entry)
    return record


def _mlm_shard(worker: _Worker, documents: list, split: str, uid: int, name: str):
    """Build and write one split's instance shard, unless a killed run already finished it (a complete
    shard file is never rewritten). Returns (manifest entry or None, input tokens)."""
    from groupbert.data.masked_lm import build_instances, static_mask, tokenize_documents
    from groupbert.data.shards import instance_shard_entry, open_instance_shard, write_instance_shard

    s = worker.settings
    path = worker.out_dir / f"{name}.arrow"
    if not documents:
        return None, 0
    if not _is_complete(path, open_instance_shard):
        tokenized = tokenize_documents(documents, worker.tokenizer, dtype=worker.dtype)
        seed = s.seed if split == "train" else s.seed + 1
        instances = build_instances(tokenized, seq_len=s.seq_len, short_seq_prob=s.short_seq_prob,
                                    dupe_factor=s.dupe_factor if split == "train" else 1,
                                    cls=worker.special.cls, sep=worker.special.sep, seed=seed, shard=uid)
        if len(instances) == 0:
            return None, tokenized.num_tokens
        if s.masking == "static":
            instances = static_mask(instances, worker.mask_spec, s.seq_len, seed, shard=uid)
        write_instance_shard(path, instances, worker.dtype, {"format_version": FORMAT_VERSION, "kind": s.kind,
                                                             "seq_len": s.seq_len, "input_tokens": tokenized.num_tokens})
    entry = instance_shard_entry(path, s.seq_len)
    input_tokens = entry.pop("input_tokens")
    return {"path": f"{name}.arrow", **entry}, input_tokens


def _is_complete(path: Path, open_shard) -> bool:
    if not path.exists():
        return False
    try:
        open_shard(path)
        return True
    except DataError:
        return False


_ENCODE_BATCH = 512   # documents per tiktoken/tokenizers call


def _causal_shard(worker: _Worker, texts: list, split: str, uid: int, name: str):
    import itertools

    from groupbert.data.shards import open_token_shard, token_shard_entry, write_token_shard

    if not texts:
        return None, 0
    path = worker.out_dir / f"{name}.bin"
    if not _is_complete(path, open_token_shard):
        eot = worker.tokenizer.eot
        chunks = []
        for start in range(0, len(texts), _ENCODE_BATCH):
            encoded = worker.tokenizer.encode(texts[start:start + _ENCODE_BATCH])
            total = sum(len(e) for e in encoded) + len(encoded)
            stream = itertools.chain.from_iterable(itertools.chain(e, (eot,)) for e in encoded)
            chunks.append(np.fromiter(stream, dtype=worker.dtype, count=total))
        write_token_shard(path, np.concatenate(chunks), worker.dtype, documents=len(texts))
    entry = token_shard_entry(path)
    input_tokens = entry.pop("input_tokens")
    return {"path": f"{name}.bin", **entry}, input_tokens


# --------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------

def default_num_proc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _manifest_name(shard_index: int, num_shards: int) -> str:
    return MANIFEST if num_shards == 1 else f"manifest-part-{shard_index}-of-{num_shards}.json"


def prepare(settings: PrepareSettings, output_dir, *, num_proc: Optional[int] = None, shard_index: int = 0,
            num_shards: int = 1, show_progress: bool = True) -> dict:
    """Prepare ``settings.corpus`` into ``output_dir`` (or this machine's part of it); returns the manifest.
    A finished directory with the same settings and inputs is returned as it is."""
    from groupbert.data.shards import write_json_atomically
    from groupbert.data.sources import input_fingerprint, plan_pieces

    _validate(settings, num_proc, shard_index, num_shards)
    out = Path(output_dir)
    start = time.perf_counter()
    _, tokenizer_entry = tokenizer_for(settings)
    fingerprint = input_fingerprint(settings.corpus)
    pieces = plan_pieces(settings.corpus, int(settings.shard_size_mb * (1 << 20)))
    plan = {"format": FORMAT, "format_version": FORMAT_VERSION, "settings": settings.content(),
            "tokenizer": {k: v for k, v in tokenizer_entry.items() if k != "vocab_file"},
            "inputs": _inputs_identity(fingerprint), "pieces": len(pieces)}
    manifest_path = out / _manifest_name(shard_index, num_shards)
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out / f".lock-{shard_index}-of-{num_shards}"):
        existing = _read_json(out / PLAN)
        if existing is not None:
            _check_same_plan(existing, plan, out)
            done = _read_json(manifest_path)
            if done is not None:
                logger.info("%s is already prepared (%s)", out, _summary(done))
                return done
        else:
            write_json_atomically(out / PLAN, plan)
        return _prepare_pieces(settings, out, pieces, plan, tokenizer_entry, fingerprint, num_proc, shard_index,
                               num_shards, show_progress, start, manifest_path)


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """One preparation of a directory (or of one machine's part of it) at a time: a second one, e.g. a
    sweep agent starting beside another on the same on-the-fly cache, waits and then finds it done."""
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            logger.info("another process is preparing %s; waiting for it", lock_path.parent)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prepare_pieces(settings, out, pieces, plan, tokenizer_entry, fingerprint, num_proc, shard_index, num_shards,
                    show_progress, start, manifest_path) -> dict:
    from groupbert.data.shards import write_json_atomically

    mine = [p for p in pieces if p.index % num_shards == shard_index]
    if settings.max_documents is not None:   # a cap in input order: one process, pieces in turn
        records = _run_capped(settings, out, mine, show_progress)
    else:
        records = _run_pieces(settings, out, mine, num_proc or default_num_proc(), show_progress)
    manifest = _assemble_manifest(plan, records, settings, tokenizer_entry, fingerprint, shard_index, num_shards,
                                  time.perf_counter() - start)
    if num_shards == 1:
        _check_usable(manifest, out)
    write_json_atomically(manifest_path, manifest)
    logger.info("prepared %s: %s", out, _summary(manifest))
    return manifest


def _validate(settings: PrepareSettings, num_proc, shard_index: int, num_shards: int) -> None:
    if settings.kind == "mlm_nsp":
        from groupbert.data.masked_lm import validate_settings

        validate_settings(settings.seq_len, settings.max_predictions, settings.mask_prob, settings.short_seq_prob,
                          settings.dupe_factor)
    if num_proc is not None and num_proc < 1:
        raise DataError(f"--num-proc must be >= 1, got {num_proc}")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise DataError(f"--shard-index {shard_index} must be in [0, --num-shards {num_shards})")


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is unreadable ({exc}); delete it to start that preparation again") from exc


def _check_same_plan(existing: dict, plan: dict, out: Path) -> None:
    for key in ("format_version", "settings", "tokenizer", "inputs", "pieces"):
        if existing.get(key) != plan[key]:
            if key == "settings":
                diff = [f"data.{k}: {existing['settings'].get(k)!r} there, {v!r} now"
                        for k, v in plan["settings"].items() if existing["settings"].get(k) != v]
                detail = "; ".join(diff)
            else:
                detail = f"the {key} differ"
            raise DataError(f"{out} holds a preparation of other inputs or settings ({detail}); resume it with "
                            "the same ones, or choose another --output")


def _run_capped(settings, out, pieces, show_progress) -> list[dict]:
    worker = _Worker(settings, out, lambda kind, n: None)
    records, left = [], settings.max_documents
    for piece in pieces:
        if left <= 0:
            break
        record = process_piece(worker, piece, max_documents=left)
        left -= record["documents_read"]
        records.append(record)
    return records


def _run_pieces(settings: PrepareSettings, out: Path, pieces: list, num_proc: int, show_progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    records = {p.index: _read_record(_piece_record_path(out, p.index), out) for p in pieces}
    todo = [p for p in pieces if records[p.index] is None]
    done_bytes = sum(p.size for p in pieces if records[p.index] is not None)
    if len(todo) < len(pieces):
        logger.info("%d of %d pieces were finished by an earlier run; preparing the other %d",
                    len(pieces) - len(todo), len(pieces), len(todo))
    bar = tqdm(total=sum(p.size for p in pieces), initial=done_bytes, unit="B", unit_scale=True,
               unit_divisor=1024, desc="prepare", disable=not show_progress, dynamic_ncols=True)
    tokens, t0 = 0, time.perf_counter()

    def report(kind: str, n: int) -> None:
        nonlocal tokens
        if kind == "bytes":
            bar.update(n)
        else:
            tokens += n
            bar.set_postfix(tokens=f"{tokens / 1e6:.1f}M", tok_s=f"{tokens / max(time.perf_counter() - t0, 1e-9):,.0f}")

    try:
        if num_proc == 1 or len(todo) <= 1:
            worker = _Worker(settings, out, report) if todo else None
            for piece in todo:
                records[piece.index] = process_piece(worker, piece)
        else:
            _run_pool(settings, out, todo, min(num_proc, len(todo)), report, records)
    finally:
        bar.close()
    return [records[p.index] for p in pieces]


def _run_pool(settings, out, todo, processes: int, report, records: dict) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")   # workers start without the parent's torch & co.
    progress = ctx.Queue()
    pool = ctx.Pool(processes, initializer=_init_pool_worker, initargs=(settings, str(out), progress))
    try:
        pending = {p.index: pool.apply_async(_run_piece_in_pool, (p,)) for p in todo}
        while pending:
            try:
                while True:
                    report(*progress.get(timeout=0.2))
            except queue_module.Empty:
                pass
            for index in [i for i, r in pending.items() if r.ready()]:
                records[index] = pending.pop(index).get()   # re-raises a worker's error here
        while not progress.empty():
            report(*progress.get_nowait())
        pool.close()
    except BaseException:
        pool.terminate()   # finished shards stay; a restart continues from them
        raise
    finally:
        pool.join()


def _assemble_manifest(plan, records, settings, tokenizer_entry, fingerprint, shard_index, num_shards,
                       seconds) -> dict:
    shards = {split: [s for r in records for s in r["shards"] if s["split"] == split] for split in SPLITS}
    skipped: Counter = Counter()
    input_tokens: Counter = Counter()
    documents: Counter = Counter()
    for r in records:
        for part in r["parts"]:
            skipped.update(part["skipped"])
            input_tokens.update(part["input_tokens"])
            documents.update(part["documents"])
    totals = {split: {"rows": sum(s["rows"] for s in shards[split]), "tokens": sum(s["tokens"] for s in shards[split]),
                      "documents": documents[split], "input_tokens": input_tokens[split]} for split in SPLITS}
    return {**plan, "tokenizer": tokenizer_entry, "input_fingerprint": fingerprint,
            "part": {"index": shard_index, "count": num_shards},
            "pieces_prepared": [r["piece"] for r in records],
            "shards": shards, "totals": totals, "skipped": dict(skipped),
            "seconds": round(seconds, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _check_usable(manifest: dict, out: Path) -> None:
    if manifest["totals"]["train"]["rows"] == 0:
        what = "instance" if manifest["settings"]["kind"] == "mlm_nsp" else "token"
        raise DataError(f"the corpus {manifest['settings']['corpus']!r} yields no training {what} "
                        f"({_summary(manifest)}); check data.corpus and data.text_field")


def _summary(manifest: dict) -> str:
    t, v = manifest["totals"]["train"], manifest["totals"]["validation"]
    rows = "instances" if manifest["settings"]["kind"] == "mlm_nsp" else "documents"
    skipped = ", ".join(f"{k} {n}" for k, n in sorted(manifest.get("skipped", {}).items())) or "none"
    return (f"{t['documents']} + {v['documents']} documents (train + validation), {t['input_tokens']:,} + "
            f"{v['input_tokens']:,} tokens -> {t['rows']:,} + {v['rows']:,} {rows} in "
            f"{len(manifest['shards']['train']) + len(manifest['shards']['validation'])} shards; skipped: {skipped}")


# --------------------------------------------------------------------------------------------------
# Several machines: merge their manifests; verification
# --------------------------------------------------------------------------------------------------

def merge(part_dirs: list, output_dir) -> dict:
    """One ``manifest.json`` from the ``manifest-part-I-of-N.json`` of every machine (in the given folders),
    with shard paths relative to ``output_dir``. Nothing is copied or moved."""
    from groupbert.data.shards import write_json_atomically

    out = Path(output_dir)
    parts = {}
    for d in map(Path, part_dirs):
        found = sorted(d.glob("manifest-part-*-of-*.json"))
        if not found:
            raise DataError(f"{d} holds no manifest-part-I-of-N.json (is its preparation finished?)")
        for path in found:
            m = _read_json(path)
            index = m["part"]["index"]
            if index in parts:
                raise DataError(f"part {index} appears twice: {parts[index][0]} and {path}")
            parts[index] = (path, m)
    first = next(iter(parts.values()))[1]
    count = first["part"]["count"]
    for path, m in parts.values():
        for key in ("format_version", "settings", "tokenizer", "inputs", "pieces"):
            if m[key] != first[key] or m["part"]["count"] != count:
                raise DataError(f"{path} belongs to another preparation ({key} differs); merge the parts of one run")
    missing = sorted(set(range(count)) - set(parts))
    if missing:
        raise DataError(f"parts {missing} of {count} are missing; prepare them with --shard-index before merging")
    records = []
    for index in range(count):
        path, m = parts[index]
        base = path.parent
        for split in SPLITS:
            for s in m["shards"][split]:
                s["path"] = os.path.relpath(base / s["path"], out)
        records.append(m)
    shards = {split: sorted((s for m in records for s in m["shards"][split]), key=lambda s: (s["piece"], s["part"]))
              for split in SPLITS}
    totals = {split: {k: sum(m["totals"][split][k] for m in records) for k in first["totals"][split]}
              for split in SPLITS}
    skipped: Counter = Counter()
    for m in records:
        skipped.update(m["skipped"])
    manifest = {**first, "part": {"index": 0, "count": 1}, "merged_from": count,
                "pieces_prepared": sorted(p for m in records for p in m["pieces_prepared"]),
                "shards": shards, "totals": totals, "skipped": dict(skipped),
                "seconds": round(sum(m["seconds"] for m in records), 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if len(manifest["pieces_prepared"]) != manifest["pieces"]:
        raise DataError(f"the parts hold {len(manifest['pieces_prepared'])} of {manifest['pieces']} pieces")
    _check_usable(manifest, out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomically(out / MANIFEST, manifest)
    logger.info("merged %d parts into %s: %s", count, out / MANIFEST, _summary(manifest))
    return manifest


def verify(prepared_dir, show_progress: bool = True) -> dict:
    """Re-hash every shard of a prepared directory against its manifest (DataError on the first mismatch)."""
    root = Path(prepared_dir)
    manifest = load_manifest(root)
    entries = [s for split in SPLITS for s in manifest["shards"][split]]
    for s in entries:
        check_shard_size(root / s["path"], s)
    verify_shards(root, entries, show_progress)
    return manifest


#: Shards this process has hashed, by file identity (device, inode, size, mtime, ctime: any write changes one)
#: -> sha256: the data cache's check on opening an entry and the training data's check that follows read each
#: file once, not twice.
_HASHED: dict = {}


def _file_identity(path: Path) -> tuple:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def verify_shards(root: Path, entries: list, show_progress: bool = False) -> None:
    """sha256 of every shard against its manifest entry, on a thread per core (hashlib releases the GIL,
    so a 25 GB Wikipedia preparation takes the disk's time, not one core's)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from groupbert.data.shards import sha256_file

    def digest_of(entry: dict) -> str:
        path = root / entry["path"]
        try:
            identity = _file_identity(path)
        except OSError:
            raise DataError(f"prepared shard {path} is missing (listed in the manifest)") from None
        if _HASHED.get(identity) is None:
            _HASHED[identity] = sha256_file(path)
        return _HASHED[identity]

    total = sum(s["bytes"] for s in entries)
    logger.info("verifying the checksums of %d shards (%.2f GB) in %s", len(entries), total / 1e9, root)
    with ThreadPoolExecutor(min(16, default_num_proc())) as pool, \
            tqdm(total=total, unit="B", unit_scale=True, desc="verify", disable=not show_progress) as bar:
        for entry, digest in zip(entries, pool.map(digest_of, entries)):
            if digest != entry["sha256"]:
                raise DataError(f"prepared shard {root / entry['path']} does not match its checksum in "
                                f"{root / MANIFEST}: it was modified or corrupted; prepare the data again")
            bar.update(entry["bytes"])


def check_shard_size(path: Path, entry: dict) -> None:
    try:
        size = path.stat().st_size
    except OSError:
        raise DataError(f"prepared shard {path} is missing (listed in the manifest)") from None
    if size != entry["bytes"]:
        raise DataError(f"prepared shard {path} has {size} bytes, the manifest says {entry['bytes']}: "
                        "truncated or replaced; prepare the data again")


def load_manifest(prepared_dir) -> dict:
    root = Path(prepared_dir)
    path = root / MANIFEST
    manifest = _read_json(path)
    if manifest is None:
        partial = sorted(p.name for p in root.glob("manifest-part-*-of-*.json"))
        if partial:
            raise DataError(f"{root} holds only {', '.join(partial)}: merge every machine's part first "
                            f"(python -m groupbert.data.prepare --merge DIR ... --output {root})")
        if (root / PLAN).exists():
            raise DataError(f"{root} is an unfinished preparation (no {MANIFEST}); run the same "
                            "`python -m groupbert.data.prepare` command again to finish it")
        raise DataError(f"{root} is not a prepared dataset (no {MANIFEST})")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path} is not a {FORMAT} manifest of version {FORMAT_VERSION}")
    _check_manifest_fields(manifest, path)
    return manifest


#: What training reads from a manifest: a file edited or damaged by hand is refused naming it, not a KeyError.
_SHARD_FIELDS = {"path": str, "bytes": int, "sha256": str, "rows": int, "tokens": int}


def _check_manifest_fields(manifest: dict, path: Path) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise DataError(f"{path} is damaged: {what}; prepare the data again")

    settings, tokenizer = manifest.get("settings"), manifest.get("tokenizer")
    need(isinstance(settings, dict) and settings.get("kind") in ("mlm_nsp", "causal_lm"), "no settings.kind")
    need(isinstance(tokenizer, dict) and "vocab_sha256" in tokenizer and "vocab_size" in tokenizer,
         "no tokenizer.vocab_sha256 / vocab_size")
    for split in SPLITS:
        shards = (manifest.get("shards") or {}).get(split)
        totals = (manifest.get("totals") or {}).get(split)
        need(isinstance(shards, list), f"no shards.{split} list")
        need(isinstance(totals, dict) and all(isinstance(totals.get(k), int) for k in ("rows", "tokens")),
             f"no totals.{split}.rows / tokens")
        for i, entry in enumerate(shards):
            need(isinstance(entry, dict) and all(isinstance(entry.get(k), t) for k, t in _SHARD_FIELDS.items()),
                 f"shards.{split}[{i}] lacks one of {', '.join(_SHARD_FIELDS)}")


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description="Prepare a pretraining corpus into shards (see the README's Data section).",
                                allow_abbrev=False)
    p.add_argument("--config", type=Path, help="the run's YAML recipe: data.* and model.type decide the output")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set data.corpus=dumps/*.bz2 (repeatable)")
    p.add_argument("--output", type=Path, help="output directory")
    p.add_argument("--num-proc", type=int, help="worker processes (default: data.num_proc, else every core)")
    p.add_argument("--shard-index", type=int, default=0, help="this machine's part of the pieces (0-based)")
    p.add_argument("--num-shards", type=int, default=1, help="machines preparing disjoint parts")
    p.add_argument("--merge", type=Path, nargs="+", metavar="DIR", help="merge the parts prepared into these dirs")
    p.add_argument("--verify", type=Path, metavar="DIR", help="re-hash every shard of a prepared directory")
    p.add_argument("--quiet", action="store_true", help="warnings only, no progress bar")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from groupbert.config import load_config
    from groupbert.errors import BadInput

    try:
        if args.verify:
            manifest = verify(args.verify, show_progress=not args.quiet)
            print(f"{args.verify}: every shard matches its checksum ({_summary(manifest)})")
            return 0
        if args.output is None:
            p.error("--output DIR is required")
        if args.merge:
            merge(args.merge, args.output)
            return 0
        if args.config is None and not args.overrides:
            p.error("give --config FILE (and --set overrides)")
        cfg = load_config(args.config, args.overrides, check_optimizer=False)
        settings = PrepareSettings.from_config(cfg)
        start = time.perf_counter()
        manifest = prepare(settings, args.output, num_proc=args.num_proc or cfg.data.num_proc,
                           shard_index=args.shard_index, num_shards=args.num_shards, show_progress=not args.quiet)
        seconds = time.perf_counter() - start
        tokens = sum(manifest["totals"][s]["input_tokens"] for s in SPLITS)
        print(f"{args.output / _manifest_name(args.shard_index, args.num_shards)}: {_summary(manifest)}; "
              f"{seconds:.1f} s, {tokens / max(seconds, 1e-9):,.0f} tokens/s")
    except BadInput as exc:   # DataError, ConfigError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished shards are kept: run the same command again to continue", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
