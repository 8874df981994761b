"""Start a throwaway embedded stack for a benchmark (own home, free port), before Prefect is imported; and
load a helper of tests/ by its path (`load_test_helper`)."""

import atexit
import os
import signal
import socket
import sys
import tempfile


def start():
    home = tempfile.mkdtemp(prefix="mlyard-bench-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"MLYARD_HOME": home, "MLYARD_PREFECT_PORT": str(port),
                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                       "DO_NOT_TRACK": "true"})
    from mlyard import stack
    from mlyard.core.settings import Settings

    settings = Settings()
    stack.up(settings, echo=lambda *_: None)
    from mlyard.core.connection import connect

    connect(settings)
    atexit.register(lambda: stack.down(settings, echo=lambda *_: None))
    # a bench stopped with kill (or timeout) takes its stack down too: one left running skews every
    # figure measured after it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return settings


def load_test_helper(name: str):
    """The module tests/<name>.py, by its path (tests/ on sys.path would shadow the project's packages), also
    under its name in sys.modules, where the helpers it imports are looked for (load those first)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "tests" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
