"""Metric latency: from a metric line printed by a running script to the metric visible in MLflow.

The script prints `loss=<i>` every 0.5 s and notes when it printed each line; a poller reads the
metric history from MLflow every 20 ms while the run is still going. Target: under 2 s.
"""

import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _stack  # noqa: E402

STEPS = 12
SCRIPT = f"""
import json, os, time
stamps = {{}}
for i in range({STEPS}):
    stamps[i] = time.time()
    print(f"step={{i}} loss={{1.0 / (i + 1):.4f}}", flush=True)
    time.sleep(0.5)
json.dump(stamps, open(os.environ["EM_HP_STAMPS"], "w"))
"""


def main() -> None:
    _stack.start()
    from mlyard.core.specs import TrainingSpec
    from mlyard.flows.platform import Platform
    from mlyard.flows.training import train

    p = Platform()
    work = Path(tempfile.mkdtemp())
    (work / "src").mkdir()
    (work / "src" / "main.py").write_text(SCRIPT)
    stamps_file = work / "stamps.json"
    spec = TrainingSpec(name="latency", experiment="bench", source_uri=str(work / "src"), entry_point="main.py",
                        hyperparameters={"stamps": str(stamps_file)})
    done = threading.Event()
    thread = threading.Thread(target=lambda: (train(spec), done.set()))
    thread.start()
    seen: dict[int, float] = {}
    exp_id = None
    while not done.is_set():
        try:
            exp_id = exp_id or p.tracking.experiment_id("bench")
            runs = p.tracking.client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'", max_results=1)
            if runs:
                now = time.time()
                for m in p.tracking.metric_history(runs[0].info.run_id, "loss"):
                    seen.setdefault(m.step, now)
        except Exception:
            pass
        time.sleep(0.02)
    thread.join()
    stamps = {int(k): v for k, v in json.loads(stamps_file.read_text()).items()}
    latency = [seen[i] - stamps[i] for i in sorted(stamps) if i in seen]
    print(f"metrics seen while running: {len(latency)}/{STEPS}")
    print(f"latency median {statistics.median(latency):.3f} s, max {max(latency):.3f} s; "
          f"target < 2 s: {'OK' if max(latency) < 2 else 'MISSED'}")


if __name__ == "__main__":
    main()
