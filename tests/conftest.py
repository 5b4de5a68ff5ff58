"""Shared fixtures: no network, no W&B traffic, small thread counts, a `slow` marker, and the one tiny
configuration the tests build models and runs from.

- ``tiny_model_config``: ``make(type="groupbert", **overrides) -> ModelConfig`` on :data:`TINY_MODEL`.
- ``tiny_model_overrides``: the same model as ``load_config`` overrides (``model.k=v`` strings).
- ``tiny_overrides``: :data:`TINY_RUN`, the tiny pretraining run as ``load_config`` overrides (a list;
  what a test hands to a CLI as ``--set``).
- ``tiny_config``: ``make(*extra_overrides, config=None) -> RunConfig``: :data:`TINY_RUN`, then
  ``data.cache_dir`` under the test's ``tmp_path``, then ``extra_overrides`` (later overrides win), over
  the defaults or the YAML file ``config``. ``tiny_config_at`` is the same with the directory as first
  argument, for module-scoped fixtures that share one run.

A test states only what differs from these.
"""
import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer end-to-end runs (make test-all)")


# --------------------------------------------------------------------------------------------------
# The tiny model: Hugging Face's BertModelTester sizes, a deliberately odd intermediate size (not 4H)
# so that a mixed-up dimension fails on shapes.
TINY_MODEL = dict(vocab_size=99, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37, max_positions=64)
# GroupBERT's grouped FFN needs intermediate_size % ffn_groups (4) == 0, hence 36; 4 conv groups of 8.
TINY_GROUPBERT = dict(intermediate_size=36, conv_group_size=8)


def _tiny_model(type: str, overrides: dict) -> dict:
    return {"type": type, **TINY_MODEL, **(TINY_GROUPBERT if type == "groupbert" else {}), **overrides}


@pytest.fixture(scope="session")
def tiny_model_config():
    """``make(type="groupbert", **overrides) -> ModelConfig``: :data:`TINY_MODEL` (GroupBERT: with
    :data:`TINY_GROUPBERT`), then ``overrides``."""
    from groupbert.config import ModelConfig

    def make(type: str = "groupbert", **overrides):
        return ModelConfig(**_tiny_model(type, overrides))
    return make


@pytest.fixture(scope="session")
def tiny_model_overrides():
    """``make(type="groupbert", **overrides) -> ["model.type=...", "model.vocab_size=99", ...]``: the model
    of ``tiny_model_config`` as ``load_config`` overrides."""
    def make(type: str = "groupbert", **overrides):
        return [f"model.{k}={v}" for k, v in _tiny_model(type, overrides).items()]
    return make


# --------------------------------------------------------------------------------------------------
# The tiny pretraining run, as load_config overrides. Its model is TINY_MODEL's width on one layer of
# two heads with a 2H feed-forward (the size the run tests' thresholds and timings were set with); the
# runs tokenise with the bundled WordPiece vocabulary (ModelConfig's default vocab_size, 30522) and keep
# the default 512 positions (phase 2 lengthens data.seq_len), so those two keys are not set here.
# Precision is pinned to fp32: ``runtime.precision: auto`` picks bf16 on CPUs with AVX512-BF16 or AMX, and
# the runs' thresholds and exact-equality checks are fp32's (a test about precision sets its own).
TINY_RUN_MODEL = dict(hidden_size=TINY_MODEL["hidden_size"], num_layers=1, num_heads=2, intermediate_size=64)
TINY_RUN = [f"model.{k}={v}" for k, v in TINY_RUN_MODEL.items()] + [
    "data.seq_len=64", "data.max_predictions=10", "data.max_documents=6", "data.validation_fraction=0.2",
    "train.micro_batch_size=8", "train.eval_batches=2",
    "logging.log_every=1", "logging.progress_bar=false", "logging.wandb.mode=disabled",
    "runtime.threads=2", "runtime.precision=fp32"]


@pytest.fixture(scope="session")
def tiny_overrides():
    """:data:`TINY_RUN` (a fresh list): ``[*tiny_overrides, *extra]``, or ``--set`` for a CLI."""
    return list(TINY_RUN)


@pytest.fixture(scope="session")
def tiny_config_at():
    """``make(directory, *extra_overrides, config=None) -> RunConfig``, data.cache_dir under ``directory``."""
    from groupbert.config import load_config

    def make(directory, *extra, config=None):
        return load_config(config, [*TINY_RUN, f"data.cache_dir={Path(directory) / 'cache'}", *extra])
    return make


@pytest.fixture
def tiny_config(tiny_config_at, tmp_path):
    """``make(*extra_overrides, config=None) -> RunConfig``, data.cache_dir under ``tmp_path``."""
    def make(*extra, config=None):
        return tiny_config_at(tmp_path, *extra, config=config)
    return make
