"""A tiny SQuAD fine-tuning run: the shared tiny run (tests/conftest.py) with the shared tiny model as a
BERT on the bundled WordPiece vocabulary (30522 entries), short windows and two steps on CPU."""
import pytest

SQUAD = ["squad.doc_stride=16", "squad.max_query_length=16", "squad.epochs=null", "train.max_steps=2",
         "train.micro_batch_size=4", "train.checkpoint_every=1", "runtime.backend=cpu"]


@pytest.fixture(scope="session")
def squad_overrides(tiny_overrides, tiny_model_overrides):
    """The tiny fine-tuning run as ``load_config`` overrides (a fresh list), e.g. ``--set`` for run_squad.py."""
    return [*tiny_overrides, *tiny_model_overrides("bert", vocab_size=30522), *SQUAD]


@pytest.fixture
def squad_config(tiny_config, tiny_model_overrides):
    """``make(*extra_overrides) -> RunConfig``: the tiny fine-tuning run, data.cache_dir under tmp_path."""
    return lambda *extra: tiny_config(*tiny_model_overrides("bert", vocab_size=30522), *SQUAD, *extra)
