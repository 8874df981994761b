"""What a schedule runs, by the name its deployment has now. An older mlyard named deployments after their
pool (`train/local`) and saved that name and the deployment's id with each schedule; `mlyard up` has since
registered `train/train-local` and withdrawn the old one. The scheduler's passes point such a schedule at
the deployment named so now (core/names.current_deployment), once it is registered."""

from __future__ import annotations

import logging
from typing import Any

from mlyard.core.names import current_deployment
from mlyard.registry.schedules import ScheduleRecord, Schedules

log = logging.getLogger("mlyard.scheduler")


def named_now(store: Schedules, client: Any, record: ScheduleRecord) -> ScheduleRecord:
    """`record` pointing at its deployment as named now (itself when it already does, or while the deployment
    named so is not registered yet: a later pass looks again)."""
    from prefect.exceptions import ObjectNotFound

    named = str(record.spec.get("deployment") or "")
    now = current_deployment(named)
    if not named or now == named:
        return record
    try:
        found = client.read_deployment_by_name(now)
    except ObjectNotFound:
        return record
    log.info("schedule %s: deployment %s is %s now", record.name, named, now)
    return store.repoint(record.name, now, str(found.id))
