"""Packaging (pyproject.toml + setup.py): the wheel holds every package, the data the code reads and the
licenses, its metadata declares the console commands and dependencies that match requirements.txt, and an
install in a fresh virtual environment runs each command from another directory.

Everything runs offline on a copy of the project (so no build output lands in the checkout): setuptools
is .venv's (``--no-build-isolation``), nothing is downloaded (``--no-deps --no-index``). A fresh venv gets
no dependencies of its own: a ``.pth`` file puts .venv's site-packages on its path, standing in for what
``pip install -e .`` would install there from the registry (README "Installing as a package" shows that
install done for real)."""
import configparser
import os
import shutil
import site
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("groupbert", "optimizers", "custom_ops")
COMMANDS = {
    "groupbert-pretrain": "run_pretraining:main",
    "groupbert-squad": "run_squad:main",
    "groupbert-prepare": "groupbert.data.prepare:main",
    "groupbert-export": "groupbert.export:main",
    "groupbert-infer": "groupbert.infer:main",
    "groupbert-sweep": "groupbert.experiments.sweep.__main__:main",
    "groupbert-planner": "groupbert.ipu.planner:main",
}
# requirements.txt pins that are not runtime dependencies of the package
NOT_RUNTIME = {"pytest", "setuptools"}
PROJECT_FILES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "DATA_NOTICE.md", "run_pretraining.py",
                 "run_squad.py")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".cache", "*.egg-info")


def _copy_project(dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, dst / name)
    for name in (*PACKAGES, "configs"):
        shutil.copytree(ROOT / name, dst / name, ignore=IGNORE)
    return dst


def _pip(python, *args, cwd=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_INDEX")}
    r = subprocess.run([str(python), "-m", "pip", *args, "--no-deps", "--no-build-isolation", "--no-index",
                        "--disable-pip-version-check", "--quiet"], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def _repo_files(top: str):
    """Every file under a package directory of the checkout, relative to the root (bytecode aside)."""
    for path in sorted((ROOT / top).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield path.relative_to(ROOT).as_posix()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return _copy_project(tmp_path_factory.mktemp("pkg") / "project")


@pytest.fixture(scope="module")
def wheel(project, tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    _pip(sys.executable, "wheel", str(project), "-w", str(dist))
    [built] = dist.glob("groupbert-*.whl")
    return built


def test_wheel_holds_the_packages_data_and_licenses(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for top in PACKAGES for f in _repo_files(top) if f not in names]
    assert missing == []   # every module, custom_ops/csrc/*.cpp, groupbert/squad/data/*
    assert {"custom_ops/csrc/grouped_conv1d.cpp", "custom_ops/csrc/fused_optim.cpp",
            "groupbert/squad/data/wiki_qa_train.json", "groupbert/squad/data/wiki_qa_dev.json"} <= names
    configs = {f"groupbert/configs/{p.relative_to(ROOT / 'configs').as_posix()}"
               for p in (ROOT / "configs").rglob("*.yaml")}
    assert configs and configs <= names   # the recipes, as groupbert/configs/
    assert {"run_pretraining.py", "run_squad.py"} <= names
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert {f"{dist_info}/licenses/LICENSE", f"{dist_info}/licenses/DATA_NOTICE.md"} <= names
    assert {n.split("/")[0] for n in names} == {*PACKAGES, "run_pretraining.py", "run_squad.py", dist_info}


def test_wheel_metadata_commands_and_dependencies(wheel):
    z = zipfile.ZipFile(wheel)
    dist_info = next(n.split("/")[0] for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    entry_points = configparser.ConfigParser()
    entry_points.read_string(z.read(f"{dist_info}/entry_points.txt").decode())
    assert dict(entry_points["console_scripts"]) == COMMANDS
    meta = Parser().parsestr(z.read(f"{dist_info}/METADATA").decode())
    assert meta["License-Expression"] == "Apache-2.0"
    assert sorted(meta.get_all("License-File")) == ["DATA_NOTICE.md", "LICENSE"]
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    runtime = {r.name.lower().replace("_", "-"): r for r in requires if r.marker is None}
    assert str(runtime["torch"].specifier) == "==2.13.0"   # never another torch build than the one installed
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[req.name.lower().replace("_", "-")] = next(iter(req.specifier)).version
    assert set(runtime) == set(pins) - NOT_RUNTIME
    for name, version in pins.items():   # the tested versions satisfy the declared ranges
        if name in runtime:
            assert runtime[name].specifier.contains(version, prereleases=True), (name, version)
    import torch   # the local CPU wheel (2.13.0+cpu) satisfies it
    assert runtime["torch"].specifier.contains(torch.__version__)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_is_a_main_that_returns_an_exit_code(command):
    import importlib
    import inspect

    module, func = COMMANDS[command].split(":")
    main = getattr(importlib.import_module(module), func)
    params = list(inspect.signature(main).parameters.values())
    assert all(p.default is not p.empty for p in params)   # the console script calls main() without arguments


def _fresh_venv(path: Path) -> Path:
    """A new virtual environment whose only packages are .venv's, through a .pth file (no pip of its own)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "_groupbert_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def _run(args, cwd, **env):
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(a) for a in args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True,
                          timeout=180)


CHECK = """
import json, sys
from pathlib import Path
import groupbert, custom_ops._build as b, groupbert.squad.dataset as squad
from groupbert.config import bundled_configs, find_config, load_config
from groupbert.experiments.sweep.spec import RUN_CWD
print(json.dumps({"groupbert": groupbert.__file__, "configs": str(bundled_configs()),
                  "tiny": str(find_config("configs/groupbert/tiny_phase1.yaml")),
                  "squad_data": sorted(p.name for p in squad.DATA_DIR.glob("*.json")),
                  "build_dir": str(b.build_dir()), "run_cwd": None if RUN_CWD is None else str(RUN_CWD),
                  "seq_len": load_config("configs/groupbert/tiny_phase1.yaml").data.seq_len}))
"""


@pytest.mark.slow
def test_editable_install_runs_each_command_from_another_directory(project, tmp_path):
    """``pip install -e .`` into a fresh venv; from an unrelated directory every console command and the
    three ``python -m`` commands answer --help, and the code finds the checkout's recipes and data."""
    import json

    python = _fresh_venv(tmp_path / "venv")
    _pip(python, "install", "-e", str(project))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for command in sorted(COMMANDS):
        r = _run([tmp_path / "venv" / "bin" / command, "--help"], elsewhere)
        assert r.returncode == 0 and "usage:" in r.stdout, (command, r.stdout, r.stderr)
    for module in ("groupbert.data.prepare", "groupbert.experiments.sweep", "groupbert.ipu.planner"):
        r = _run([python, "-m", module, "--help"], elsewhere)
        assert r.returncode == 0 and "usage:" in r.stdout, (module, r.stderr)
    r = _run([python, "-c", CHECK], elsewhere)
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    assert found["groupbert"] == str(project / "groupbert" / "__init__.py")   # editable: the checkout's code
    assert found["configs"] == str(project / "configs")
    assert found["tiny"] == str(project / "configs" / "groupbert" / "tiny_phase1.yaml") and found["seq_len"] == 128
    assert found["squad_data"] == ["wiki_qa_dev.json", "wiki_qa_source.json", "wiki_qa_train.json"]
    assert Path(found["build_dir"]).parent == project / ".cache" / "custom_ops"   # the checkout's build cache
    assert found["run_cwd"] == str(project)
    assert not list(elsewhere.iterdir())   # --help wrote nothing into the working directory


@pytest.mark.slow
def test_wheel_install_finds_its_data_outside_any_checkout(wheel, tmp_path):
    """A non-editable install: recipes from the wheel's groupbert/configs, the custom-op build in the user's
    cache (never site-packages), sweeps and studies start their runs in the working directory."""
    import json

    python = _fresh_venv(tmp_path / "venv")
    _pip(python, "install", str(wheel))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = _run([python, "-c", CHECK], elsewhere, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    package = Path(found["groupbert"]).parent
    assert package.parent.name == "site-packages" and str(tmp_path / "venv") in str(package)
    assert found["configs"] == str(package / "configs")
    assert found["tiny"] == str(package / "configs" / "groupbert" / "tiny_phase1.yaml") and found["seq_len"] == 128
    assert found["squad_data"] == ["wiki_qa_dev.json", "wiki_qa_source.json", "wiki_qa_train.json"]
    assert Path(found["build_dir"]).parent == tmp_path / "xdg" / "groupbert" / "custom_ops"
    assert found["run_cwd"] is None
    r = _run([tmp_path / "venv" / "bin" / "groupbert-pretrain", "--help"], elsewhere)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr
