"""NotebookSpec: a JupyterLab notebook, and the notebook statuses and instance types.

```yaml
name: explore
description: Looking at the digits data
instance_type: cpu-2          # mlyard notebooks types; changeable later while stopped (same core type)
boot_storage_gb: 50           # reset at every start: Jupyter, its settings, the kernels' registry
data_storage_gb: 100          # kept across stop, start and reboot: ~/easymaker in the notebook
nas: {mount_name: shared, uri: "nas://nas-1:/team"}   # optional: never deleted with the notebook
```

Storage sizes cannot change after creation. On one machine a notebook is a JupyterLab process the
stack supervises; its image is this machine's Python (`image: python`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import ConfigDict, Field, field_validator

from mlyard.core.errors import SpecError
from mlyard.core.specs.common import NAME_PATTERN, SpecModel, check_uri

LOCAL_IMAGE = "python"  # this machine's Python environment (mlyard's own)
DATA_MOUNT = "easymaker"  # the data storage's folder in the notebook's home (/root/easymaker on a cluster)

# The statuses a notebook goes through. ACTIVE is shown as ACTIVE (HEALTHY) or ACTIVE (UNHEALTHY), from a
# probe of its Jupyter server at the time it is shown.
CREATE_REQUESTED, CREATE_IN_PROGRESS, ACTIVE = "CREATE REQUESTED", "CREATE IN PROGRESS", "ACTIVE"
HEALTHY, UNHEALTHY = "ACTIVE (HEALTHY)", "ACTIVE (UNHEALTHY)"
STOPPED = "STOPPED"
IN_PROGRESS = {"create": CREATE_IN_PROGRESS, "stop": "STOP IN PROGRESS", "start": "START IN PROGRESS",
               "reboot": "REBOOT IN PROGRESS", "delete": "DELETE IN PROGRESS"}
FAILED = {"create": "CREATE FAILED", "stop": "STOP FAILED", "start": "START FAILED", "reboot": "REBOOT FAILED",
          "delete": "DELETE FAILED"}
STATUSES = (CREATE_REQUESTED, CREATE_IN_PROGRESS, HEALTHY, UNHEALTHY, IN_PROGRESS["stop"], STOPPED,
            IN_PROGRESS["start"], IN_PROGRESS["reboot"], IN_PROGRESS["delete"], *FAILED.values())
# Which stored statuses each action starts from (a failed action can be tried again).
ALLOWED_FROM = {
    "stop": (ACTIVE, FAILED["stop"], FAILED["reboot"], FAILED["start"]),
    "start": (STOPPED, FAILED["start"], FAILED["stop"]),
    "reboot": (ACTIVE, FAILED["reboot"]),
    "delete": (ACTIVE, STOPPED, *FAILED.values()),
}


@dataclass(frozen=True)
class InstanceType:
    name: str
    core_type: str  # CPU or GPU: a notebook changes type only within its core type
    cpus: int
    memory_gb: int
    gpus: int = 0


INSTANCE_TYPES = {t.name: t for t in (
    InstanceType("cpu-1", "CPU", 1, 4), InstanceType("cpu-2", "CPU", 2, 8), InstanceType("cpu-4", "CPU", 4, 16),
    InstanceType("cpu-8", "CPU", 8, 32), InstanceType("gpu-1", "GPU", 8, 60, 1), InstanceType("gpu-2", "GPU", 16, 120, 2),
    InstanceType("gpu-4", "GPU", 32, 240, 4),
)}


def instance_type(name: str, field: str = "instance_type") -> InstanceType:
    if name not in INSTANCE_TYPES:
        raise SpecError(field, name, f"one of {', '.join(INSTANCE_TYPES)} (mlyard notebooks types)")
    return INSTANCE_TYPES[name]


class NasMount(SpecModel):
    model_config = ConfigDict(extra="forbid")

    mount_name: str = Field(pattern=NAME_PATTERN, examples=["shared"],
                            description="The folder it appears as in the notebook's home.")
    uri: str = Field(examples=["nas://nas-1:/team"], description="nas://{NAS id}:/{path}: a share the platform "
                     "mounts (settings nas_mounts); never deleted with the notebook.")

    @field_validator("uri")
    @classmethod
    def _nas(cls, uri: str) -> str:
        if not uri.startswith("nas://"):
            raise ValueError("a NAS path: nas://{NAS id}:/{path}")
        check_uri("nas.uri", uri)
        return uri


class NotebookSpec(SpecModel):
    """A JupyterLab notebook: its image, instance type, storage and optional NAS share."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, examples=["explore"],
                      description="Unique: lowercase letters, digits and '-', at most 50.")
    description: str = Field(default="", max_length=255, description="What the notebook is for.")
    image: str = Field(default=LOCAL_IMAGE, max_length=255, examples=[LOCAL_IMAGE],
                       description="'python' (this machine's Python environment), or a notebook image of "
                                   "mlyard images (on a Kubernetes cluster).")
    instance_type: str = Field(default="cpu-2", examples=["cpu-2"],
                               description=f"One of {', '.join(INSTANCE_TYPES)}: its cores, memory and GPUs.")
    boot_storage_gb: int = Field(default=50, ge=10, le=1000, description="Boot storage (GB): Jupyter and its "
                                 "settings; reset at every start. Cannot change after creation.")
    data_storage_gb: int = Field(default=100, ge=1, le=10000, description=f"Data storage (GB), the notebook's "
                                 f"~/{DATA_MOUNT}: kept across stop, start and reboot. Cannot change after creation.")
    nas: NasMount | None = Field(default=None, description="A NAS share to mount (optional).")

    @field_validator("instance_type")
    @classmethod
    def _known_type(cls, name: str) -> str:
        if name not in INSTANCE_TYPES:
            raise ValueError(f"one of {', '.join(INSTANCE_TYPES)}")
        return name


class NotebookAction(SpecModel):
    """What the notebook flow does to a notebook (the front door records the notebook first)."""

    model_config = ConfigDict(extra="forbid")

    notebook: str = Field(pattern=NAME_PATTERN, examples=["explore"], description="The notebook's name.")
    action: Literal["create", "stop", "start", "reboot", "delete"] = Field(
        default="start", description="create (after the notebook was recorded), stop, start, reboot or delete.")
