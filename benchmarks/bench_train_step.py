"""Time one pretraining step (forward, backward, AdamW step) of our BERT against Hugging Face's, and GroupBERT.

All models run in one process at the same sizes (BERT Base by default) on the same batch, each with the
optimizer its user would have:
- ``ours-bert``: ``groupbert.models.BertForPreTraining``, MLM head at the masked positions only, with
  ``optimizers.AdamW`` (the fused C++ update where built), what ``run_pretraining.py`` runs;
- ``hf-bert``: ``transformers.BertForPreTraining`` at the same config, MLM logits over all T tokens
  (what HF computes when given ``labels`` [B, T]), with ``torch.optim.AdamW`` as constructed by default
  (on CPU: torch's per-tensor loop);
- ``hf-bert-fused-adamw``: the same with ``torch.optim.AdamW(fused=True)``, the Hugging Face Trainer's
  default optimizer (``adamw_torch_fused`` for torch >= 2.8);
- ``ours-groupbert``: ``groupbert.models.GroupBertForPreTraining`` at the same H/L/A/I, our AdamW.
``--compile``: our models run under ``torch.compile`` (``runtime.compile``; compilation happens in the
warm-up steps, which are not timed); a ``+compile`` suffix compiles one entry (``--models
ours-bert,ours-bert+compile`` times eager against compiled in one process). ``--precision bf16``: every
model under bf16 autocast. Columns: s/step, sequences/s, model TFLOPS (``groupbert.models.flops``: the
FLOPs each model computes, HF's MLM head at all T positions) and MFU (``groupbert.training.hardware``).
Each model gets ``--warmup`` untimed steps; then the models take timed steps in turn, ``--repeats``
rounds, and each reports its median. The 1-minute load average before and after goes in the JSON:
numbers taken while other jobs share the cores are not worth quoting.

    .venv/bin/python benchmarks/bench_train_step.py --batch-size 8 --repeats 3

Prints a table and writes JSON to ``benchmarks/results/train_step.json``. ``--smoke``: the tiny size,
batch 2 x 32, a 1024-token vocabulary, one round, no warm-up.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
from common import (RESULTS, device_peak, load_average, median, parse_args, time_rounds,  # noqa: E402
                    write_results)

from groupbert.config import ModelConfig  # noqa: E402
from groupbert.models import BertForPreTraining, GroupBertForPreTraining  # noqa: E402
from groupbert.models.bert import to_hf_config  # noqa: E402
from groupbert.models.flops import forward_flops  # noqa: E402
from groupbert.training.precision import autocast_context  # noqa: E402
from optimizers import AdamW, param_groups  # noqa: E402

SIZES = {  # H, L, A, I
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "mini": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
    "tiny": dict(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128),  # --smoke
}


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--size", choices=sorted(SIZES), default="base")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--masked", type=int, default=20, help="masked positions per sequence (phase 1: 20)")
    p.add_argument("--vocab-size", type=int, default=30522)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="ours-bert,hf-bert,hf-bert-fused-adamw,ours-groupbert")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast, every model")
    p.add_argument("--compile", action="store_true", help="torch.compile our models (not HF's)")
    return parse_args(p, argv, default_output=RESULTS / "train_step.json",
                      smoke=dict(size="tiny", batch_size=2, seq_len=32, masked=5, vocab_size=1024, repeats=1,
                                 warmup=0))


def make_batch(B, T, P, vocab, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (B, T), generator=g)
    token_type_ids = (torch.arange(T) >= T // 2).long().expand(B, T).contiguous()
    attention_mask = torch.ones(B, T, dtype=torch.long)
    positions = torch.stack([torch.randperm(T - 1, generator=g)[:P] + 1 for _ in range(B)])  # never [CLS]
    labels = torch.randint(0, vocab, (B, P), generator=g)
    full_labels = torch.full((B, T), -100).scatter_(1, positions, labels)  # HF's [B, T] labels
    nsp = torch.randint(0, 2, (B,), generator=g)
    batch = dict(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                 positions=positions, labels=labels, full_labels=full_labels, nsp=nsp)
    return {k: v.to(device) for k, v in batch.items()}


def build(name, cfg, device):
    name = name.removesuffix("+compile")
    if name == "ours-bert":
        model = BertForPreTraining(dataclasses.replace(cfg, type="bert"))
    elif name == "ours-groupbert":
        model = GroupBertForPreTraining(dataclasses.replace(cfg, type="groupbert"))
    elif name.startswith("hf-bert"):
        import transformers

        model = transformers.BertForPreTraining(to_hf_config(dataclasses.replace(cfg, type="bert")))
    else:
        raise ValueError(f"unknown model {name!r}")
    return model.to(device).train()


def loss_fn(name, model, b):
    name = name.removesuffix("+compile")
    if name.startswith("hf-bert"):
        return model(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"],
                     attention_mask=b["attention_mask"], labels=b["full_labels"],
                     next_sentence_label=b["nsp"]).loss
    return model(b["input_ids"], b["token_type_ids"], b["attention_mask"], b["positions"], b["labels"],
                 b["nsp"]).loss


class Stepper:
    """One model + AdamW; ``step()`` runs forward, backward and the optimizer update (and waits for a GPU)."""

    def __init__(self, name, cfg, batch, device, precision="fp32", compile=False):
        self.name, self.batch, self.device = name, batch, device
        self.model = build(name, cfg, device)
        self.params = sum(p.numel() for p in self.model.parameters())
        groups = param_groups(self.model, 0.01)  # no decay on biases and LayerNorms, for every model
        if name.startswith("ours"):
            self.opt = AdamW(groups, lr=1e-4)
            if compile or name.endswith("+compile"):
                self.model.compile()
        else:
            self.opt = torch.optim.AdamW(groups, lr=1e-4, fused=name.endswith("fused-adamw") or None)
        self.autocast = autocast_context(precision, torch.device(device))  # fp32: no autocast

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            loss = loss_fn(self.name, self.model, self.batch)
        loss.backward()
        self.opt.step()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


def main():
    args = cli()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=args.vocab_size, max_positions=512, **SIZES[args.size])  # dropout 0, as pretraining
    batch = make_batch(args.batch_size, args.seq_len, args.masked, cfg.vocab_size, args.device)

    load_before = load_average()
    steppers = [Stepper(name, cfg, batch, args.device, args.precision, args.compile)
                for name in args.models.split(",")]
    times = time_rounds({st.name: st.step for st in steppers}, args.repeats, args.warmup)
    peak = device_peak(args.device, args.precision)
    results = {}
    for st in steppers:
        med = median(times[st.name])
        # model FLOPs of the step as each computes it: HF's MLM head runs at all T positions
        model_cfg = dataclasses.replace(cfg, type="groupbert" if "groupbert" in st.name else "bert")
        flops = 3 * forward_flops(model_cfg, args.batch_size, args.seq_len,
                                  None if st.name.startswith("hf") else args.masked)
        results[st.name] = dict(params=st.params, times_s=times[st.name], median_s=med,
                                us_per_param=med / st.params * 1e6, sequences_per_s=args.batch_size / med,
                                tokens_per_s=args.batch_size * args.seq_len / med, model_flops_per_step=flops,
                                tflops=flops / med / 1e12,
                                mfu=flops / med / peak.flops_per_s if peak.flops_per_s else None)

    ratios = {}
    if {"ours-bert", "hf-bert"} <= results.keys():
        ratios["hf_bert_over_ours_bert"] = results["hf-bert"]["median_s"] / results["ours-bert"]["median_s"]
    if {"ours-bert", "hf-bert-fused-adamw"} <= results.keys():
        ratios["hf_bert_fused_adamw_over_ours_bert"] = (results["hf-bert-fused-adamw"]["median_s"]
                                                        / results["ours-bert"]["median_s"])
    if {"ours-bert", "ours-groupbert"} <= results.keys():
        ratios["groupbert_over_bert_time"] = (results["ours-groupbert"]["median_s"]
                                              / results["ours-bert"]["median_s"])
        ratios["groupbert_over_bert_time_per_param"] = (results["ours-groupbert"]["us_per_param"]
                                                        / results["ours-bert"]["us_per_param"])
        # the "GroupBERT keeps at least BERT's FLOP rate": >= 1 is met
        ratios["groupbert_over_bert_flop_rate"] = results["ours-groupbert"]["tflops"] / results["ours-bert"]["tflops"]
    for name in results:
        if name.endswith("+compile") and name.removesuffix("+compile") in results:
            ratios[f"{name.removesuffix('+compile')}_eager_over_compiled"] = (
                results[name.removesuffix("+compile")]["median_s"] / results[name]["median_s"])
    if {"ours-bert+compile", "ours-groupbert+compile"} <= results.keys():
        ratios["groupbert_over_bert_flop_rate_compiled"] = (results["ours-groupbert+compile"]["tflops"]
                                                            / results["ours-bert+compile"]["tflops"])

    print(f"\n{args.size}, batch {args.batch_size} x seq {args.seq_len}, {args.masked} masked/seq, "
          f"{args.device}, {torch.get_num_threads()} threads, {args.precision}{', compiled' if args.compile else ''}, "
          f"median of {args.repeats}; peak {peak.source}")
    print(f"{'model':<22}{'params (M)':>11}{'s/step':>9}{'seq/s':>8}{'TFLOPS':>8}{'MFU':>7}")
    for name, r in results.items():
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(f"{name:<22}{r['params'] / 1e6:>11.1f}{r['median_s']:>9.3f}{r['sequences_per_s']:>8.2f}"
              f"{r['tflops']:>8.3f}{mfu:>7}")
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}")

    record = dict(
        benchmark="train_step", device=args.device, threads=torch.get_num_threads(),
        precision=args.precision, compiled=args.compile, peak_tflops=peak.flops_per_s and peak.flops_per_s / 1e12,
        peak_source=peak.source, optimizers={"ours-*": "optimizers.AdamW", "hf-bert": "torch.optim.AdamW()",
                                             "hf-bert-fused-adamw": "torch.optim.AdamW(fused=True)"},
        size=args.size, model_config=dataclasses.asdict(cfg),
        shapes=dict(batch_size=args.batch_size, seq_len=args.seq_len, masked_positions=args.masked),
        warmup=args.warmup, repeats=args.repeats, load_average_before=load_before,
        load_average_after=load_average(), results=results, ratios=ratios,
    )
    try:
        import transformers

        record["transformers"] = transformers.__version__
    except ImportError:
        pass
    write_results(record, args.output, smoke=args.smoke)


if __name__ == "__main__":
    main()
