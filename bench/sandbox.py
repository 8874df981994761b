"""What a training's sandbox costs a user (issue 67's figure): a no-op training, submitted to the embedded
stack's local pool as a deployment run and waited for until COMPLETED, with its script in its sandbox
(the default) against without (MLYARD_SANDBOX=off in the flow run's environment, the same warm worker),
alternating, one run each way per round. Target: the sandbox adds at most 0.3 s. Also times the sandbox
alone: a no-op Python started bare against started through bubblewrap.

Prints the figures; run with `python bench/sandbox.py` (never part of the tests).
"""

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _stack  # noqa: E402

ROUNDS = 9


def main() -> None:
    _stack.start()
    from prefect.deployments import run_deployment

    from mlyard.core.specs import TrainingSpec
    from mlyard.tasks import sandbox

    src = Path(tempfile.mkdtemp()) / "noop"
    src.mkdir()
    (src / "main.py").write_text("pass\n")
    spec = TrainingSpec(name="noop", experiment="bench", source_uri=str(src), entry_point="main.py")
    params = {"spec": spec.model_dump(mode="json")}

    def one(env: dict[str, str]) -> float:
        t0 = time.perf_counter()
        run = run_deployment("train/train-local", parameters=params, job_variables={"env": env}, timeout=300,
                             poll_interval=0.05)  # its default, 5 s, would hide what is measured
        took = time.perf_counter() - t0
        assert run.state is not None and run.state.is_completed(), run.state
        return took

    one({}), one({"MLYARD_SANDBOX": "off"})  # warm up: the worker's warm runner, the experiment
    walled, bare = [], []
    for _ in range(ROUNDS):
        walled.append(one({}))
        bare.append(one({"MLYARD_SANDBOX": "off"}))
    med = statistics.median
    print(f"no-op training, submit to COMPLETED, in its sandbox   median {med(walled):.3f} s  "
          f"(min {min(walled):.3f}, max {max(walled):.3f})")
    print(f"no-op training, submit to COMPLETED, no sandbox       median {med(bare):.3f} s  "
          f"(min {min(bare):.3f}, max {max(bare):.3f})")
    added = med(walled) - med(bare)
    print(f"the sandbox adds {added:+.3f} s ({med(walled) / med(bare):.3f}x); target <= +0.3 s: "
          f"{'OK' if added <= 0.3 else 'MISSED'}")

    # the sandbox alone: a no-op interpreter, bare and through bubblewrap with a training's walls
    python = [sys.executable, "-I", "-S", "-c", "pass"]
    walls = sandbox.Walls(read=tuple(sandbox.interpreter_folders(sys.executable)), tmp=tempfile.mkdtemp())
    started = {"bare": [], "bubblewrap": []}
    for _ in range(20):
        for name, argv in (("bare", python), ("bubblewrap", sandbox.wrap(python, walls))):
            t0 = time.perf_counter()
            subprocess.run(argv, check=True)
            started[name].append(time.perf_counter() - t0)
    print(f"python -c pass: bare median {med(started['bare']) * 1000:.1f} ms, in a sandbox "
          f"{med(started['bubblewrap']) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
