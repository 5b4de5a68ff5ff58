"""A stand-in training program for the sweep tests: takes ``--output-dir DIR`` and ``--name=value``
parameters, writes ``DIR/metrics.jsonl`` like our runs do (one eval record per step with
``score = x + 1/(step+1)``, an end record last), and can fail, diverge or run slowly on request."""
import json
import sys
import time
from pathlib import Path

args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
out = Path(sys.argv[sys.argv.index("--output-dir") + 1])
out.mkdir(parents=True, exist_ok=True)
x = float(args.get("x", 0))
mode = args.get("mode", "ok")
steps, pause = int(args.get("steps", 4)), float(args.get("pause", 0.0))
if mode == "fail":
    print("error: key 'data.corpus': no such corpus (fake)", file=sys.stderr)
    sys.exit(2)
with open(out / "metrics.jsonl", "a") as f:
    for step in range(1, steps + 1):
        time.sleep(pause)
        if mode == "diverge" and step == 2:
            message = f"loss became nan at step {step}; lower optimizer.lr"
            f.write(json.dumps({"step": step, "kind": "end", "status": "diverged", "error": message}) + "\n")
            print(f"Diverged: {message}", file=sys.stderr)
            sys.exit(1)
        f.write(json.dumps({"step": step, "kind": "eval", "score": x + 1.0 / (step + 1)}) + "\n")
        f.flush()
    f.write(json.dumps({"step": steps, "kind": "end", "status": "finished"}) + "\n")
