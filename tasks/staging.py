"""Prefect tasks around storage: staging in and out with retries on an unreachable store.

Kept apart from `storage.py` (plain code), so that checking a spec or starting a batch worker
process never imports Prefect.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from mlyard.core.errors import StorageUnreachable
from mlyard.tasks.storage import Storage


@task(name="stage-in", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      retry_condition_fn=lambda t, r, s: isinstance(s.result(raise_on_failure=False), StorageUnreachable))
def stage_in(storage: Storage, uri: str, scratch: Path, field: str) -> Path:
    return storage.stage_in(uri, scratch, field)


@task(name="stage-out", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      retry_condition_fn=lambda t, r, s: isinstance(s.result(raise_on_failure=False), StorageUnreachable))
def stage_out(storage: Storage, src: Path, uri: str, field: str) -> str:
    return storage.upload(src, uri, field)
