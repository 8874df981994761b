"""Lifecycle flows: one module per action, each one @flow taking one typed spec.

Importing this package points Prefect at the running platform (core/connection.py) before any
flow module imports Prefect, so that `mlyard.flows.training.train(spec)` called from Python records its run
on the same server the CLI and the UI use, and never on a hidden temporary one. The documented way
to call a flow from Python, with the checks the CLI makes, is `mlyard.train(spec)` (mlyard/api.py).
"""

import sys

from mlyard.core.connection import connect_if_running

connect_if_running()
if "prefect" in sys.modules:  # a flow run's process (Prefect's engine imported it): runs end promptly
    from mlyard.tasks.orchestration import prompt_flow_ends

    prompt_flow_ends()
