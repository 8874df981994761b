"""Where the test suite's CPU goes: run a command (default: the suite as `make test` runs it) while
sampling every process's CPU time from /proc twice a second, then print the CPU-seconds per kind of
process (the Prefect servers, the xdist workers' own test code, `mlyard` commands, model servers, ...).

    .venv/bin/python bench/suite_cpu.py                      # pytest -q -n 3 --dist loadfile (as make test)
    .venv/bin/python bench/suite_cpu.py -- pytest tests/flows/test_rag.py
    .venv/bin/python bench/suite_cpu.py --top 30             # and the 30 costliest kinds of command line
    .venv/bin/python bench/suite_cpu.py --timeline 60        # and the machine's busy cores per minute

A process that lives less than half a second can be missed, so the total is a floor. The suite is
CPU-bound on two cores: its wall time follows the sum below, not any one test.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import threading
import time

HZ = os.sysconf("SC_CLK_TCK")
KINDS = [  # the first pattern a command line matches names its kind
    # with setproctitle installed (the warm runner's children use it), xdist names its workers by the test
    # they run ("[pytest-xdist running] tests/...") or "[pytest-xdist idle]"
    ("xdist workers (the tests' own code)", r"^\[pytest-xdist "),
    ("Prefect server", r"mlyard\.prefect_server|prefect server"),
    ("warm runner and its flow runs", r"mlyard\.warm\.server|prefect\.engine \(flow run "),  # a child names its run
    ("local worker", r"mlyard\.warm\.worker"),
    ("Kubernetes workers (emulated cluster)", r"prefect worker"),
    ("flow-run pods (emulated cluster)", r"prefect\.engine"),
    ("training nodes (emulated cluster)", r"tasks\.node"),
    ("xdist workers (the tests' own code)", r"execnet|import sys;exec\(eval"),
    ("mlyard serve", r"mlyard serve"),
    ("RAG query services", r"serving\.rag"),
    ("mlyard API", r"mlyard\.service"),
    ("gateway", r"serving\.gateway"),
    ("scheduler", r"tasks\.scheduling"),
    ("MLflow requirement inference", r"_capture_modules"),
    ("mypy", r"mypy"),
    ("mlyard commands", r"bin/mlyard "),
    ("python -c (users' Python calls)", r"python3? -c"),
    ("PostgreSQL", r"postgres"),
    ("other Python (scripts, trainings, loaders)", r"python"),
]


def busy_seconds() -> float:
    """The whole machine's busy CPU time since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / HZ


def sample(seen: dict[str, list], stop: threading.Event, timeline: list[tuple[float, float]]) -> None:
    """Each process's command line and CPU time so far, less what those already running at the start
    had used before it; and the machine's busy CPU time at each pass."""
    first = True
    while not stop.is_set():
        timeline.append((time.monotonic(), busy_seconds()))
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                key = f"{pid}:{fields[19]}"  # pid and start time: a reused pid is another process
                cpu = (int(fields[11]) + int(fields[12])) / HZ
                if key not in seen:
                    seen[key] = ["", cpu, cpu if first else 0.0]
                seen[key][1] = cpu
                # read again at every pass: a warm runner's child names itself (its run, its command) only
                # after the fork
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    seen[key][0] = fh.read().replace(b"\0", b" ").decode(errors="replace") or seen[key][0]
            except (OSError, IndexError, ValueError):
                continue
        first = False
        stop.wait(0.5)


def kind(cmd: str) -> str:
    return next((name for name, rx in KINDS if re.search(rx, cmd)), "other")


def shape(cmd: str) -> str:
    """A command line with its paths cut to their last part and its ids and numbers masked, so that the
    same command run many times counts as one (`mlyard trainings show <id>`)."""
    words = [w.rsplit("/", 1)[-1] if "/" in w and not w.startswith("-") else w for w in cmd.split()]
    text = re.sub(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}|\d+", "N", " ".join(words))
    return text[:90]


def main() -> None:
    args = sys.argv[1:sys.argv.index("--")] if "--" in sys.argv else sys.argv[1:]
    top = int(args[args.index("--top") + 1]) if "--top" in args else 0
    window = float(args[args.index("--timeline") + 1]) if "--timeline" in args else 0.0
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else \
        [sys.executable, "-m", "pytest", "-q", "-n", "3", "--dist", "loadfile"]
    seen: dict[str, list] = {}
    timeline: list[tuple[float, float]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(seen, stop, timeline), daemon=True)
    t0 = time.monotonic()
    sampler.start()
    code = subprocess.call(argv)
    wall = time.monotonic() - t0
    stop.set()
    sampler.join()
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    used = [(cmd, cpu - base) for cmd, cpu, base in seen.values() if cpu > base]
    for cmd, cpu in used:
        totals[kind(cmd)][0] += cpu
        totals[kind(cmd)][1] += 1
    total = sum(cpu for cpu, _ in totals.values())
    print(f"\n{' '.join(argv)}: exit {code}, {wall:.0f} s wall, {total:.0f} CPU-seconds sampled "
          f"({total / wall:.2f} cores busy on average)")
    for name, (cpu, n) in sorted(totals.items(), key=lambda kv: -kv[1][0]):
        print(f"{cpu:8.1f} s  {100 * cpu / total:5.1f}%  {int(n):4d} processes  {name}")
    if top:
        shapes: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
        for cmd, cpu in used:
            shapes[shape(cmd)][0] += cpu
            shapes[shape(cmd)][1] += 1
        print(f"\nthe {top} costliest command lines (paths cut, ids and numbers masked):")
        for cmd, (cpu, n) in sorted(shapes.items(), key=lambda kv: -kv[1][0])[:top]:
            print(f"{cpu:8.1f} s  {int(n):4d} x  {cpu / n:6.2f} s each  {cmd}")
    if window and timeline:
        print(f"\nthe machine's busy cores, every {window:.0f} s (idle cores are time no process could use):")
        start, mark = timeline[0]
        for t, busy in timeline:
            if t - start >= window:
                print(f"{start - t0:6.0f}-{t - t0:4.0f} s  {(busy - mark) / (t - start):4.2f}")
                start, mark = t, busy


if __name__ == "__main__":
    main()
