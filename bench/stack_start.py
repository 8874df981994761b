"""`mlyard up` and `mlyard down` as a user meets them: each a fresh process (PATH, HOME and LANG only)
in a new project directory, so every `up` starts a fresh home; warm starts on (the default: the API,
the scheduler and the worker are forked from the warm runner) and off (`MLYARD_WARM_STARTS=false`: no
runner, every process starts on its own), alternating in one run.

    python bench/stack_start.py [--rounds 3]

Per start: the command's wall time, and the CPU the whole machine spent while it ran (the stack's
processes included: they outlive the command); then `down`'s wall time. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HZ = os.sysconf("SC_CLK_TCK")


def busy() -> float:
    with open("/proc/stat") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / HZ


def once(warm: bool) -> tuple[float, float, float]:
    project = Path(tempfile.mkdtemp(prefix="mlyard-start-"))
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
           "MLYARD_WARM_STARTS": "true" if warm else "false"}
    mlyard = str(ROOT / ".venv" / "bin" / "mlyard")
    try:
        cpu, began = busy(), time.monotonic()
        subprocess.run([mlyard, "up"], cwd=project, env=env, check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)
        up, cpu = time.monotonic() - began, busy() - cpu
        time.sleep(2)  # what the parts do right after (the API's first reads, the worker's first poll)
        began = time.monotonic()
        subprocess.run([mlyard, "down"], cwd=project, env=env, check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)
        return up, cpu, time.monotonic() - began
    finally:
        shutil.rmtree(project, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    once(True)  # the first start after an install warms the page cache and the prepared databases
    got: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    for _ in range(args.rounds):
        for warm in (True, False):
            got[warm].append(once(warm))
            print(f"{'warm' if warm else 'cold'}: up {got[warm][-1][0]:.1f} s, {got[warm][-1][1]:.1f} CPU-s; "
                  f"down {got[warm][-1][2]:.1f} s", flush=True)
    for warm in (True, False):
        ups, cpus, downs = zip(*got[warm])
        print(f"{'warm starts on ' if warm else 'warm starts off'}: up {statistics.median(ups):.1f} s "
              f"({min(ups):.1f}-{max(ups):.1f}), {statistics.median(cpus):.1f} CPU-s; "
              f"down {statistics.median(downs):.1f} s (medians of {args.rounds})")


if __name__ == "__main__":
    main()
