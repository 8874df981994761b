"""A pytest plugin: the whole machine's CPU time spent during each test (setup, call and teardown,
every process: the test's own code, the servers it talks to, the processes it starts), written as a
table at the end. Run the suite serially so that each test's figure is its own:

    .venv/bin/python -m pytest -p bench.pytest_cpu -q -p no:randomly tests/ [--cpu-top 60]

What a session fixture costs is counted to the first test that uses it. Whatever else runs on the
machine is counted too: run it on a quiet machine.
"""

from __future__ import annotations

import collections
import os
import time

import pytest

_HZ = os.sysconf("SC_CLK_TCK")
_SPENT: dict[str, float] = collections.defaultdict(float)
_WALL: dict[str, float] = collections.defaultdict(float)


def _busy() -> float:
    """CPU-seconds the machine has been busy since boot (everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / _HZ


def pytest_addoption(parser):
    parser.addoption("--cpu-top", type=int, default=60, help="how many of the costliest tests to print")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    busy, wall = _busy(), time.monotonic()
    yield
    _SPENT[item.nodeid] += _busy() - busy
    _WALL[item.nodeid] += time.monotonic() - wall


def pytest_terminal_summary(terminalreporter, config):
    top = config.getoption("--cpu-top")
    files: dict[str, float] = collections.defaultdict(float)
    for nodeid, spent in _SPENT.items():
        files[nodeid.split("::")[0]] += spent
    write = terminalreporter.write_line
    write(f"\nCPU-seconds of the whole machine per test file ({sum(_SPENT.values()):.0f} in all):")
    for path, spent in sorted(files.items(), key=lambda kv: -kv[1]):
        write(f"{spent:8.1f}  {path}")
    write(f"\nthe {top} costliest tests (CPU-s, wall s):")
    for nodeid, spent in sorted(_SPENT.items(), key=lambda kv: -kv[1])[:top]:
        write(f"{spent:8.1f} {_WALL[nodeid]:7.1f}  {nodeid}")
