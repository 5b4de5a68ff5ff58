"""Atomic, pickle-free checkpoints.

A checkpoint is a directory ``<run>/checkpoints/step-N/`` holding

    model.safetensors      weights (tied weights stored once)
    optimizer.safetensors  optimizer tensors (moments, step counters): host optimizers (format "torch")
                           keyed "<param index>.<name>"; PopTorch optimizers (format "poptorch", the IPU
                           backends) also "ipu_state/<PopART name>" and "ipu_param/<PopART name>"
    rng.safetensors        torch CPU (and CUDA) generator states
    state.json             step, data position, optimizer hyperparameters and scalars, scheduler step,
                           Python RNG state, model config, vocab fingerprint, sha256 of every file above
                           and of its own content (``state_sha256``), so an edited step or position is
                           refused instead of resumed

It is written into a hidden temporary directory and renamed into place, and ``checkpoints/latest`` is
replaced atomically afterwards, so a crash never leaves a half-written checkpoint as the latest one.
Loading reads only safetensors and JSON (nothing is unpickled) and checks every file's sha256. The
pointers ``latest`` and ``best`` may only name a ``step-N`` beside them.

Optimizer state has two formats, recorded as ``state.json["optimizer"]["format"]`` (checkpoints without
the key are "torch"):

- ``torch``: a torch optimizer's ``state_dict()`` (CPU/CUDA): per-parameter tensors and scalars, the
  parameter groups;
- ``poptorch``: a ``poptorch.optim`` optimizer's ``state_dict()`` after the model ran on the IPU, as
  PopTorch 3.4 returns it (graphcore/poptorch:python/optim.py ``Optimizer.get_state_dict``;
  python/_poplar_executor.py ``_get_optim_state_dict`` reads the device state, poptorch.cpp
  ``readOptimizerState``): ``ipu_state`` (PopART's optimizer variables, ``Accl1___<weight>``,
  ``Accl2___<weight>``, ``Step___<weight>``), ``ipu_param`` (the variable hyper-parameter tensors), each
  ``None`` before the first compilation, plus torch's (empty) ``state`` and the parameter groups. It is
  loaded with ``optimizer.load_state_dict`` before ``poptorch.trainingModel``; PopTorch writes it to the
  device when the model attaches (``_on_device_attach``).

A checkpoint of one format is refused by an optimizer of the other (CheckpointError): PopTorch itself
refuses a torch state ("Only IPU optimizer states can be loaded onto the IPU."), a run resumes on the
backend it was saved on (``runtime.backend`` cannot change on ``--resume``), and the layouts do not map
one-to-one (LAMB without bias correction keeps no step counter on the IPU; the hyper-parameter tensors
have no host counterpart).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from groupbert.errors import BadInput

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
_OLD_DIR = re.compile(r"^\.step-(\d+)\.old-\d+$")


class CheckpointError(BadInput, ValueError):
    """A missing, corrupt or mismatched checkpoint (the CLIs exit with code 2)."""


@dataclass
class Checkpoint:
    path: Path
    state: dict                     # contents of state.json

    @property
    def step(self) -> int:
        return int(self.state["step"])


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------

def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None, state: dict, keep: int = 0) -> Path:
    """Write ``run_dir/checkpoints/step-<step>`` atomically, point ``latest`` at it, then delete all
    but the newest ``keep`` checkpoints (0 keeps all)."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f".step-{step}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_model(model, str(tmp / "model.safetensors"))
        opt_tensors, opt_meta = _flatten_optimizer(optimizer) if optimizer is not None else ({}, None)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(_rng_tensors(), str(tmp / "rng.safetensors"))
        meta = dict(state)
        meta.update(format_version=FORMAT_VERSION, step=step, optimizer=opt_meta,
                    python_rng=_python_rng_state())
        meta["sha256"] = {f: _sha256(tmp / f) for f in
                          ("model.safetensors", "optimizer.safetensors", "rng.safetensors")}
        meta["state_sha256"] = _state_digest(meta)
        _write_json(tmp / "state.json", meta)
        _fsync_dir(tmp)
        if final.exists():  # same step written again (e.g. final save right after a periodic one)
            old = ckpt_root / f".step-{step}.old-{os.getpid()}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
        _write_text_atomic(ckpt_root / "latest", final.name + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved checkpoint %s", final)
    if keep:
        best = _read_pointer(ckpt_root / "best")
        steps = sorted((int(m.group(1)), p) for p in ckpt_root.iterdir() if (m := _STEP_DIR.match(p.name)))
        for _, old in steps[:-keep]:
            if old != final and old.name != best:   # the best checkpoint is kept whatever its age
                shutil.rmtree(old, ignore_errors=True)
    return final


def update_state(run_dir: str | Path, step: int, **fields) -> None:
    """Change fields of ``step-<step>/state.json`` (with its digest), atomically: for what is learnt after
    the weights were saved (the final evaluation done, the best so far), without rewriting the weights."""
    path = Path(run_dir) / "checkpoints" / f"step-{step}" / "state.json"
    state = json.loads(path.read_text())
    state.update(fields)
    state["state_sha256"] = _state_digest(state)
    tmp = path.with_name(f".state.json.tmp-{os.getpid()}")
    _write_json(tmp, state)
    os.replace(tmp, path)


def mark_best(run_dir: str | Path, step: int) -> None:
    """Point ``checkpoints/best`` at ``step-<step>`` (atomically): the best evaluation so far."""
    _write_text_atomic(Path(run_dir) / "checkpoints" / "best", f"step-{step}\n")


def _read_pointer(path: Path) -> str | None:
    """The ``step-N`` a pointer file (``latest``, ``best``) names; anything else (a path that leaves the
    checkpoints directory, an edited or truncated file) is refused rather than followed."""
    try:
        name = path.read_text().strip()
    except OSError:
        return None
    if not name:
        return None
    if not _STEP_DIR.match(name):
        raise CheckpointError(f"{path} names {name!r}, which is not a step-N checkpoint of this run "
                              f"(a pointer never leaves {path.parent})")
    return name


def clean_interrupted_writes(run_dir: str | Path) -> list[str]:
    """Remove what interrupted saves left in ``checkpoints/`` (``.step-N.tmp-PID`` directories, pointer
    temporaries) and put back a ``step-N`` that a same-step rewrite had moved aside (``.step-N.old-PID``)
    when its replacement never arrived. Call only while holding the run directory's lock: then no other
    process is writing, so every hidden entry is a leftover. Returns what was removed or restored."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = []
    for p in sorted(root.iterdir()):
        old = _OLD_DIR.match(p.name)
        if old and not (root / f"step-{old.group(1)}").exists():
            p.rename(root / f"step-{old.group(1)}")
            done.append(f"restored step-{old.group(1)}")
    for p in sorted(root.iterdir()):
        if _STEP_DIR.match(p.name) and p.is_dir():
            for t in p.glob(".state.json.tmp-*"):  # an interrupted update_state: state.json is intact
                t.unlink()
                done.append(f"removed {p.name}/{t.name}")
        elif p.name.startswith("."):
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            done.append(f"removed {p.name} ({size / 1e6:.1f} MB)")
    return done


_IPU_PARTS = ("ipu_state", "ipu_param")  # PopTorch's entries of a poptorch.optim state_dict()


def optimizer_format(state_dict: dict) -> str:
    """"poptorch" for the layout of a ``poptorch.optim`` optimizer (it has ``ipu_state``/``ipu_param``,
    even when they are still None), else "torch"."""
    return "poptorch" if any(k in state_dict for k in _IPU_PARTS) else "torch"


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Tensors for ``optimizer.safetensors`` and the JSON part. A PopTorch optimizer's ``state_dict()``
    reads the device state (PopTorch's documented way after ``copyWeightsToHost``)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, pstate in sd["state"].items():
        for name, value in pstate.items():
            key = f"{idx}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().cpu().contiguous()
            else:
                scalars[key] = value
    meta = {"format": optimizer_format(sd), "param_groups": sd["param_groups"], "scalars": scalars,
            "class": _qualname(optimizer)}
    if meta["format"] == "poptorch":  # state.json records how many tensors each part has (None: not yet read)
        for part in _IPU_PARTS:
            entries = sd.get(part)
            meta[part] = None if entries is None else len(entries)
            for name, value in (entries or {}).items():
                tensors[f"{part}/{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, meta


def _qualname(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _rng_tensors() -> dict:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    return out


def _python_rng_state() -> list:
    import random
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


# --------------------------------------------------------------------------------------------------
# Finding and loading
# --------------------------------------------------------------------------------------------------

def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a run directory (its latest checkpoint), its ``checkpoints/`` directory, one ``step-N``
    directory, or ``checkpoints/best`` (the pointer to the best evaluated one)."""
    path = Path(path)
    if path.name in ("best", "latest") and path.is_file():
        target = path.parent / (_read_pointer(path) or "")
        if target == path.parent or not target.is_dir():
            raise CheckpointError(f"{path} points at {target.name}, which does not exist")
        return target
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if (path / "state.json").exists() or _STEP_DIR.match(path.name):
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    latest = root / "latest"
    if latest.exists():
        target = root / (_read_pointer(latest) or "")
        if target == root or not target.is_dir():
            raise CheckpointError(f"{latest} points at {target.name}, which does not exist")
        return target
    steps = sorted((int(m.group(1)), p) for p in root.glob("step-*") if (m := _STEP_DIR.match(p.name)))
    if not steps:
        raise CheckpointError(f"no checkpoint found in {path} (expected checkpoints/step-N/)")
    return steps[-1][1]


def has_checkpoint(run_dir: str | Path) -> bool:
    root = Path(run_dir) / "checkpoints"
    return root.is_dir() and any(_STEP_DIR.match(p.name) for p in root.iterdir())


def read_checkpoint(path: str | Path, verify: bool = True) -> Checkpoint:
    """Read and verify a checkpoint's metadata (state.json and file checksums)."""
    path = resolve_checkpoint(path)
    state_file = path / "state.json"
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{state_file} is missing: incomplete checkpoint") from None
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{state_file} is unreadable or corrupt: {e}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{state_file}: unsupported checkpoint format "
                              f"{state.get('format_version') if isinstance(state, dict) else state!r}")
    if "state_sha256" in state and _state_digest(state) != state["state_sha256"]:
        raise CheckpointError(f"{state_file} was changed after it was written (sha256 mismatch): a checkpoint is "
                              f"resumed as saved, never with edited state")
    name = _STEP_DIR.match(path.name)
    if name and int(name.group(1)) != state.get("step"):
        raise CheckpointError(f"{state_file} says step {state.get('step')!r} but the directory is {path.name}")
    if verify:
        for name, digest in state.get("sha256", {}).items():
            f = path / name
            if not f.exists():
                raise CheckpointError(f"{f} is missing")
            if _sha256(f) != digest:
                raise CheckpointError(f"{f} is corrupt (sha256 mismatch with state.json)")
    return Checkpoint(path, state)


def load_model_weights(model: torch.nn.Module, ckpt: Checkpoint) -> None:
    """Load weights with a strict key and shape check; a mismatch names the differing keys."""
    f = ckpt.path / "model.safetensors"
    try:
        missing, unexpected = load_model(model, str(f), strict=False)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise CheckpointError(f"cannot load {f} into {type(model).__name__}: {_first_line(e)}") from None
    if missing or unexpected:
        raise CheckpointError(f"{f} does not match {type(model).__name__}: missing {sorted(missing)[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, unexpected {sorted(unexpected)[:5]}"
                              f"{'...' if len(unexpected) > 5 else ''}")


def load_optimizer_state(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    """Load the checkpoint's optimizer state into ``optimizer`` (a PopTorch optimizer: before
    ``trainingModel``, or followed by ``setOptimizer``, so that PopTorch writes it to the device)."""
    meta = ckpt.state.get("optimizer")
    if meta is None:
        raise CheckpointError(f"{ckpt.path} holds no optimizer state")
    current_sd = optimizer.state_dict()
    saved_format, run_format = meta.get("format", "torch"), optimizer_format(current_sd)
    if saved_format != run_format:
        kinds = {"torch": "a host optimizer's (CPU/CUDA backends)",
                 "poptorch": "a PopTorch optimizer's (IPU backends: ipu_state/ipu_param)"}
        raise CheckpointError(f"{ckpt.path} holds {kinds.get(saved_format, repr(saved_format))} optimizer state "
                              f"({meta['class']}), but the run's optimizer ({_qualname(optimizer)}) takes "
                              f"{kinds[run_format]}: resume a run on the backend it was saved on")
    if saved_format == "poptorch":  # real PopTorch and the emulator keep the same layout
        same = meta["class"].rsplit(".", 1)[-1] == type(optimizer).__name__
    else:
        same = meta["class"] == _qualname(optimizer)
    if not same:
        raise CheckpointError(f"{ckpt.path} holds {meta['class']} state, but the run uses "
                              f"{_qualname(optimizer)} (optimizer or backend changed?)")
    tensors = load_file(str(ckpt.path / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    ipu: dict[str, Any] = {part: None if meta.get(part) is None else {} for part in _IPU_PARTS}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        part, sep, name = key.partition("/")
        if sep and part in _IPU_PARTS:
            if ipu[part] is None:
                raise CheckpointError(f"{ckpt.path}: optimizer.safetensors holds {key} but state.json says "
                                      f"{part} was empty")
            ipu[part][name] = value
            continue
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for part in _IPU_PARTS:
        if saved_format == "poptorch" and meta.get(part) is not None and len(ipu[part]) != meta[part]:
            raise CheckpointError(f"{ckpt.path}: {part} has {len(ipu[part])} tensors, state.json says {meta[part]}")
    groups = meta["param_groups"]
    current = current_sd["param_groups"]
    for saved, now in zip(groups, current):  # JSON turned tuples (betas) into lists
        for k, v in saved.items():
            if isinstance(now.get(k), tuple) and isinstance(v, list):
                saved[k] = tuple(v)
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in current]:
        raise CheckpointError(f"{ckpt.path}: optimizer parameter groups do not match the model "
                              f"({[len(g['params']) for g in groups]} vs {[len(g['params']) for g in current]})")
    sd = {"state": state, "param_groups": groups}
    if saved_format == "poptorch":
        sd.update(ipu)
    try:
        optimizer.load_state_dict(sd)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt.path}: optimizer state does not fit: {_first_line(e)}") from None


def restore_rng(ckpt: Checkpoint) -> None:
    import random
    tensors = load_file(str(ckpt.path / "rng.safetensors"))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = ckpt.state["python_rng"]
    random.setstate((version, tuple(internal), gauss))


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _state_digest(state: dict) -> str:
    """sha256 of state.json's content without its own digest (canonical JSON: sorted keys)."""
    body = json.loads(json.dumps({k: v for k, v in state.items() if k != "state_sha256"}))  # as read back
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
