"""Warm starts of the local pool (issue 25), warm beside cold in one run, on a throwaway embedded stack
with default settings (the worker polls every 0.5 s).

1. The Run button: a flow run of `train/train-local` (a no-op training: the script prints one line) created
   through Prefect's API, as the UI's Run does, to COMPLETED, from Prefect's own timestamps (created ->
   the COMPLETED state). And the worker's pick-up (PENDING) -> RUNNING, which the engine sets as the
   flow function starts: its first line. Targets: <= 1.5 s and <= 1 s.
2. 40 no-op trials as their own flow runs (a tuning with `trial_deployment: train/train-local`,
   parallel_trials 4, warm and cold; then 1, warm): per trial, Optuna's start -> complete minus the
   bare script's own time in a fresh process. Target <= 1 s.

Cold is the same pool with Prefect's own command (`python -m prefect.engine` in a fresh process, what
MLYARD_WARM_STARTS=false gives); runs alternate warm, cold, warm, cold.

Run: `python bench/warm_starts.py [--rounds 6] [--skip-trials]` (about 8 minutes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _stack  # noqa: E402

TRIALS = 40


def set_pool(warm: bool) -> None:
    from mlyard.core.settings import Settings
    from mlyard.prefect_setup import ensure_pools

    ensure_pools(lambda _: None, Settings(warm_starts=warm))


def run_button(src: Path) -> tuple[float, float]:
    """(created -> COMPLETED, pick-up -> RUNNING) of one no-op training, in seconds."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    spec = {"name": "noop", "experiment": "bench", "source_uri": str(src), "entry_point": "main.py"}
    fr = run_deployment("train/train-local", parameters={"spec": spec}, timeout=300, poll_interval=0.1)
    assert fr.state.is_completed(), fr.state
    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(fr.id)
    at: dict = {}
    for s in sorted(states, key=lambda s: s.timestamp):
        at.setdefault(s.type.value, s.timestamp)  # the first of each type
    return (at["COMPLETED"] - fr.created).total_seconds(), (at["RUNNING"] - at["PENDING"]).total_seconds()


def bare_script(src: Path) -> float:
    """The no-op script alone in a fresh process, median of 5: what a trial costs without mlyard."""
    import subprocess

    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(src / "main.py"), "--x", "0.5"], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def trials(settings, src: Path, name: str, parallel: int) -> list[float]:
    """Per trial: Optuna's start -> complete (the trial's flow run made, run by the worker, its metric
    read back) minus the bare script's time."""
    import optuna

    from mlyard.core.specs import TuningSpec, load_spec
    from mlyard.flows.tuning import tune

    spec = load_spec(TuningSpec, {
        "name": name, "strategy": "random", "seed": 0, "max_trials": TRIALS, "parallel_trials": parallel,
        "trial_deployment": "train/train-local",
        "training": {"name": "t", "experiment": "bench", "source_uri": str(src), "entry_point": "main.py",
                     "collect_logs": False},
        "parameters": [{"name": "x", "type": "double", "min": 0, "max": 1}],
        "objective": {"metric": "score", "direction": "maximize"}})
    result = tune(spec)
    study = optuna.load_study(study_name=f"mlyard-tuning-{result.tuning_id}", storage=settings.catalog_db_url)
    script = bare_script(src)
    done = [t for t in study.get_trials() if t.datetime_complete]
    return [(t.datetime_complete - t.datetime_start).total_seconds() - script for t in done]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--skip-trials", action="store_true")
    args = parser.parse_args()
    settings = _stack.start()
    src = Path(tempfile.mkdtemp()) / "noop"
    src.mkdir()
    (src / "main.py").write_text("import sys\nargs = dict(zip(sys.argv[1::2], sys.argv[2::2]))\n"
                                 "print(f\"score={args.get('--x', 0)}\")\n")
    for warm in (True, False):  # one of each first: MLflow's and the catalog's first writes
        set_pool(warm)
        run_button(src)
    figures: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.rounds):
        for warm in (True, False):
            set_pool(warm)
            figures[warm].append(run_button(src))
    for warm in (True, False):
        total = [f[0] for f in figures[warm]]
        pickup = [f[1] for f in figures[warm]]
        print(f"{'warm' if warm else 'cold'}: Run button -> COMPLETED median {statistics.median(total):.2f} s "
              f"(min {min(total):.2f}, max {max(total):.2f}); pick-up -> first line median "
              f"{statistics.median(pickup):.2f} s (min {min(pickup):.2f}, max {max(pickup):.2f})")
    warm_total = statistics.median(f[0] for f in figures[True])
    warm_pickup = statistics.median(f[1] for f in figures[True])
    cold_total = statistics.median(f[0] for f in figures[False])
    print(f"Run button: warm/cold {warm_total / cold_total:.2f}; target <= 1.5 s: "
          f"{'OK' if warm_total <= 1.5 else 'MISSED'}; pick-up -> first line target <= 1 s: "
          f"{'OK' if warm_pickup <= 1.0 else 'MISSED'}")
    if args.skip_trials:
        return
    over = {}
    for warm, parallel in ((True, 4), (False, 4), (True, 1)):
        set_pool(warm)
        t0 = time.perf_counter()
        over[warm, parallel] = trials(settings, src, f"trials-{'warm' if warm else 'cold'}-p{parallel}", parallel)
        wall = time.perf_counter() - t0
        print(f"{'warm' if warm else 'cold'}: {len(over[warm, parallel])} no-op trials as flow runs (parallel "
              f"{parallel}) in {wall:.1f} s ({wall / TRIALS:.2f} s a trial); per-trial overhead median "
              f"{statistics.median(over[warm, parallel]):.2f} s, max {max(over[warm, parallel]):.2f} s")
    med = statistics.median(over[True, 4])
    print(f"per-trial overhead, parallel 4, warm/cold {med / statistics.median(over[False, 4]):.2f}; target <= 1 s: "
          f"{'OK' if med <= 1.0 else 'MISSED'} (parallel 1: {statistics.median(over[True, 1]):.2f} s)")


if __name__ == "__main__":
    main()
