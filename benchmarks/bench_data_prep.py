"""Data preparation at growing corpus sizes: wall time, tokens/s and peak memory, MLM+NSP and GPT-2.

Corpora of 1x, 8x, 32x and 128x the bundled Wikipedia sample are written as JSONL: copy ``c`` deals all of
the sample's sentences, shuffled with seed ``c``, into documents of the original sentence counts, so no
two documents repeat. Each corpus is prepared by ``python -m groupbert.data.prepare`` in a subprocess, for
MLM + NSP with ``configs/groupbert/base_phase1.yaml``'s settings (seq 128, WordPiece, dupe 5, dynamic
masking) and for GPT-2 blocks with ``configs/gpt2/124m.yaml``'s (byte-level BPE), while the resident set
(RSS) and proportional set (PSS, shared pages counted once) of the whole process tree are sampled every
50 ms. ``mlm-xml`` prepares the raw dump instead (the sample's articles repeated, titles made unique, as a
multistream ``.xml.bz2`` of 100 pages per stream like Wikipedia's): decompression, page parsing and markup
stripping included, the path a real Wikipedia dump takes.

    .venv/bin/python benchmarks/bench_data_prep.py                       # all kinds and scales (~15 min)
    .venv/bin/python benchmarks/bench_data_prep.py --scales 1 8 --kinds mlm

Tokens/s counts the corpus's tokens (WordPiece or BPE, training + validation) over the whole command's wall
time, start-up included. Targets on a 2-core machine (issue "data at real-corpus scale"): >= 250k
WordPiece tokens/s for MLM+NSP, >= 1M BPE tokens/s for GPT-2, peak RSS <= 1.5 GB at every scale, and the
128x time within 1.2x of 16 times the 8x time. Writes ``benchmarks/results/data_prep.json`` and
``data_prep.png``; prints how long English Wikipedia (about 3e9 WordPiece tokens) would take at the
measured rate. ``--smoke``: every kind at 1x of the sample's first 3 documents (the plot only beside an
explicit ``--output``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import RESULTS, load_average, parse_args, shown, write_results  # noqa: E402  (beside this script)

KINDS = {"mlm": "configs/groupbert/base_phase1.yaml", "gpt2": "configs/gpt2/124m.yaml",
         "mlm-xml": "configs/groupbert/base_phase1.yaml"}
TARGETS = {"mlm": 250_000, "gpt2": 1_000_000, "mlm-xml": 250_000}
LABELS = {"mlm": "MLM+NSP, JSONL (WordPiece)", "gpt2": "GPT-2 blocks, JSONL (BPE)",
          "mlm-xml": "MLM+NSP, Wikipedia XML dump (bz2)"}
WIKIPEDIA_TOKENS = 3.0e9   # English Wikipedia in WordPiece tokens (Graphcore: ~2.5e9; the issue: ~3e9)


def write_corpus(path: Path, scale: int, max_documents: int | None = None) -> int:
    """``scale`` reshuffled copies of the bundled sample (its first ``max_documents``) as JSONL; returns the
    bytes written."""
    from groupbert.data.corpus import load_wikipedia_sample

    docs = load_wikipedia_sample(max_documents)
    sentences = [s for d in docs for s in d.sentences]
    sizes = [len(d.sentences) for d in docs]
    with open(path, "w", encoding="utf-8") as f:
        for copy in range(scale):
            order = list(range(len(sentences)))
            random.Random(copy).shuffle(order)
            k = 0
            for i, n in enumerate(sizes):
                text = " ".join(sentences[j] for j in order[k:k + n])
                k += n
                f.write(json.dumps({"title": f"copy {copy} doc {i}", "text": text}) + "\n")
    return path.stat().st_size


def write_xml_dump(path: Path, scale: int, max_documents: int | None = None) -> int:
    """The bundled dump's articles (its first ``max_documents`` pages) ``scale`` times (titles made unique)
    as a multistream bz2, 100 pages per stream like Wikipedia's ``*-multistream.xml.bz2``; returns the
    bytes written."""
    import bz2
    import re

    from groupbert.data.corpus import wikipedia_sample_path

    xml = bz2.open(wikipedia_sample_path(), "rt", encoding="utf-8").read()
    first, last = xml.index("<page>"), xml.rindex("</page>") + len("</page>")
    pages = re.findall(r"<page>.*?</page>", xml[first:last], flags=re.DOTALL)[:max_documents]
    with open(path, "wb") as f:
        f.write(bz2.compress(xml[:first].encode()))
        batch = []
        for copy in range(scale):
            for page in pages:
                batch.append(page.replace("<title>", f"<title>Copy {copy}: ", 1))
                if len(batch) == 100:
                    f.write(bz2.compress("\n".join(batch).encode()))
                    batch = []
        if batch:
            f.write(bz2.compress("\n".join(batch).encode()))
        f.write(bz2.compress(xml[last:].encode()))
    return path.stat().st_size


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def _memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB (0 when it is gone)."""
    try:
        fields = {}
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, sep, rest = line.partition(":")
                if sep and key in ("Rss", "Pss"):
                    fields[key] = int(rest.split()[0])
        return fields["Rss"], fields["Pss"]
    except (OSError, KeyError, ValueError):
        return 0, 0


def run_measured(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; wall seconds and the peak summed RSS / PSS of its process tree."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"rss": 0, "pss": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            rss = pss = 0
            for p in _tree(proc.pid):
                r, s = _memory_kb(p)
                rss, pss = rss + r, pss + s
            peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
            stop.wait(0.05)

    t0 = time.perf_counter()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"seconds": seconds, "peak_rss_mb": peak["rss"] / 1024, "peak_pss_mb": peak["pss"] / 1024,
            "stdout": out.strip().splitlines()[-1] if out.strip() else ""}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--scales", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--kinds", nargs="+", choices=sorted(KINDS), default=["mlm", "gpt2", "mlm-xml"])
    p.add_argument("--xml-scales", type=int, nargs="+", default=[1, 8, 32],
                   help="scales for mlm-xml (its corpus takes a while to compress)")
    p.add_argument("--num-proc", type=int, default=None, help="workers (default: every core)")
    p.add_argument("--workdir", type=Path, default=None, help="where corpora and outputs go (default: a temp dir)")
    p.add_argument("--max-documents", type=int, default=None,
                   help="the sample's first N documents (pages of the dump) per copy (default: all)")
    p.add_argument("--no-plot", action="store_true", help="no data_prep.png beside the JSON")
    args = parse_args(p, argv, default_output=RESULTS / "data_prep.json",
                      smoke=dict(scales=[1], xml_scales=[1], max_documents=3))
    work = Path(tempfile.mkdtemp(prefix="bench-data-prep-", dir=args.workdir))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    results, load_before = [], load_average()
    try:
        for scale in sorted(set(args.scales) | set(args.xml_scales if "mlm-xml" in args.kinds else [])):
            corpora = {}
            if set(args.kinds) & {"mlm", "gpt2"} and scale in args.scales:
                corpora["jsonl"] = work / f"corpus-{scale}x.jsonl"
                jsonl_bytes = write_corpus(corpora["jsonl"], scale, args.max_documents)
            if "mlm-xml" in args.kinds and scale in args.xml_scales:
                corpora["xml"] = work / f"enwiki-{scale}x-pages-articles-multistream.xml.bz2"
                xml_bytes = write_xml_dump(corpora["xml"], scale, args.max_documents)
            for kind in args.kinds:
                source = "xml" if kind == "mlm-xml" else "jsonl"
                if source not in corpora:
                    continue
                corpus, corpus_bytes = corpora[source], xml_bytes if source == "xml" else jsonl_bytes
                out = work / f"{kind}-{scale}x"
                cmd = [sys.executable, "-m", "groupbert.data.prepare", "--config", str(ROOT / KINDS[kind]),
                       "--set", f"data.corpus={corpus}", "--set", f"data.cache_dir={work / 'cache'}",
                       "--output", str(out), "--quiet"]
                if args.num_proc:
                    cmd += ["--num-proc", str(args.num_proc)]
                measured = run_measured(cmd, env)
                manifest = json.loads((out / "manifest.json").read_text())
                totals = manifest["totals"]
                tokens = totals["train"]["input_tokens"] + totals["validation"]["input_tokens"]
                row = {"kind": kind, "scale": scale, "corpus_mb": corpus_bytes / 2**20, "tokens": tokens,
                       "documents": totals["train"]["documents"] + totals["validation"]["documents"],
                       "rows": totals["train"]["rows"] + totals["validation"]["rows"],
                       "shards": len(manifest["shards"]["train"]) + len(manifest["shards"]["validation"]),
                       "output_mb": sum(s["bytes"] for sp in ("train", "validation")
                                        for s in manifest["shards"][sp]) / 2**20,
                       "tokens_per_s": tokens / measured["seconds"], **measured}
                del row["stdout"]
                results.append(row)
                print(f"{kind:>7} {scale:>4}x  {row['corpus_mb']:8.1f} MB  {tokens / 1e6:7.2f}M tokens  "
                      f"{row['seconds']:7.1f} s  {row['tokens_per_s']:>10,.0f} tok/s  peak RSS "
                      f"{row['peak_rss_mb']:6.0f} MB (PSS {row['peak_pss_mb']:6.0f} MB)", flush=True)
                shutil.rmtree(out)
            for corpus in corpora.values():
                corpus.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary = {}
    for kind in args.kinds:
        rows = {r["scale"]: r for r in results if r["kind"] == kind}
        s = {"tokens_per_s_min": min(r["tokens_per_s"] for r in rows.values()),
             "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rows.values()),
             "target_tokens_per_s": TARGETS[kind]}
        if 8 in rows and 128 in rows:
            s["time_128x_over_16_times_8x"] = rows[128]["seconds"] / (16 * rows[8]["seconds"])
        largest = rows[max(rows)]
        if kind.startswith("mlm"):
            rate = largest["tokens_per_s"]
            s["english_wikipedia_hours_this_machine"] = WIKIPEDIA_TOKENS / rate / 3600
            cores = len(os.sched_getaffinity(0))
            s["english_wikipedia_hours_64_cores_if_linear"] = WIKIPEDIA_TOKENS / (rate * 64 / cores) / 3600
        summary[kind] = s
        print(f"{kind}: {json.dumps(s)}")
    record = write_results({"benchmark": "data_prep", "num_proc": args.num_proc, "load_average_before": load_before,
                            "load_average_after": load_average(), "max_documents": args.max_documents,
                            "configs": KINDS, "results": results, "summary": summary}, args.output, smoke=args.smoke)
    if args.output is not None and not args.no_plot:
        plot(results, args.output.with_suffix(".png"))
    return record


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for kind, color in (("mlm", "tab:blue"), ("gpt2", "tab:orange"), ("mlm-xml", "tab:green")):
        rows = sorted((r for r in results if r["kind"] == kind), key=lambda r: r["scale"])
        if not rows:
            continue
        x = [r["tokens"] / 1e6 for r in rows]
        label = LABELS[kind]
        axes[0].plot(x, [r["seconds"] for r in rows], "o-", color=color, label=label)
        axes[1].plot(x, [r["tokens_per_s"] / 1e3 for r in rows], "o-", color=color, label=label)
        axes[1].axhline(TARGETS[kind] / 1e3, color=color, ls=":", lw=1)
        axes[2].plot(x, [r["peak_rss_mb"] for r in rows], "o-", color=color, label=f"{label} RSS")
        axes[2].plot(x, [r["peak_pss_mb"] for r in rows], "s--", color=color, alpha=0.6, label=f"{label} PSS")
    axes[2].axhline(1536, color="red", ls=":", lw=1, label="1.5 GB target")
    for ax, title, ylabel in zip(axes, ("wall time", "throughput (dotted: target)", "peak memory, process tree"),
                                 ("seconds", "thousand tokens / s", "MB")):
        ax.set_xscale("log")
        ax.set_xlabel("corpus tokens (millions)")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {shown(path)}")


if __name__ == "__main__":
    main()
