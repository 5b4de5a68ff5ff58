"""Optimizer settings that PopTorch 3.4 ignores are refused before an IPU run starts (exit 2), never run
silently as another recipe."""
import pytest

from groupbert.config import ConfigError, load_config
from groupbert.ipu.rules import check_run_config


def _cfg(*sets):
    return load_config(None, ["runtime.backend=ipu-model", "train.max_grad_norm=0", *sets])


def test_adamw_without_bias_correction_is_refused_on_the_ipu():
    """B6: graphcore/poptorch@sdk-release-3.4 python/_optimizer_attributes.py (``_toPoptorchOptimizer``)
    turns ``AdamW(bias_correction=False)`` into the type ADAMW_NO_BIAS, and
    popart_compiler/source/CompilerImpl.cpp (``CompilerImpl::getPopartOptimizer``) has no branch for it:
    PopART runs ``AdamMode::Adam``, i.e. bias-corrected AdamW. LAMB's flag selects ``AdamMode::LambNoBias``
    and is honoured, so it stays allowed."""
    with pytest.raises(ConfigError, match="ignored by PopTorch 3.4's AdamW") as e:
        check_run_config(_cfg("optimizer.name=adamw", "optimizer.bias_correction=false"))
    assert e.value.key == "optimizer.bias_correction"
    check_run_config(_cfg("optimizer.name=adamw", "optimizer.bias_correction=true"))
    check_run_config(_cfg("optimizer.name=adamw"))
    check_run_config(_cfg("optimizer.name=lamb", "optimizer.bias_correction=false"))


def test_the_shipped_ipu_recipes_pass_the_rules():
    """Every configs/ recipe with an ``ipu`` section is accepted by the IPU rules (none relies on an
    option PopTorch ignores)."""
    from pathlib import Path

    import yaml
    root = Path(__file__).resolve().parents[2] / "configs"
    checked = 0
    for path in sorted(root.rglob("*.yaml")):
        text = yaml.safe_load(path.read_text()) or {}
        if "ipu" not in text or "model" not in text:
            continue
        try:
            check_run_config(load_config(str(path), ["runtime.backend=ipu-model"]))
        except ConfigError as e:  # other rules may need the recipe's own IPU settings; not this one
            assert e.key != "optimizer.bias_correction", path
        checked += 1
    assert checked > 0
