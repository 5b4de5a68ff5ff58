"""Config loading: strict keys, types and ranges, overrides, extends, and every shipped recipe."""
import glob
from pathlib import Path

import pytest
import yaml

from groupbert.config import ConfigError, RunConfig, config_from_dict, load_config, save_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(glob.glob(str(ROOT / "configs" / "*" / "*.yaml")))
PRETRAIN_CONFIGS = [c for c in CONFIGS if "/groupbert/" in c or "/bert/" in c]


def _write(tmp_path, name, tree):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(tree))
    return p


@pytest.mark.parametrize("path", PRETRAIN_CONFIGS, ids=lambda p: Path(p).relative_to(ROOT).as_posix())
def test_shipped_pretraining_configs_load_with_phase_invariants(path):
    cfg = load_config(path)
    if "phase1" in path:
        assert cfg.data.seq_len == 128
    else:
        assert cfg.data.seq_len in (384, 512)
        assert cfg.train.init_checkpoint, "phase 2 starts from a phase-1 checkpoint"
    assert cfg.model.type == Path(path).parent.name


@pytest.mark.parametrize("name,hidden,layers,batch", [
    ("groupbert/base_phase1.yaml", 768, 12, 65520), ("groupbert/base_phase2.yaml", 768, 12, 32800),
    ("groupbert/large_phase1.yaml", 1024, 24, 65520), ("groupbert/large_phase2.yaml", 1024, 24, 32800),
    ("bert/base_phase1.yaml", 768, 12, 65536), ("bert/base_phase2.yaml", 768, 12, 16384)])
def test_real_recipes_have_published_sizes_and_batches(name, hidden, layers, batch):
    cfg = load_config(ROOT / "configs" / name)
    assert (cfg.model.hidden_size, cfg.model.num_layers) == (hidden, layers)
    assert cfg.global_batch_size == batch


def test_defaults_and_derived():
    cfg = load_config(None, ["model.hidden_size=128", "model.num_heads=2", "train.max_steps=200",
                             "schedule.warmup_fraction=0.25"])
    assert cfg.model.eps == 1e-3 and cfg.warmup_steps_for(200) == 50 and cfg.warmup_steps_for(10) == 2
    assert load_config(None, ["model.type=bert"]).model.eps == 1e-12
    assert load_config(None, ["schedule.warmup_steps=30"]).warmup_steps_for(1000) == 30
    assert load_config(None, ["schedule.warmup_steps=30"]).warmup_steps_for(20) == 20   # at most the run
    assert load_config(None, ["schedule.warmup_steps=0"]).warmup_steps_for(1000) == 0


def test_renamed_keys_are_refused_naming_the_new_ones(tmp_path):
    with pytest.raises(ConfigError, match="renamed: use schedule.warmup_steps .* or schedule.warmup_fraction") as e:
        load_config(None, ["schedule.warmup=0.1"])
    assert e.value.key == "schedule.warmup"
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  init_checkpoint: runs/x\n")
    with pytest.raises(ConfigError, match="renamed: use train.init_checkpoint") as e:
        load_config(old)
    assert e.value.key == "model.init_checkpoint" and "old.yaml" in str(e.value)


def test_one_warmup_unit_per_layer(tmp_path):
    """A file (or --set) that gives one warmup key replaces the other from the file it extends; one layer
    giving both is an error."""
    base = tmp_path / "base.yaml"
    base.write_text("schedule:\n  warmup_steps: 100\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nschedule:\n  warmup_fraction: 0.2\n")
    cfg = load_config(child, ["train.max_steps=1000"])
    assert (cfg.schedule.warmup_steps, cfg.warmup_steps_for(1000)) == (None, 200)
    assert load_config(base, ["schedule.warmup_fraction=0.3"]).warmup_steps_for(1000) == 300
    assert load_config(child, ["schedule.warmup_steps=7"]).warmup_steps_for(1000) == 7
    both = tmp_path / "both.yaml"
    both.write_text("schedule:\n  warmup_steps: 5\n  warmup_fraction: 0.2\n")
    with pytest.raises(ConfigError, match="not both"):
        load_config(both)


@pytest.mark.parametrize("override,key,fragment", [
    ("model.hiden_size=3", "model.hiden_size", "unknown key"),
    ("nosuch.key=1", "nosuch", "unknown key"),
    ("train.max_steps=0", "train.max_steps", "must be > 0"),
    ("train.max_steps=1.5", "train.max_steps", "expected an integer"),
    ("train.micro_batch_size=abc", "train.micro_batch_size", "expected an integer"),
    ("optimizer.lr=-1", "optimizer.lr", "must be > 0"),
    ("optimizer.beta2=1.0", "optimizer.beta2", "must be < 1"),
    ("optimizer.weight_decay=-0.1", "optimizer.weight_decay", "must be >= 0"),
    ("model.type=gpt9", "model.type", "not one of"),
    ("logging.progress_bar=maybe", "logging.progress_bar", "true/false"),
    ("data.seq_len=1024", "data.seq_len", "exceeds model.max_positions"),
    ("schedule.warmup_fraction=2.5", "schedule.warmup_fraction", "must be <= 1"),
    ("schedule.warmup_steps=2.5", "schedule.warmup_steps", "expected an integer"),
    ("ipu.layers_per_ipu=[1,2]", "ipu.layers_per_ipu", "sum to model.num_layers"),
    ("model.num_heads=5", "model.num_heads", "not divisible"),
])
def test_bad_overrides_name_the_key(override, key, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert e.value.key == key and fragment in str(e.value)
    assert e.value.source == "--set" or key in ("model.num_heads",)


def test_errors_name_the_file_the_value_came_from(tmp_path):
    _write(tmp_path, "base.yaml", {"train": {"max_steps": 10}, "model": {"hidden_size": 64, "num_heads": 2}})
    child = _write(tmp_path, "child.yaml", {"extends": "base.yaml", "train": {"micro_batch_size": "big"}})
    with pytest.raises(ConfigError) as e:
        load_config(child)
    assert e.value.key == "train.micro_batch_size" and e.value.source.endswith("child.yaml")
    _write(tmp_path, "bad.yaml", {"optimizer": {"lrr": 1.0}})
    child2 = _write(tmp_path, "child2.yaml", {"extends": "bad.yaml"})
    with pytest.raises(ConfigError) as e:
        load_config(child2)
    assert e.value.key == "optimizer.lrr" and e.value.source.endswith("bad.yaml")


def test_extends_merges_sections_and_overrides_win(tmp_path):
    _write(tmp_path, "base.yaml", {"train": {"max_steps": 10, "seed": 3}, "optimizer": {"lr": 1.0e-3}})
    child = _write(tmp_path, "child.yaml", {"extends": "base.yaml", "train": {"max_steps": 20}})
    cfg = load_config(child, ["optimizer.lr=5e-4"])
    assert (cfg.train.max_steps, cfg.train.seed, cfg.optimizer.lr) == (20, 3, 5e-4)


def test_circular_extends_and_bad_yaml_are_errors(tmp_path):
    _write(tmp_path, "a.yaml", {"extends": "b.yaml"})
    _write(tmp_path, "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "broken.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(ROOT / "configs/groupbert/tiny_phase2.yaml")
    save_config(cfg, tmp_path / "config.yaml")
    tree = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert tree["derived"]["global_batch_size"] == cfg.global_batch_size
    assert config_from_dict(tree) == cfg
    assert isinstance(cfg, RunConfig)


@pytest.mark.parametrize("name,lr,warmup,bias_correction", [
    ("groupbert/base_phase1.yaml", 0.012, 1000, True), ("groupbert/base_phase2.yaml", 0.01, 177, True),
    ("bert/base_phase1.yaml", 0.006, 1971, False), ("bert/base_phase2.yaml", 0.002828, 274, False)])
def test_real_recipes_use_lamb_with_published_settings(name, lr, warmup, bias_correction):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.optimizer.name == "lamb" and cfg.optimizer.lr == lr
    assert cfg.warmup_steps_for(cfg.train.max_steps) == warmup and cfg.optimizer.bias_correction is bias_correction
    if name.startswith("groupbert"):
        assert cfg.schedule.name == "polynomial" and cfg.schedule.warmup_power == 0.5


def test_unknown_optimizer_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["optimizer.name=adam"])
    assert e.value.key == "optimizer.name"
    for name in ("adamw", "lamb", "lion", "lion_a", "lion_ar"):
        assert name in str(e.value)


def test_setting_an_optimizer_does_not_have_is_rejected():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["optimizer.name=lion", "optimizer.eps=1e-8"])
    assert e.value.key == "optimizer.eps"
    cfg = load_config(None, ["optimizer.name=lion_ar", "optimizer.per_row=false", "optimizer.beta1=0.95"])
    assert cfg.optimizer.per_row is False


@pytest.mark.parametrize("override,key", [("optimizer.lr=0", "optimizer.lr"), ("optimizer.beta1=1.0", "optimizer.beta1"),
                                          ("optimizer.beta2=-0.1", "optimizer.beta2"),
                                          ("optimizer.weight_decay=-1", "optimizer.weight_decay")])
def test_invalid_optimizer_hyperparameters_fail_at_load(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert e.value.key == key
