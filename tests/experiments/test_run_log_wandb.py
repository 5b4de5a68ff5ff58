"""What the run log hands W&B: every record by step, and the best eval values in the summary
(lowest loss, highest F1/accuracy), next to W&B's own final values. A stand-in run object records the
calls, so no W&B process starts."""
from groupbert.config import RunConfig
from groupbert.training.run_log import RunLog


class FakeRun:
    def __init__(self):
        self.logged, self.summary = [], {}

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self, exit_code=0):
        self.finished = exit_code


def test_summary_keeps_best_eval_values(tmp_path, monkeypatch):
    fake = FakeRun()
    monkeypatch.setattr(RunLog, "_init_wandb", staticmethod(lambda *a: fake))
    monkeypatch.setenv("WANDB_MODE", "offline")
    log = RunLog(tmp_path, RunConfig(), "r1")
    log.log({"step": 1, "kind": "train", "loss": 5.0, "samples_per_s": 10.0})
    log.log({"step": 2, "kind": "eval", "eval_loss": 4.0, "eval_f1": 30.0, "eval_seconds": 1.0})
    log.log({"step": 3, "kind": "eval", "eval_loss": 4.5, "eval_f1": 40.0, "eval_seconds": 2.0})
    log.close()
    assert fake.logged[0] == (1, {"loss": 5.0, "samples_per_s": 10.0})
    assert fake.summary == {"best_eval_loss": 4.0, "best_eval_f1": 40.0}
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 3
