"""The system of record: MLflow (tracking + model registry) and the SQLAlchemy catalog.

Other packages use this small typed facade; only this package touches MLflow's and SQLAlchemy's clients.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Names are imported when first used, so a process that needs only the catalog (the gateway, the
# replica supervisor) does not load MLflow.
_WHERE = {"Catalog": "registry.catalog", "Experiments": "registry.experiments", "ModelRegistry": "registry.models",
          "ModelVersionInfo": "registry.models", "serving_args": "registry.models", "serving_env": "registry.models",
          "Templates": "registry.templates", "Tracking": "registry.tracking"}

if TYPE_CHECKING:
    from registry.catalog import Catalog
    from registry.experiments import Experiments
    from registry.models import ModelRegistry, ModelVersionInfo, serving_args, serving_env
    from registry.templates import Templates
    from registry.tracking import Tracking


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'registry' has no attribute {name!r}")


__all__ = [
    "Catalog", "Experiments", "ModelRegistry", "ModelVersionInfo", "Templates", "Tracking",
    "serving_args", "serving_env",
]
