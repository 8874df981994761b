"""The system of record: MLflow (tracking + model registry) and the SQLAlchemy catalog.

Other packages use this small typed facade; only this package touches MLflow's and SQLAlchemy's clients.
"""

from registry.catalog import Catalog
from registry.experiments import Experiments
from registry.models import ModelRegistry, ModelVersionInfo, serving_args, serving_env
from registry.templates import Templates
from registry.tracking import Tracking

__all__ = [
    "Catalog", "Experiments", "ModelRegistry", "ModelVersionInfo", "Templates", "Tracking",
    "serving_args", "serving_env",
]
