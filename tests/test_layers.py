"""The architecture as rules on the imports, read from the source: layers import downwards only, and
PopTorch (or its emulator) is imported inside ``groupbert/ipu/`` only.

Layers, top to bottom (a module may import its own package and any lower layer):

    experiments  ->  cli, export, infer  ->  tasks  ->  training  ->  ipu  ->  interop  ->  models, metrics  ->  config
                             ->  squad (SQuAD's data and scoring)  ->  data, optimizers  ->  errors, custom_ops

(experiments drive the programs: the sweep checks a run's arguments with the programs' own parser.)

A module's ``main()`` (its command line, e.g. ``python -m groupbert.data.prepare``) may read a run config:
imports inside a function named ``main`` are not checked.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [  # (rank, module prefixes), top first
    (9, ("groupbert",)),   # the package's own __init__ (it imports nothing)
    (8.5, ("groupbert.experiments",)),
    (8, ("groupbert.cli", "groupbert.export", "groupbert.infer")),
    (7, ("groupbert.tasks",)),
    (6, ("groupbert.training",)),
    (5, ("groupbert.ipu",)),
    (4.5, ("groupbert.interop",)),   # Hugging Face and optimum-graphcore layouts of our models
    (4, ("groupbert.models", "groupbert.metrics")),
    (3, ("groupbert.config",)),
    (2.5, ("groupbert.squad",)),
    (2, ("groupbert.data", "optimizers")),
    (1, ("groupbert.errors", "custom_ops")),
]
POPTORCH = ("poptorch", "popart", "groupbert.ipu.emulator")


def _rank(module: str):
    best = None   # the longest matching prefix decides ("groupbert" only matches the package itself)
    for rank, prefixes in LAYERS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".") and p != "groupbert") and (
                    best is None or len(p) > best[0]):
                best = (len(p), rank)
    return None if best is None else best[1]


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "groupbert" else parts[0]


def _modules():
    for top in ("groupbert", "optimizers", "custom_ops"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            yield name, path


def _imports(path: Path):
    """(imported module, line) for every import outside a ``main`` function; ``from a import b`` also
    yields ``a.b`` (b may be a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    exempt = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "main":
            exempt.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in exempt:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
            for alias in node.names:
                yield f"{node.module}.{alias.name}", node.lineno


MODULES = list(_modules())


def test_every_module_has_a_layer():
    assert [name for name, _ in MODULES if _rank(name) is None] == []


@pytest.mark.parametrize("name,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_go_downwards_and_poptorch_stays_in_ipu(name, path):
    rank, package = _rank(name), _package(name)
    upward, poptorch = [], []
    for target, line in _imports(path):
        if target.startswith(POPTORCH) or target in ("groupbert.ipu.poptorch", "groupbert.ipu.USING_EMULATOR"):
            if not name.startswith("groupbert.ipu"):
                poptorch.append(f"{path.name}:{line} imports {target}")
        target_rank = _rank(target)
        if target_rank is not None and _package(target) != package and target_rank >= rank:
            upward.append(f"{path.name}:{line} imports {target} (layer {target_rank} >= {rank})")
    assert not poptorch, "PopTorch outside groupbert/ipu/: " + "; ".join(poptorch)
    assert not upward, "imports that go up or sideways: " + "; ".join(upward)


def test_the_rules_catch_a_violation(tmp_path):
    """The checker itself: an upward import and a PopTorch import outside ipu/ are found."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom groupbert.training.engine import train\nfrom groupbert.ipu import poptorch\n"
                   "def main():\n    from groupbert.cli import main\n")
    found = [t for t, _ in _imports(bad)]
    assert "groupbert.training.engine" in found and "groupbert.ipu.poptorch" in found
    assert "groupbert.cli" not in found   # inside main(): an entry point
    assert _rank("groupbert.training.engine") > _rank("groupbert.ipu.backend") > _rank("groupbert.config")


def test_poptorch_calls_stay_in_ipu():
    """Not only imports: PopTorch's API (handed around as an object) is used inside groupbert/ipu/ only."""
    api = {"identity_loss", "trainingModel", "inferenceModel", "setOptimizer", "BeginBlock", "copyWeightsToHost",
           "recomputationCheckpoint", "PipelinedExecution", "custom_op"}
    found = []
    for name, path in MODULES:
        if name.startswith("groupbert.ipu") or name == "custom_ops.emulator_ops":   # the emulator's op registry
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in api:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
    assert found == []
