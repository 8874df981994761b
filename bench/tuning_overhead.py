"""Tuning on the embedded stack: orchestration overhead per trial, and what parallel trials buy.

1. 40 short (no-op) trials with parallel_trials = 4: per trial, its wall time (Optuna ask -> tell)
   minus the script's own time. Target: <= 0.5 s per trial.
2. 40 trials that each sleep 2 s, parallel_trials = 4 vs 1 (sleeping trials measure orchestration,
   not the 2 CPU cores). Target: parallel 4 at least 3.5x faster.
Katib, for reference, starts a pod per trial (seconds to tens of seconds each).
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _stack  # noqa: E402

TRIALS = 40


def spec(src: Path, name: str, parallel: int, sleep: float):
    from mlyard.core.specs import TuningSpec, load_spec

    return load_spec(TuningSpec, {
        "name": name, "strategy": "random", "seed": 0, "max_trials": TRIALS, "parallel_trials": parallel,
        "training": {"name": "t", "experiment": "bench", "source_uri": str(src), "entry_point": "main.py",
                     "hyperparameters": {"sleep": sleep}, "collect_logs": False},
        "parameters": [{"name": "x", "type": "double", "min": 0, "max": 1}],
        "objective": {"metric": "score", "direction": "maximize"}})


def main() -> None:
    settings = _stack.start()
    import optuna

    from mlyard.flows.tuning import tune

    src = Path(tempfile.mkdtemp()) / "algo"
    src.mkdir()
    (src / "main.py").write_text("import sys, time\nargs = dict(zip(sys.argv[1::2], sys.argv[2::2]))\n"
                                 "time.sleep(float(args['--sleep']))\nprint(f\"score={args['--x']}\")\n")
    tune(spec(src, "warmup", 2, 0.0).model_copy(update={"max_trials": 2}))

    t0 = time.perf_counter()
    r = tune(spec(src, "noop", 4, 0.0))
    noop_wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=f"mlyard-tuning-{r.tuning_id}", storage=settings.catalog_db_url)
    over = [(t.datetime_complete - t.datetime_start).total_seconds() - t.user_attrs["script_seconds"]
            for t in study.get_trials() if "script_seconds" in t.user_attrs]
    script = statistics.median(t.user_attrs["script_seconds"] for t in study.get_trials())
    print(f"{len(over)} no-op trials, parallel 4: wall {noop_wall:.1f} s; script itself median {script:.3f} s")
    print(f"overhead per trial (ask->tell minus script): median {statistics.median(over):.3f} s, "
          f"mean {statistics.mean(over):.3f} s, max {max(over):.3f} s; target <= 0.5 s: "
          f"{'OK' if statistics.median(over) <= 0.5 else 'MISSED'}")
    print(f"whole tuning wall per trial slot: {noop_wall * 4 / TRIALS:.3f} s")

    walls = {}
    for parallel in (4, 1):
        t0 = time.perf_counter()
        tune(spec(src, f"sleep-p{parallel}", parallel, 2.0))
        walls[parallel] = time.perf_counter() - t0
        print(f"{TRIALS} trials sleeping 2 s, parallel {parallel}: {walls[parallel]:.1f} s")
    ratio = walls[1] / walls[4]
    print(f"speed-up parallel 4 vs 1: {ratio:.2f}x; target >= 3.5x: {'OK' if ratio >= 3.5 else 'MISSED'}")


if __name__ == "__main__":
    main()
