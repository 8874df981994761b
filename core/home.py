"""Where the platform's home is: standard library only, for every command's first step (mlyard/warm/cli.py)
and for Settings alike."""

from __future__ import annotations

from pathlib import Path

DEFAULT_HOME = ".mlyard"
STACK_FILE = "stack.json"  # what `mlyard up` writes in the home while the stack runs


def find_home(named: Path | str = DEFAULT_HOME) -> Path:
    """The home named (MLYARD_HOME); the default `.mlyard` is looked for in the current directory and then
    its parents (as git finds `.git`), so a command run in a subdirectory of the project finds its platform."""
    if Path(named) == Path(DEFAULT_HOME):
        here = Path.cwd()
        for folder in (here, *here.parents):
            if (folder / DEFAULT_HOME).is_dir():
                return (folder / DEFAULT_HOME).resolve()
    return Path(named).expanduser().resolve()
