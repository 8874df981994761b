"""Orchestration overhead of a training on the embedded stack.

overhead = wall time of a no-op training through the `train` flow - wall time of the same no-op
script run bare (same interpreter, same environment). Reference: a trivial Prefect flow run.
Target: overhead <= 1.5 s. Prints the figures; run with `make bench` (never part of the tests).
"""

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _stack  # noqa: E402

REPEATS = 7


def main() -> None:
    _stack.start()
    from prefect import flow

    from mlyard.core.specs import TrainingSpec
    from mlyard.flows.training import train

    src = Path(tempfile.mkdtemp()) / "noop"
    src.mkdir()
    (src / "main.py").write_text("pass\n")
    spec = TrainingSpec(name="noop", experiment="bench", source_uri=str(src), entry_point="main.py")

    @flow(name="trivial")
    def trivial():
        return 1

    trivial(), train(spec)  # warm up: imports, DB migrations, experiment creation
    bare, trained, empty = [], [], []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-u", str(src / "main.py")], check=True)
        bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        train(spec)
        trained.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        trivial()
        empty.append(time.perf_counter() - t0)
    med = statistics.median
    overhead = [t - b for t, b in zip(trained, bare)]
    print(f"no-op script, bare           median {med(bare):.3f} s")
    print(f"no-op training through flow  median {med(trained):.3f} s")
    print(f"trivial Prefect flow run     median {med(empty):.3f} s")
    print(f"orchestration overhead       median {med(overhead):.3f} s  (min {min(overhead):.3f}, max {max(overhead):.3f}); "
          f"target <= 1.5 s: {'OK' if med(overhead) <= 1.5 else 'MISSED'}")
    print(f"overhead / trivial flow run  {med(overhead) / med(empty):.2f}x")


if __name__ == "__main__":
    main()
