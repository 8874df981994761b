"""The `mlyard` command's entry point: a command from a script or a pipe runs in a child of the home's
warm runner; a command typed at a terminal runs here.

A cold `mlyard` process pays for Python, typer and rich before it parses its arguments, and for Prefect,
SQLAlchemy and MLflow when its command submits, creates or runs something (0.4 to 3 s of CPU per
command). When `mlyard up` runs for this home, its warm runner (mlyard/warm/server.py) already holds
them: this entry hands it the command line, environment, working directory, umask and standard streams
(as the local pool's flow runs are handed over), forwards SIGINT, SIGTERM and SIGHUP to the command's
process group, and exits with its status. It imports only the standard library, so the hand-over costs
a few milliseconds.

The command runs here, as before, when it is typed at a terminal (its own process keeps the shell's job
control, Ctrl-Z included, and a password prompt's hidden input, which need the terminal as the
process's controlling one), when no runner answers for the home, when the runner's code is
stale (it then exits, and a fresh one is started for the commands that follow), with `MLYARD_WARM_CLI=0`, and for the
commands that start or stop the stack or serve a model (`up`, `down`, `demo`, `serve`): those are
long-lived processes that should hold only what they need.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mlyard.core.environment import home as named_home
from mlyard.core.environment import warm_cli
from mlyard.core.home import STACK_FILE
from mlyard.warm import SOCKET, warm_dir

COLD_COMMANDS = frozenset({"up", "down", "demo", "serve"})


def main() -> None:
    words = sys.argv[1:]
    command = next((word for word in words if not word.startswith("-")), None)
    if (warm_cli() and command is not None and command not in COLD_COMMANDS
            and not os.isatty(0)):
        folder = home()
        socket_path = warm_dir(folder) / SOCKET
        if socket_path.exists():
            from mlyard.warm.client import hand_over, relay, start_runner

            handed = hand_over(socket_path, command=sys.argv)
            if handed is not None:
                sys.exit(relay(*handed))
            if (folder / STACK_FILE).exists():  # the stack runs, its runner went away (stale code, killed)
                start_runner(folder)  # a fresh one for the commands that follow
    from mlyard.cli import main as cold

    cold()


def home() -> Path:
    """The home as mlyard.core.settings.Settings finds it (MLYARD_HOME, else the nearest .mlyard from here up)."""
    return named_home()


if __name__ == "__main__":
    main()
