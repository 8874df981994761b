"""Start a throwaway embedded stack for a benchmark (own home, free port), before Prefect is imported."""

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
