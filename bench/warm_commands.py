"""`mlyard` commands through the warm runner beside the same commands cold (MLYARD_WARM_CLI=0), in one
run, on a throwaway embedded stack with default settings.

Each command runs as a user's shell runs it (PATH, HOME, LANG and MLYARD_HOME only), alternating warm
and cold. Two figures per command: its wall time (start to exit, as the user waits for it) and the
CPU time the whole machine spent meanwhile (/proc/stat: the command, the runner's child, and what the
stack's servers did for it; the idle stack adds about 0.05 CPU-seconds a second to both sides).

Run: `python bench/warm_commands.py [--rounds 8]` (about 3 minutes) on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _stack  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
BIN = Path(sys.executable).parent


def busy_seconds() -> float:
    with open("/proc/stat") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / HZ


def timed(words: list[str], cwd: Path, warm: bool) -> tuple[float, float]:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
           "MLYARD_HOME": os.environ["MLYARD_HOME"], "MLYARD_WARM_CLI": "1" if warm else "0"}
    cpu, t0 = busy_seconds(), time.perf_counter()
    subprocess.run([str(BIN / "mlyard"), *words], cwd=cwd, env=env, capture_output=True, timeout=300)
    return time.perf_counter() - t0, busy_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    _stack.start()
    work = Path(tempfile.mkdtemp())
    (work / "algo").mkdir()
    (work / "algo" / "main.py").write_text("print('loss=1')\n")
    (work / "train.yaml").write_text("name: bench\nexperiment: bench\nsource_uri: algo\nentry_point: main.py\n")
    (work / "bad.yaml").write_text("name: bench\nsource_uri: algo\nentry_point: mian.py\n")
    commands = {
        "a list (trainings list --json)": ["trainings", "list", "--json"],
        "a refused spec (train -f bad.yaml)": ["train", "-f", "bad.yaml"],
        "a queued training (train --submit --json)": ["train", "-f", "train.yaml", "--submit", "--json"],
        "a training run here, to its end (train -f)": ["train", "-f", "train.yaml"],
    }
    for words in commands.values():  # once each way first: the first writes of MLflow and the catalog
        timed(words, work, True)
        timed(words, work, False)
    print(f"{'command':45} {'warm wall':>10} {'cold wall':>10} {'ratio':>6} {'warm CPU':>9} {'cold CPU':>9} {'ratio':>6}")
    for name, words in commands.items():
        figures: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for _ in range(args.rounds):
            for warm in (True, False):
                figures[warm].append(timed(words, work, warm))
        wall = {w: statistics.median(f[0] for f in figures[w]) for w in figures}
        cpu = {w: statistics.median(f[1] for f in figures[w]) for w in figures}
        print(f"{name:45} {wall[True]:9.2f}s {wall[False]:9.2f}s {wall[True] / wall[False]:6.2f} "
              f"{cpu[True]:8.2f}s {cpu[False]:8.2f}s {cpu[True] / cpu[False]:6.2f}")
    print(f"medians of {args.rounds} rounds, warm and cold alternating")


if __name__ == "__main__":
    main()
