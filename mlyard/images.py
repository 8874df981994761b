"""Images and registry accounts from the front door: the catalog's rules (registry/images.py) plus what
only the platform as a whole knows: which unfinished trainings, tunings and batch inferences run an
image (Prefect's flow runs), so that an image in use is never deleted from under them.
"""

from __future__ import annotations

from mlyard import runs
from mlyard.registry.images import ImageInfo, uses


def image_users(info: ImageInfo) -> list[str]:
    """Unfinished runs whose spec names the image (by name or address)."""
    out: list[str] = []
    for kind in (runs.TRAINING, runs.TUNING, runs.BATCH):
        for r in runs.list_runs(kind, limit=10_000, active_only=True):
            if r.status not in runs.ACTIVE_STATUSES:
                continue
            spec = r.spec or {}
            if uses(spec.get("image"), info) or uses((spec.get("training") or {}).get("image"), info):
                out.append(f"{kind.noun} {r.name} ({r.status})")
    return out
