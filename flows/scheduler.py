"""The scheduler as a flow, for production: one long-running flow run on a Kubernetes pool makes the
schedules' runs, as `mlyard up` does with a local process (tasks/scheduling.py).

1. Connect to the catalog and to the Prefect API the worker handed this run.
2. Run scheduler passes until the run is cancelled (or `max_hours` pass: a new run then takes over).
"""

from __future__ import annotations

import threading

from prefect import flow, get_run_logger

from mlyard.core.names import FLOW_SCHEDULER


@flow(name=FLOW_SCHEDULER, log_prints=True)
def scheduler(max_hours: float = 0.0) -> None:
    """Make the schedules' runs until cancelled; with `max_hours` > 0, end after that long."""
    from prefect.client.orchestration import get_client

    from mlyard.core.connection import connect
    from mlyard.core.settings import Settings
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.schedules import Schedules
    from mlyard.tasks.orchestration import quick_retries
    from mlyard.tasks.scheduling import Scheduler

    settings = connect(Settings())
    stop = threading.Event()
    if max_hours > 0:
        threading.Timer(max_hours * 3600, stop.set).start()
    get_run_logger().info("scheduler started")
    with get_client(httpx_settings={"transport": quick_retries()}, sync_client=True) as client:
        Scheduler(Schedules(Catalog(settings.catalog_db_url)), client, settings.schedule_start_timeout_seconds,
                  settings.schedule_lead_seconds).run(stop)
