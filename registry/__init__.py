"""The system of record: MLflow (tracking + model registry) and the SQLAlchemy catalog.

Other packages use this small typed facade; only this package touches MLflow's and SQLAlchemy's clients.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Names are imported when first used, so a process that needs only the catalog (the gateway, the
# replica supervisor) does not load MLflow.
_WHERE = {"Catalog": "mlyard.registry.catalog", "Experiments": "mlyard.registry.experiments", "ModelRegistry": "mlyard.registry.models",
          "ModelVersionInfo": "mlyard.registry.models", "serving_args": "mlyard.registry.models", "serving_env": "mlyard.registry.models",
          "Templates": "mlyard.registry.templates", "Tracking": "mlyard.registry.tracking"}

if TYPE_CHECKING:
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.experiments import Experiments
    from mlyard.registry.models import ModelRegistry, ModelVersionInfo, serving_args, serving_env
    from mlyard.registry.templates import Templates
    from mlyard.registry.tracking import Tracking


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'mlyard.registry' has no attribute {name!r}")


__all__ = [
    "Catalog", "Experiments", "ModelRegistry", "ModelVersionInfo", "Templates", "Tracking",
    "serving_args", "serving_env",
]
