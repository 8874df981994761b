"""Ending process groups (tasks/processes.py): real processes, real signals."""

import signal
import subprocess
import sys
import time

from mlyard.tasks.processes import alive, stop_group, stop_groups

# Ignores SIGTERM; its child (same group) too: only SIGKILL ends them. Prints once both are up.
STUBBORN = ("import signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "time.sleep(60)'])\n"
            "time.sleep(0.5); print('up', flush=True); time.sleep(60)\n")


def _start(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True, text=True)
    assert proc.stdout.readline() == "up\n"
    return proc


def test_groups_share_one_grace_and_whatever_ignores_sigterm_is_killed_with_its_group():
    procs = [_start(STUBBORN) for _ in range(3)]
    began = time.monotonic()
    assert sorted(stop_groups([(p, signal.SIGTERM) for p in procs], grace_seconds=1.0)) == sorted(p.pid for p in procs)
    took = time.monotonic() - began
    assert took < 2.5, f"three stubborn groups took {took:.1f} s: their graces were added up"
    assert all(p.returncode == -signal.SIGKILL for p in procs)
    time.sleep(0.2)
    assert not any(alive(p.pid) for p in procs)


def test_a_group_that_ends_on_its_signal_is_not_waited_for_and_a_gone_one_is_not_counted():
    quick = _start("import time; print('up', flush=True); time.sleep(60)")
    gone = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    gone.wait()
    began = time.monotonic()
    assert stop_groups([(quick, signal.SIGTERM), (gone, signal.SIGTERM)], grace_seconds=30.0) == [quick.pid]
    assert time.monotonic() - began < 5 and quick.returncode == -signal.SIGTERM
    assert stop_group(gone, 1.0) is False
