"""Writing a run's final evaluation next to its records."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


def write_eval_results(run_dir, record: Optional[dict]) -> dict:
    """``eval_results.json``: the final evaluation record (``{}`` when the task had nothing to evaluate)."""
    result = {k: v for k, v in (record or {}).items() if k != "kind"}
    Path(run_dir, "eval_results.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
