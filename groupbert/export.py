"""``python -m groupbert.export RUN_OR_CHECKPOINT --output DIR``: a run's model as a Hugging Face
``save_pretrained`` directory that ``transformers`` loads without this project.

The input is a run directory (its latest checkpoint), ``checkpoints/step-N`` or ``checkpoints/best``; the
checkpoint's checksums are verified, its ``state.json`` gives the task and the model, the run's
``config.yaml`` the tokenizer (``data.vocab_file``, ``data.merges_file``, ``data.lowercase``), which must be
the vocabulary the checkpoint recorded (sha256). What is written (``groupbert.interop``):

=======================  ====================================================================================
run                      directory
=======================  ====================================================================================
BERT, MLM + NSP          ``BertForPreTraining`` (AutoModelForPreTraining, AutoModelForMaskedLM), WordPiece files
BERT, SQuAD              ``BertForQuestionAnswering`` (AutoModelForQuestionAnswering), WordPiece files
GPT-2                    ``GPT2LMHeadModel`` (AutoModelForCausalLM) + ``generation_config.json``, BPE files
GroupBERT (either task)  optimum-graphcore's GroupBERT layout (``groupbert/interop/optimum_groupbert.py``)
=======================  ====================================================================================

plus ``groupbert_export.json`` (where it came from). The directory is written as ``DIR.tmp-PID`` and renamed
into place at the end, so it is never half written; an existing non-empty ``DIR`` is refused unless
``--overwrite``. Exit codes: 0 done, 2 bad input (the message names the file), 1 anything else.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from groupbert.config import ConfigError, ModelConfig, RunConfig, load_config
from groupbert.data.causal_lm import bpe_fingerprint, bundled_bpe_files, load_gpt2_bpe
from groupbert.data.tokenizer import bundled_vocab_file, load_wordpiece, special_ids, vocab_fingerprint
from groupbert.interop import tokenizer_files
from groupbert.interop.hf import to_hf
from groupbert.models import build_model
from groupbert.models.qa import BertForQuestionAnswering
from groupbert.training import checkpoint as ckpt_io
from groupbert.training.checkpoint import CheckpointError

logger = logging.getLogger(__name__)

TASKS = ("mlm_nsp", "causal_lm", "squad")   # the task names checkpoints record (groupbert/tasks)


def model_from_checkpoint(ckpt: ckpt_io.Checkpoint) -> torch.nn.Module:
    """The checkpoint's model (its task's class) with its weights, in eval mode."""
    task = ckpt.state.get("task")
    if task not in TASKS:
        raise CheckpointError(f"{ckpt.path / 'state.json'}: task {task!r} has no export (one of {', '.join(TASKS)})")
    try:
        cfg = ModelConfig(**ckpt.state["model_config"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt.path / 'state.json'}: no usable model_config ({e})") from None
    model = BertForQuestionAnswering(cfg) if task == "squad" else build_model(cfg)
    ckpt_io.load_model_weights(model, ckpt)
    return model.eval()


def _run_config(ckpt: ckpt_io.Checkpoint, config: Optional[Path]) -> RunConfig:
    path = config or ckpt.path.parent.parent / "config.yaml"   # <run>/checkpoints/step-N
    if not path.is_file():
        raise ConfigError(f"{path} is missing: the run's config.yaml says how it tokenised (or give --config)")
    return load_config(path, check_optimizer=False)   # only data.* and the model are read


def _checked(digest: str, ckpt: ckpt_io.Checkpoint, what: str) -> None:
    saved = ckpt.state.get("vocab_sha256")
    if saved is not None and saved != digest:
        raise CheckpointError(f"{what} is not the vocabulary {ckpt.path} was trained with "
                              f"({ckpt.state.get('vocab_file')}); set data.vocab_file (--config) to that one")


def _fits(size: int, model_cfg: ModelConfig, what: str) -> None:
    if size > model_cfg.vocab_size:
        raise CheckpointError(f"{what} has {size} tokens but the model's embedding table has {model_cfg.vocab_size}")


def write_tokenizer(out: Path, cfg: RunConfig, model_cfg: ModelConfig, ckpt: ckpt_io.Checkpoint) -> dict:
    """The run's tokenizer files in ``out``; returns the special ids the model config needs and a summary."""
    d = cfg.data
    if model_cfg.type == "gpt2":
        vocab, merges = (Path(d.vocab_file), Path(d.merges_file) if d.merges_file else
                         Path(d.vocab_file).with_name("vocab.bpe")) if d.vocab_file else bundled_bpe_files()
        _checked(bpe_fingerprint(vocab, merges), ckpt, f"{vocab} + {merges}")
        _fits(load_gpt2_bpe(vocab, merges).get_vocab_size(), model_cfg, str(vocab))
        files = tokenizer_files.write_byte_level_bpe(out, vocab, merges, model_cfg.max_positions)
        return {"eos_id": tokenizer_files.bpe_end_of_text_id(vocab), "files": files, "vocab_file": vocab.name}
    vocab = Path(d.vocab_file) if d.vocab_file else bundled_vocab_file()
    _checked(vocab_fingerprint(vocab), ckpt, str(vocab))
    wordpiece = load_wordpiece(vocab, d.lowercase)
    _fits(wordpiece.get_vocab_size(with_added_tokens=True), model_cfg, str(vocab))
    files = tokenizer_files.write_wordpiece(out, vocab, d.lowercase, model_cfg.max_positions)
    return {"pad_id": special_ids(wordpiece).pad, "files": files, "vocab_file": vocab.name,
            "do_lower_case": d.lowercase}


def _prepare_output(output: Path, overwrite: bool) -> Path:
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ConfigError(f"--output {output} exists and is not empty (--overwrite replaces it)")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f"{output.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def _move_into_place(tmp: Path, output: Path) -> None:
    if output.exists():   # empty, or --overwrite: the old one goes only once the new one is complete
        old = output.with_name(f"{output.name}.old-{os.getpid()}")
        output.rename(old)
        tmp.rename(output)
        shutil.rmtree(old)
    else:
        tmp.rename(output)


def export(checkpoint: str | Path, output: str | Path, overwrite: bool = False,
           config: Optional[str | Path] = None) -> Path:
    """Write the ``save_pretrained`` directory of ``checkpoint`` (module docstring) at ``output``."""
    ckpt = ckpt_io.read_checkpoint(checkpoint)
    cfg = _run_config(ckpt, Path(config) if config else None)
    model = model_from_checkpoint(ckpt)
    output = Path(output)
    tmp = _prepare_output(output, overwrite)
    try:
        tok = write_tokenizer(tmp, cfg, model.config, ckpt)
        exported = to_hf(model, pad_id=tok.get("pad_id"), eos_id=tok.get("eos_id"))
        (tmp / "config.json").write_text(json.dumps(exported.config, indent=2, sort_keys=True) + "\n")
        save_file(exported.state_dict, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if exported.generation_config is not None:
            (tmp / "generation_config.json").write_text(json.dumps(exported.generation_config, indent=2) + "\n")
        info = {"source": str(ckpt.path), "step": ckpt.step, "task": ckpt.state["task"],
                "run_id": ckpt.state.get("run_id"), "architecture": exported.architecture,
                "model_config": asdict(model.config), "tokenizer": {k: v for k, v in tok.items() if k != "files"},
                "vocab_sha256": ckpt.state.get("vocab_sha256")}
        (tmp / "groupbert_export.json").write_text(json.dumps(info, indent=1) + "\n")
        _move_into_place(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %s (step %d, %s) as %s to %s", ckpt.path, ckpt.step, ckpt.state["task"],
                exported.architecture, output)
    return output


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m groupbert.export", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a run's model and tokenizer as a Hugging Face save_pretrained directory.",
        epilog="examples:\n  python -m groupbert.export runs/my_run --output exports/my_run\n"
               "  python -m groupbert.export runs/squad/checkpoints/best --output exports/squad --overwrite\n"
               "Exit codes: 0 done; 2 bad input (the message names the file); 1 anything else.")
    p.add_argument("checkpoint", type=Path, metavar="RUN_OR_CHECKPOINT",
                   help="a run directory (its latest checkpoint), checkpoints/step-N or checkpoints/best")
    p.add_argument("--output", type=Path, required=True, metavar="DIR", help="the directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists and is not empty")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="the run's config (default: <run>/config.yaml); its data.* keys name the tokenizer")
    p.add_argument("--quiet", action="store_true", help="log warnings only")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    from groupbert.cli import exit_code_for

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        out = export(args.checkpoint, args.output, args.overwrite, args.config)
    except Exception as e:  # noqa: BLE001 - bad input: exit 2 with its message; else 1 with the traceback
        return exit_code_for(e, logging.getLogger("groupbert"))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
