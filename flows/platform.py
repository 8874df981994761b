"""The platform's parts, built once from settings: storage, MLflow tracking and registry, catalog."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from mlyard.core.settings import Settings, apply_engine_env, require_shared_stores
from mlyard.tasks.storage import Storage

if TYPE_CHECKING:  # each part is imported when first used: a command that reads the catalog never loads MLflow
    from mlyard.registry import Catalog, Experiments, ModelRegistry, Templates, Tracking


class Platform:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        require_shared_stores(self.settings)
        apply_engine_env(self.settings)
        from mlyard.tasks.logrecords import install

        install(self.settings)  # what the flow run logs, also as structured records (`mlyard logs`)

    def scratch(self, prefix: str) -> Path:
        """A new private working directory under `<home>/runs` for one run; the caller removes it.

        Its name carries the pid of the process that owns it, so that the scratch of a run whose
        process was killed (which could not remove it) is removed by the next run (`sweep_scratch`)."""
        runs = self.settings.runs_dir
        runs.mkdir(parents=True, exist_ok=True)
        sweep_scratch(runs)
        return Path(tempfile.mkdtemp(prefix=f"{prefix}.pid{os.getpid()}.", dir=runs))

    @cached_property
    def storage(self) -> Storage:
        return Storage(self.settings)

    @cached_property
    def tracking(self) -> Tracking:
        from mlyard.registry import Tracking

        s = self.settings
        root = None if s.mlflow_tracking_uri else s.mlflow_artifact_root
        return Tracking(s.mlflow_uri, root)

    @cached_property
    def catalog(self) -> Catalog:
        from mlyard.registry import Catalog

        return Catalog(self.settings.catalog_db_url)

    @cached_property
    def models(self) -> ModelRegistry:
        from mlyard.registry import ModelRegistry
        from mlyard.tasks.examine import Examiner

        # what registration learns by loading a new version (its signature, its compiled form): in a sandbox
        looks = Examiner(self.settings.sandbox, self.settings.compile_at_registration)
        return ModelRegistry(self.tracking, self.catalog, infer_signature=looks.signature,
                             prepare=looks.prepare if self.settings.compile_at_registration else None)

    @cached_property
    def experiments(self) -> Experiments:
        from mlyard.registry import Experiments

        return Experiments(self.tracking)

    @cached_property
    def templates(self) -> Templates:
        from mlyard.registry import Templates

        return Templates(self.catalog)


_OWNER = re.compile(r"\.pid(\d+)\.")


def sweep_scratch(runs_dir: Path) -> list[Path]:
    """Remove the scratch directories (and files) whose owning process is gone (a killed or crashed run, an
    upload whose receiver was killed)."""
    removed = []
    for entry in runs_dir.iterdir() if runs_dir.is_dir() else []:
        m = _OWNER.search(entry.name)
        if m and not Path(f"/proc/{m[1]}").exists():
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
    return removed
