"""One GPT-2 causal-LM training step (forward, backward, AdamW) of ours against Hugging Face's.

- ``ours``: ``groupbert.models.GPT2LMHeadModel`` + ``optimizers.AdamW`` (its default path: the fused C++
  update where built), what ``run_pretraining.py`` runs for ``model.type: gpt2``;
- ``hf``: ``transformers.GPT2LMHeadModel`` from the same config (built with
  ``groupbert.models.gpt2.to_hf_config``, SDPA attention) + ``torch.optim.AdamW`` (torch's default path;
  on CPU its per-tensor loop);
- ``hf-fused-adamw``: the same with ``torch.optim.AdamW(fused=True)``, the Hugging Face Trainer's default
  optimizer (``adamw_torch_fused`` for torch >= 2.8).
``--compile``: ours runs under ``torch.compile`` (``runtime.compile``; compiled in the untimed warm-up).
``--precision bf16``: every model under bf16 autocast.
Both start from the same weights (ours are copied into HF's model) and see the same batch; their first
losses are printed as a check. ``--warmup`` untimed steps, then ``--repeats`` interleaved rounds; medians.

    .venv/bin/python benchmarks/bench_gpt2_step.py --size small --batch-size 4 --seq-len 256

Writes JSON to ``benchmarks/results/gpt2_step.json``. ``--smoke``: the tiny size, batch 1 x 16, a 1024-token
vocabulary, one round, no warm-up.
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
from groupbert.models.flops import forward_flops  # noqa: E402
from groupbert.training.precision import autocast_context  # noqa: E402
from groupbert.models.gpt2 import GPT2LMHeadModel, to_hf_config, to_hf_state_dict  # noqa: E402
from optimizers import AdamW, param_groups  # noqa: E402

SIZES = {  # H, L, A; the 124M model is "small" (GPT-2's own name for it)
    "small": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "tiny": dict(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512),
}


def cli(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--vocab-size", type=int, default=50257)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--models", default="ours,hf,hf-fused-adamw")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast, every model")
    p.add_argument("--compile", action="store_true", help="torch.compile ours (not HF's)")
    p.add_argument("--device", default="cpu")
    return parse_args(p, argv, default_output=RESULTS / "gpt2_step.json",
                      smoke=dict(size="tiny", batch_size=1, seq_len=16, vocab_size=1024, repeats=1, warmup=0))


class Stepper:
    def __init__(self, name, model, opt, batch, precision="fp32"):
        self.name, self.model, self.opt, self.batch = name, model, opt, batch
        self.losses = []  # warm-up steps included: the first is the check that both compute the same
        self.autocast = autocast_context(precision, batch.device)  # fp32: no autocast

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        x = self.batch
        with self.autocast():
            loss = self.model(input_ids=x, labels=x).loss
        loss.backward()
        self.opt.step()
        self.losses.append(loss.item())  # .item() waits for a GPU


def main():
    args = cli()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    torch.manual_seed(0)
    cfg = ModelConfig(type="gpt2", vocab_size=args.vocab_size, max_positions=1024, **SIZES[args.size])
    ours = GPT2LMHeadModel(cfg).train()
    batch = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len), generator=torch.Generator().manual_seed(1))
    batch = batch.to(args.device)
    kw = dict(lr=6e-4, betas=(0.9, 0.95), eps=1e-8)
    steppers = []
    for name in args.models.split(","):
        if name == "ours":
            model = ours.to(args.device)
            opt = AdamW(param_groups(model, 0.1), **kw)
            if args.compile:
                model.compile()
        elif name in ("hf", "hf-fused-adamw"):
            model = transformers.GPT2LMHeadModel(to_hf_config(cfg)).train()
            model.load_state_dict(to_hf_state_dict(ours), strict=False)  # same weights (HF's mask buffers aside)
            model = model.to(args.device)
            opt = torch.optim.AdamW(param_groups(model, 0.1), **kw, fused=name == "hf-fused-adamw" or None)
        else:
            raise SystemExit(f"unknown model {name!r} (ours, hf, hf-fused-adamw)")
        steppers.append(Stepper(name, model, opt, batch, args.precision))
    load_before = load_average()
    times = time_rounds({st.name: st.step for st in steppers}, args.repeats, args.warmup)
    flops = 3 * forward_flops(cfg, args.batch_size, args.seq_len)  # the same model FLOPs for every entry
    peak = device_peak(args.device, args.precision)
    results = {}
    for st in steppers:
        med = median(times[st.name])
        results[st.name] = dict(times_s=times[st.name], median_s=med, first_loss=st.losses[0],
                                tokens_per_s=args.batch_size * args.seq_len / med, model_flops_per_step=flops,
                                tflops=flops / med / 1e12,
                                mfu=flops / med / peak.flops_per_s if peak.flops_per_s else None)
    ratios = {f"{name.replace('-', '_')}_over_ours_time": results[name]["median_s"] / results["ours"]["median_s"]
              for name in results if name != "ours" and "ours" in results}
    ratio = ratios.get("hf_over_ours_time")
    print(f"\nGPT-2 {args.size}, batch {args.batch_size} x {args.seq_len}, {args.device}, {torch.get_num_threads()} "
          f"threads, {args.precision}{', ours compiled' if args.compile else ''}, median of {args.repeats}; "
          f"peak {peak.source}")
    for name, r in results.items():
        mfu = f"MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else ""
        print(f"{name:<16}{r['median_s']:>8.3f} s/step{r['tokens_per_s']:>9.0f} tokens/s  {r['tflops']:.3f} TFLOPS "
              f"{mfu}  first loss {r['first_loss']:.4f}")
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x")
    record = dict(benchmark="gpt2_step", transformers=transformers.__version__,
                  threads=torch.get_num_threads(), size=args.size, model_config=dataclasses.asdict(cfg),
                  shapes=dict(batch_size=args.batch_size, seq_len=args.seq_len), warmup=args.warmup,
                  repeats=args.repeats, load_average_before=load_before, load_average_after=load_average(),
                  device=args.device, precision=args.precision, compiled=args.compile,
                  peak_tflops=peak.flops_per_s and peak.flops_per_s / 1e12, peak_source=peak.source,
                  optimizers={"ours": "optimizers.AdamW", "hf": "torch.optim.AdamW()",
                              "hf-fused-adamw": "torch.optim.AdamW(fused=True)"},
                  results=results, ratios=ratios, hf_over_ours_time=ratio)
    write_results(record, args.output, smoke=args.smoke)


if __name__ == "__main__":
    main()
