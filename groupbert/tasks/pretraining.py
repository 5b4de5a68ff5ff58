"""Pretraining jobs (``run_pretraining.py``): BERT / GroupBERT masked LM + NSP, or GPT-2 causal LM, trained
by the one engine (``groupbert.training.engine``) on prepared data.

The data are a prepared directory (``data.prepared``) or ``data.corpus`` prepared on first use; both go
through ``groupbert.data.prepare``, so there is one data path. A prepared directory's manifest decides the
preparation settings: a ``data.*`` key the recipe leaves at its default takes the manifest's value (and the
run's ``config.yaml`` records it); a key the recipe or ``--set`` gives with another value is an error
naming it, as is a different vocabulary or ``data.seq_len`` for MLM + NSP (the instances are built for it).
"""
from __future__ import annotations

import logging
from pathlib import Path

from groupbert.config import ConfigError, RunConfig
from groupbert.data.errors import DataError
from groupbert.data.masking import MaskingSpec
from groupbert.data.cache import prepared_in_cache
from groupbert.data.prepare import PrepareSettings, load_manifest
from groupbert.data.prepared import CausalLMData, MaskedLMData
from groupbert.models import build_model
from groupbert.tasks.causal_lm import CausalLMTask
from groupbert.tasks.masked_lm import MaskedLMTask
from groupbert.training import engine

logger = logging.getLogger(__name__)


def adopt_manifest(cfg: RunConfig, manifest: dict, root: Path) -> None:
    """Set the run's preparation keys from the manifest (see the module docstring)."""
    settings = dict(manifest["settings"])
    kind = settings.pop("kind")
    want = PrepareSettings.from_config(cfg).kind
    if kind != want:
        raise ConfigError(f"{root} holds {kind} data, but model.type {cfg.model.type!r} trains on {want}",
                          "model.type")
    for key, value in settings.items():
        current = getattr(cfg.data, key)
        if current == value:
            continue
        if key == "seq_len" or f"data.{key}" in cfg.explicit_keys:
            raise ConfigError(f"{current!r} here, but {root} was prepared with {value!r}: leave it unset, or "
                              "prepare the data again with this value", f"data.{key}")
        setattr(cfg.data, key, value)
        logger.info("data.%s = %r (from %s)", key, value, root / "manifest.json")


def _check_vocabulary(cfg: RunConfig, manifest: dict, root: Path) -> tuple[str, str]:
    d = cfg.data
    if manifest["settings"]["kind"] == "causal_lm":
        from groupbert.data.causal_lm import bpe_fingerprint
        digest, name = bpe_fingerprint(d.vocab_file, d.merges_file), d.vocab_file or "gpt2 (bundled)"
    else:
        from groupbert.data.tokenizer import bundled_vocab_file, vocab_fingerprint
        vocab = Path(d.vocab_file) if d.vocab_file else bundled_vocab_file()
        digest, name = vocab_fingerprint(vocab), str(vocab)
    entry = manifest["tokenizer"]
    if entry["vocab_sha256"] != digest:
        raise ConfigError(f"{root} was tokenised with {entry['vocab_file']}, not {name}", "data.vocab_file")
    if entry["vocab_size"] > cfg.model.vocab_size:
        raise ConfigError(f"the vocabulary {name} has {entry['vocab_size']} tokens but the model's embedding "
                          f"table has {cfg.model.vocab_size}", "model.vocab_size")
    return digest, name


def prepare_data(cfg: RunConfig, show_progress: bool = True, verify: bool = True):
    """(train data, validation data or None, vocabulary sha256, vocabulary name) for a pretraining run.
    ``verify``: hash every shard (rank 0 does; the others only check sizes)."""
    d = cfg.data
    if d.prepared:
        root = Path(d.prepared)
        manifest = load_manifest(root)
        adopt_manifest(cfg, manifest, root)
    else:
        root = prepared_in_cache(PrepareSettings.from_config(cfg), d.cache_dir, num_proc=d.num_proc,
                                 show_progress=show_progress, verify_checksums=verify and d.verify_checksums)
        manifest = load_manifest(root)
    digest, vocab_name = _check_vocabulary(cfg, manifest, root)
    check = verify and d.verify_checksums
    has_val = manifest["totals"]["validation"]["rows"] > 0
    if manifest["settings"]["kind"] == "causal_lm":
        train = CausalLMData(root, manifest, "train", seq_len=d.seq_len, verify_checksums=check)
        val = CausalLMData(root, manifest, "validation", seq_len=d.seq_len, verify_checksums=check) if has_val else None
        if len(train) == 0:
            raise DataError(f"{root} holds {manifest['totals']['train']['tokens']} training tokens, fewer than one "
                            f"block of data.seq_len={d.seq_len}")
        if val is not None and len(val) == 0:
            logger.warning("the validation split (%d tokens) is shorter than one block: no evaluation",
                           manifest["totals"]["validation"]["tokens"])
            val = None
    else:
        from groupbert.data.masked_lm import continuation_table
        from groupbert.data.tokenizer import bundled_vocab_file, load_wordpiece, special_ids

        tok = load_wordpiece(Path(d.vocab_file) if d.vocab_file else bundled_vocab_file(), lowercase=d.lowercase)
        spec = MaskingSpec(d.mask_prob, d.max_predictions, tok.get_vocab_size(with_added_tokens=True),
                           special_ids(tok), continuation_table(tok) if d.whole_word_masking else None)
        common = dict(spec=spec, seq_len=d.seq_len, seed=cfg.train.seed, verify_checksums=check)
        train = MaskedLMData(root, manifest, "train", max_per_pack=d.max_sequences_per_pack if d.packing else None,
                             cache_dir=d.cache_dir, **common)
        val = MaskedLMData(root, manifest, "validation", **common) if has_val else None
    logger.info("data %s: %d training %s (%d sequences), %d validation sequences of %d tokens", root, len(train),
                "packed rows" if d.packing else "sequences", train.num_sequences,
                val.num_sequences if val is not None else 0, d.seq_len)
    return train, val, digest, vocab_name


def pretraining_job(cfg: RunConfig, runtime) -> engine.Job:
    """Data, model and task of a pretraining run (``runtime`` decides which rank verifies checksums)."""
    train, val, digest, vocab_name = prepare_data(cfg, show_progress=cfg.logging.progress_bar and runtime.dist.is_main,
                                                  verify=runtime.dist.is_main)
    t = cfg.train
    if cfg.model.type == "gpt2":
        task = CausalLMTask(val, t.micro_batch_size, t.eval_batches)
    else:
        task = MaskedLMTask(cfg.data.packing, val, t.micro_batch_size, t.eval_batches)
    return engine.Job(task=task, model=build_model(cfg.model), train_data=train, total_steps=t.max_steps,
                      checkpoint_state={"vocab_sha256": digest, "vocab_file": vocab_name},
                      run_record={"train_sequences": train.num_sequences,
                                  "validation_sequences": val.num_sequences if val is not None else 0})


def pretrain(cfg: RunConfig, output_dir, resume: bool = False) -> dict:
    """Run (or continue, with ``resume``) a pretraining job; returns the final evaluation record."""
    return engine.train(cfg, output_dir, resume, pretraining_job)


def evaluate(cfg: RunConfig, checkpoint, output_dir) -> dict:
    """The validation split's metrics for a checkpoint, written to ``output_dir/eval_results.json``."""
    return engine.evaluate(cfg, checkpoint, output_dir, pretraining_job)
