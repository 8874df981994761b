"""The platform's parts, built once from settings: storage, MLflow tracking and registry, catalog."""

from __future__ import annotations

from functools import cached_property

from mlyard.settings import Settings, apply_engine_env
from registry import Catalog, Experiments, ModelRegistry, Templates, Tracking
from tasks.storage import Storage


class Platform:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        apply_engine_env(self.settings)

    @cached_property
    def storage(self) -> Storage:
        return Storage(self.settings)

    @cached_property
    def tracking(self) -> Tracking:
        s = self.settings
        root = None if s.mlflow_tracking_uri else s.mlflow_artifact_root
        return Tracking(s.mlflow_uri, root)

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog(self.settings.catalog_db_url)

    @cached_property
    def models(self) -> ModelRegistry:
        return ModelRegistry(self.tracking, self.catalog)

    @cached_property
    def experiments(self) -> Experiments:
        return Experiments(self.tracking)

    @cached_property
    def templates(self) -> Templates:
        return Templates(self.catalog)
