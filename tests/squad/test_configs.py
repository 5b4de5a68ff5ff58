"""The shipped SQuAD recipes load and keep their invariants; the squad section is strict."""
from pathlib import Path

import pytest

from groupbert.config import ConfigError, load_config
from groupbert.squad.dataset import shipped_file

ROOT = Path(__file__).resolve().parents[2]


def test_groupbert_base_recipe():
    cfg = load_config(ROOT / "configs/squad/groupbert_base.yaml")
    assert (cfg.model.type, cfg.data.seq_len, cfg.optimizer.name, cfg.optimizer.lr) == ("groupbert", 384, "lamb", 4e-4)
    assert (cfg.train.gradient_accumulation, cfg.squad.epochs, cfg.schedule.warmup_fraction) == (40, 2.0, 0.1)
    assert cfg.model.hidden_dropout == cfg.model.attention_dropout == 0.1
    assert cfg.train.init_checkpoint == "runs/groupbert_base_phase2"
    assert (cfg.squad.doc_stride, cfg.squad.max_query_length) == (128, 64)


def test_tiny_minilm_recipe_and_shipped_data():
    cfg = load_config(ROOT / "configs/squad/tiny_minilm.yaml")
    assert cfg.train.init_checkpoint == "minilm" and cfg.model.hidden_dropout == 0.1
    assert cfg.squad.train_file is None and shipped_file("train").name == "wiki_qa_train.json"
    assert shipped_file("dev").parent == ROOT / "groupbert" / "squad" / "data"


def test_squad_section_is_checked():
    with pytest.raises(ConfigError, match="squad.doc_stride"):
        load_config(None, ["squad.doc_stride=0"])
    with pytest.raises(ConfigError, match="squad.epochs"):
        load_config(None, ["squad.epochs=fast"])
    assert load_config(None, ["squad.epochs=null"]).squad.epochs is None
