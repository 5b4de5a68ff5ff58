"""What a person reads from a run: progress lines with an ETA when the bar is off, log lines routed around
the bar when it is on, the end-of-run summary (checkpoints, export command), W&B's backend tag (the backend
that ran, not ``auto``), checkpoints as W&B artifacts, and TensorBoard getting W&B's scalars.

One tiny run (module scope) serves most tests. W&B and TensorBoard are stand-ins installed in
``sys.modules`` (``wandb``; ``tensorboard`` + ``torch.utils.tensorboard``) that record the calls, so no W&B
process starts and the tensorboard package is not needed; ``test_tensorboard_event_file`` writes a real
event file where tensorboard is installed."""
import json
import logging
import sys
import types
from importlib.machinery import ModuleSpec

import pytest

from groupbert.config import ConfigError, load_config
from groupbert.tasks.pretraining import pretrain
from groupbert.training import hardware

RUN = ["train.max_steps=4", "train.eval_every=2", "train.checkpoint_every=2", "train.eval_at_start=false",
       "logging.progress_bar=false", "logging.progress_every_s=0", "logging.wandb.mode=offline",
       "logging.wandb.log_checkpoints=true", "logging.tensorboard=true"]


class FakeWandbRun:
    def __init__(self, **kwargs):
        self.init = kwargs
        self.logged, self.summary, self.artifacts, self.finished = [], {}, [], None

    def log(self, data, step):
        self.logged.append((step, data))

    def log_artifact(self, artifact, aliases=()):
        self.artifacts.append((artifact, list(aliases)))

    def finish(self, exit_code=0):
        self.finished = exit_code


class FakeArtifact:
    def __init__(self, name, type, metadata=None):
        self.name, self.type, self.metadata, self.dirs = name, type, metadata, []

    def add_dir(self, path):
        self.dirs.append(path)


class FakeSummaryWriter:
    writers = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeSummaryWriter.writers.append(self)

    def add_scalar(self, tag, value, global_step=None):
        self.scalars.append((tag, value, global_step))

    def close(self):
        self.closed = True


def fake_modules(runs: list) -> dict:
    wandb = types.ModuleType("wandb")
    wandb.Artifact = FakeArtifact

    def init(**kwargs):
        runs.append(FakeWandbRun(**kwargs))
        return runs[-1]
    wandb.init = init
    tensorboard = types.ModuleType("tensorboard")
    tensorboard.__spec__ = ModuleSpec("tensorboard", None)   # importlib.util.find_spec finds it
    writer = types.ModuleType("torch.utils.tensorboard")
    writer.SummaryWriter = FakeSummaryWriter
    return {"wandb": wandb, "tensorboard": tensorboard, "torch.utils.tensorboard": writer}


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append((record.name, record.levelno, record.getMessage()))


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_config_at):
    """The tiny run of RUN (4 steps, evaluation and checkpoint every 2) with the stand-ins; its directory,
    the captured log lines, the W&B run and the TensorBoard writer."""
    tmp = tmp_path_factory.mktemp("logging")
    runs, capture = [], Capture()
    FakeSummaryWriter.writers.clear()
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(capture)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("WANDB_MODE", "offline")
            for name, module in fake_modules(runs).items():
                mp.setitem(sys.modules, name, module)
            pretrain(tiny_config_at(tmp, *RUN), tmp / "run")
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
    assert len(runs) == 1 and len(FakeSummaryWriter.writers) == 1
    return tmp / "run", capture.lines, runs[0], FakeSummaryWriter.writers[0]


def _messages(lines, logger="groupbert.training.progress"):
    return [m for name, _, m in lines if name == logger]


def test_progress_lines_with_eta_when_the_bar_is_off(run):
    _, lines, _, _ = run
    progress = [m for m in _messages(lines) if m.startswith("step ")]
    assert [m.split(" (")[0] for m in progress] == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
    assert progress[1].startswith("step 2/4 (50%), ")
    for m in progress:
        assert "seq/s" in m and "tokens/s" in m and "ETA " in m, m
        assert "MFU " in m or not hardware.cpu_features().mhz, m   # MFU where the CPU's peak is known
    assert progress[-1].endswith("ETA 0 s")


def test_progress_every_s_spaces_the_lines(monkeypatch, tiny_config, caplog):
    """Lines come every progress_every_s seconds of wall time (and at the last step), none with the bar on."""
    from groupbert.training import progress as progress_mod

    clock = iter([0.0, 10.0, 31.0, 40.0, 70.0, 71.0])
    monkeypatch.setattr(progress_mod, "_clock", lambda: next(clock))
    caplog.set_level(logging.INFO, logger="groupbert.training.progress")
    p = progress_mod.Progress(tiny_config("logging.progress_every_s=30"), "t", 5, 0, enabled=True)
    for _ in range(5):   # at 10 s, 31 s (a line), 40 s, 70 s (a line), 71 s (the last step: a line)
        p.update(1, 8, 512)
    p.close()
    steps = [r.getMessage().split(" (")[0] for r in caplog.records]
    assert steps == ["step 2/5", "step 4/5", "step 5/5"]
    assert "0.5 seq/s, 33 tokens/s" in caplog.records[0].getMessage()   # 16 samples over 31 s
    assert "ETA 46 s" in caplog.records[0].getMessage()        # 15.5 s a step, 3 steps left
    caplog.clear()
    monkeypatch.undo()
    for cfg, enabled in ((tiny_config("logging.progress_bar=true"), True),     # the bar shows it
                         (tiny_config("logging.progress_every_s=0"), False)):  # not rank 0
        p = progress_mod.Progress(cfg, "t", 5, 0, enabled=enabled)
        p.update(5, 40, 2560)
        p.close()
    assert caplog.records == []


def test_log_lines_go_through_tqdm_while_the_bar_is_open(tiny_config):
    """With the bar on, console handlers are swapped for tqdm.write while it is open, and restored after."""
    from groupbert.training.progress import Progress

    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr)
    root.addHandler(console)
    try:
        p = Progress(tiny_config("logging.progress_bar=true"), "t", 3, 0, enabled=True)
        assert console not in root.handlers
        assert any(type(h).__name__ == "_TqdmLoggingHandler" for h in root.handlers)
        p.close()
        p.close()   # idempotent: the engine also closes it on the way out of a failed run
        assert console in root.handlers
        assert not any(type(h).__name__ == "_TqdmLoggingHandler" for h in root.handlers)
    finally:
        root.removeHandler(console)


def test_end_summary_names_checkpoints_and_the_export_command(run):
    run_dir, lines, _, _ = run
    summary = [m for m in _messages(lines) if not m.startswith("step ")]
    text = "\n".join(summary)
    assert summary[0].startswith(f"run finished: {run_dir}, step 4 of 4; ")
    assert "  final evaluation (step 4): eval_loss " in text and "; MLM loss " in text
    best = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["best"]
    assert f"  best evaluation: eval_loss {best['value']:.5g} at step {best['step']}" in summary
    ckpts = run_dir / "checkpoints"
    assert f"  checkpoints: latest {ckpts / 'step-4'}, best {ckpts / ('step-%d' % best['step'])}" in summary
    assert f"  export: python -m groupbert.export {run_dir} --output {run_dir / 'hf'}" in summary


def test_wandb_backend_tag_is_the_backend_that_ran(run):
    run_dir, _, wandb_run, _ = run
    tags = wandb_run.init["tags"]
    assert "backend:cpu" in tags and "backend:auto" not in tags   # runtime.backend: auto on a CPU machine
    assert wandb_run.init["config"]["runtime"]["backend"] == "auto"   # the config says what was asked
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert (first["kind"], first["backend"], first["device"]) == ("run", "cpu", "cpu")   # the run record too


def test_wandb_gets_throughput_and_mfu(run):
    """W&B gets the train records' throughput keys and the run record's FLOPs and peak (RunLog.log)."""
    run_dir, _, wandb_run, _ = run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in records if r["kind"] == "train"}
    logged = [(step, data) for step, data in wandb_run.logged if "seq_per_s" in data]
    assert [step for step, _ in logged] == sorted(train)
    peak_known = records[0]["peak_tflops"] is not None   # the CPU table needs /proc/cpuinfo (Linux)
    for step, data in logged:
        for key in ("seq_per_s", "tokens_per_s", "tflops", "mfu"):
            assert data[key] == train[step][key], key
        assert data["tflops"] > 0 and (data["mfu"] > 0 if peak_known else data["mfu"] is None)
    first = wandb_run.logged[0][1]
    assert first["flops_per_token"] == records[0]["flops_per_token"] > 0
    assert first["peak_source"] and first["precision"] == "fp32"


def test_checkpoints_logged_as_wandb_artifacts(run):
    run_dir, _, wandb_run, _ = run
    best = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["best"]["step"]
    logged = {(a.type, a.dirs[0], tuple(aliases)) for a, aliases in wandb_run.artifacts}
    ckpts = run_dir / "checkpoints"
    expected = {("model", str(ckpts / "step-4"), ("latest", "step-4"))}
    if best != 4:
        expected.add(("model", str(ckpts / f"step-{best}"), ("best", f"step-{best}")))
    else:
        expected = {("model", str(ckpts / "step-4"), ("best", "latest", "step-4"))}
    assert logged == expected
    assert all(a.name == "run-model" for a, _ in wandb_run.artifacts)
    assert wandb_run.finished == 0


def test_tensorboard_gets_the_wandb_scalars(run):
    run_dir, _, wandb_run, writer = run
    assert writer.log_dir == str(run_dir / "tensorboard") and writer.closed
    numeric = {(k, step) for step, data in wandb_run.logged for k, v in data.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
    assert {(tag, step) for tag, _, step in writer.scalars} == numeric
    assert {"loss", "lr", "seq_per_s", "eval_loss"} <= {tag for tag, _, _ in writer.scalars}


def test_tensorboard_missing_is_a_config_error_at_start(monkeypatch, tmp_path, capsys, tiny_overrides):
    """Without the tensorboard package, logging.tensorboard=true exits 2 naming the key, before any work."""
    import run_pretraining

    monkeypatch.setitem(sys.modules, "tensorboard", None)   # find_spec: not installed
    argv = [a for s in [*tiny_overrides, f"data.cache_dir={tmp_path / 'cache'}", "logging.tensorboard=true"]
            for a in ("--set", s)]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("{}\n")   # every setting from --set
    code = run_pretraining.main(["--config", str(recipe), *argv, "--output-dir", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "logging.tensorboard" in err and "pip install tensorboard" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_new_logging_keys_are_validated():
    cfg = load_config(None, [])
    assert (cfg.logging.progress_every_s, cfg.logging.tensorboard, cfg.logging.wandb.log_checkpoints) == \
        (30.0, False, False)
    for bad, key in (("logging.progress_every_s=-1", "logging.progress_every_s"),
                     ("logging.progress_every_s=soon", "logging.progress_every_s"),
                     ("logging.tensorboard=1", "logging.tensorboard"),
                     ("logging.wandb.log_checkpoints=yes please", "logging.wandb.log_checkpoints"),
                     ("logging.progress_every=5", "logging.progress_every")):
        with pytest.raises(ConfigError) as e:
            load_config(None, [bad])
        assert e.value.key == key, bad


def test_tensorboard_event_file(tmp_path, tiny_config):
    """With the real tensorboard package: an event file under <run>/tensorboard holding the run's scalars."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    pretrain(tiny_config("train.max_steps=2", "logging.tensorboard=true"), run)
    files = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    numeric = {k for r in records if r["kind"] != "end" for k, v in r.items()
               if k not in ("step", "kind", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert set(acc.Tags()["scalars"]) == numeric
    assert [e.step for e in acc.Scalars("loss")] == [1, 2]
