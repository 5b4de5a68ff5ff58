"""One GPT-2 causal-LM training step (forward, backward, AdamW) of ours against Hugging Face's.

- ``ours``: ``groupbert.models.GPT2LMHeadModel`` + ``optimizers.AdamW`` (its default path: the fused C++
  update where built), what ``run_pretraining.py`` runs for ``model.type: gpt2``;
- ``hf``: ``transformers.GPT2LMHeadModel`` from the same config (built with
  ``groupbert.models.gpt2.to_hf_config``, SDPA attention) + ``torch.optim.AdamW`` (torch's default path).
Both start from the same weights (ours are copied into HF's model) and see the same batch; their first
losses are printed as a check. ``--warmup`` untimed steps, then ``--repeats`` interleaved rounds; medians.

    .venv/bin/python benchmarks/bench_gpt2_step.py --size small --batch-size 4 --seq-len 256

Writes JSON to ``benchmarks/results/gpt2_step.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from benchmarks.bench_train_step import git_commit  # noqa: E402
from groupbert.config import ModelConfig  # noqa: E402
from groupbert.models.gpt2 import GPT2LMHeadModel, to_hf_config, to_hf_state_dict  # noqa: E402
from optimizers import AdamW, param_groups  # noqa: E402

SIZES = {  # H, L, A; the 124M model is "small" (GPT-2's own name for it)
    "small": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "tiny": dict(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                     "gpt2_step.json"))
    return p.parse_args()


class Stepper:
    def __init__(self, name, model, opt, batch, hf):
        self.name, self.model, self.opt, self.batch, self.hf = name, model, opt, batch, hf
        self.times, self.losses = [], []

    def step(self, record=True):
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        x = self.batch
        loss = self.model(input_ids=x, labels=x).loss
        loss.backward()
        self.opt.step()
        elapsed = time.perf_counter() - t0
        self.losses.append(loss.item())
        if record:
            self.times.append(elapsed)


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    torch.manual_seed(0)
    cfg = ModelConfig(type="gpt2", vocab_size=50257, max_positions=1024, **SIZES[args.size])
    ours = GPT2LMHeadModel(cfg).train()
    hf = transformers.GPT2LMHeadModel(to_hf_config(cfg)).train()
    hf.load_state_dict(to_hf_state_dict(ours), strict=False)  # same weights (HF's causal-mask buffers aside)
    batch = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len), generator=torch.Generator().manual_seed(1))
    kw = dict(lr=6e-4, betas=(0.9, 0.95), eps=1e-8)
    steppers = [Stepper("ours", ours, AdamW(param_groups(ours, 0.1), **kw), batch, False),
                Stepper("hf", hf, torch.optim.AdamW(param_groups(hf, 0.1), **kw), batch, True)]
    load_before = os.getloadavg()
    for _ in range(args.warmup):
        for st in steppers:
            st.step(record=False)
    for _ in range(args.repeats):
        for st in steppers:
            st.step()
    results = {st.name: dict(times_s=st.times, median_s=statistics.median(st.times), first_loss=st.losses[0],
                             tokens_per_s=args.batch_size * args.seq_len / statistics.median(st.times))
               for st in steppers}
    ratio = results["hf"]["median_s"] / results["ours"]["median_s"]
    print(f"\nGPT-2 {args.size}, batch {args.batch_size} x {args.seq_len}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    for name, r in results.items():
        print(f"{name:<6}{r['median_s']:>8.3f} s/step{r['tokens_per_s']:>9.0f} tokens/s  first loss {r['first_loss']:.4f}")
    print(f"hf / ours time: {ratio:.2f}x")
    commit, dirty = git_commit()
    record = dict(benchmark="gpt2_step", torch=torch.__version__, transformers=transformers.__version__,
                  python=platform.python_version(), cpu=platform.processor() or platform.machine(),
                  threads=torch.get_num_threads(), size=args.size, model_config=dataclasses.asdict(cfg),
                  shapes=dict(batch_size=args.batch_size, seq_len=args.seq_len), warmup=args.warmup,
                  repeats=args.repeats, git_commit=commit, git_dirty=dirty, load_average_before=load_before,
                  load_average_after=os.getloadavg(), results=results, hf_over_ours_time=ratio)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
