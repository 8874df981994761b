"""GPU slots on one machine: a Prefect global concurrency limit with as many slots as the machine has
GPUs (settings `gpu_slots`, else `nvidia-smi -L`), which a training or a tuning's trial takes
`gpu_count` of before its entry point starts and gives back when it ends. So 4 parallel trials of 1 GPU
on 2 GPUs run 2 at a time, whether they are processes of one tuning or flow runs of their own; the
limit shows in the Prefect UI (Concurrency), and slots of a process that died are freed when their
lease runs out. On a Kubernetes pool the pod asks the cluster for its GPUs instead (Kueue's quota).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

from mlyard.core.errors import SpecError
from mlyard.core.settings import Settings, in_kubernetes_pod

LIMIT = "mlyard-gpu"
QUIET_WAIT_SECONDS = 0.5  # a taker that waits longer than this says what it waits for


def machine_gpus() -> int:
    """GPUs `nvidia-smi -L` lists (0 without the NVIDIA driver)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def slots(settings: Settings) -> int:
    return settings.gpu_slots if settings.gpu_slots is not None else machine_gpus()


def check(field: str, gpu_count: int, settings: Settings, nodes: int = 1) -> None:
    """Refuse more GPUs than this machine has slots for, `nodes` node processes asking `gpu_count` each
    (when it has any: without GPUs, gpu_count is what the spec asks of a Kubernetes pool and is not
    enforced here)."""
    total = slots(settings)
    if total and gpu_count * nodes > total:
        per = f" per node for {nodes} nodes" if nodes > 1 else ""
        raise SpecError(field, gpu_count, f"at most {total // nodes}{per}: this machine has {total} GPU slot(s) "
                        "(settings gpu_slots); more runs on the gpu pool (--submit --pool gpu)")


def ensure_limit(total: int, name: str = LIMIT) -> None:
    """The global concurrency limit `name` with `total` slots (made, or its size corrected). Two takers
    making it at once is fine: the one that finds it made checks its size again."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(name, total)
        except ObjectAlreadyExists:
            client.upsert_global_concurrency_limit_by_name(name, total)


@contextmanager
def holding(gpu_count: int, settings: Settings, say: Callable[[str], None],
            also: tuple[tuple[str, int, int, str], ...] = ()) -> Iterator[None]:
    """Hold `gpu_count` GPU slots for the block (nothing to hold on a Kubernetes pod, for no GPUs, or on a
    machine without GPU slots), and each limit of `also`: (name, its slots, how many to take, what they
    are, said while waiting), as a project's quota (mlyard/teams.py) asks. A taker that will have to wait
    says so, with what it waits for."""
    total = slots(settings) if gpu_count and not in_kubernetes_pod() else 0  # nvidia-smi only when it matters
    wanted = [*also]
    if total:
        check("resources.gpu_count", gpu_count, settings)  # the nodes' total: the caller's product
        wanted.append((LIMIT, total, gpu_count, f"{gpu_count} of the {total} GPU slot(s) of this machine: other "
                                                 "trainings or trials hold them"))
    if not wanted:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with ExitStack() as held:
        for name, size, occupy, what in wanted:
            ensure_limit(size, name)
            said: list[bool] = []
            waiting = threading.Timer(QUIET_WAIT_SECONDS, lambda what=what, name=name, said=said: (
                said.append(True), say(f"waiting for {what} (Prefect concurrency limit {name})")))
            waiting.daemon = True
            waiting.start()
            try:
                held.enter_context(concurrency(name, occupy=occupy, strict=True))
            finally:
                waiting.cancel()
            if said:
                say(f"took {occupy} slot(s) of {name}")
        yield


def project_quota(project: str, gpu_count: int, cpu: float | None, settings: Settings
                  ) -> tuple[tuple[str, int, int, str], ...]:
    """What a script run of `project` takes of its project's quota on this machine (for `holding`'s `also`):
    one of its concurrent runs, its GPUs, its CPUs (in thousandths); nothing on a Kubernetes pod (Kueue's
    LocalQueue of the project holds its quota there) or for a project without one."""
    if in_kubernetes_pod():
        return ()
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.teams import Teams

    try:
        quota = Teams(Catalog(settings.catalog_db_url)).project(project)
    except LookupError:
        return ()
    held: list[tuple[str, int, int, str]] = []
    if quota["max_runs"]:
        held.append((f"mlyard-project-{project}-runs", quota["max_runs"], 1,
                     f"one of project {project}'s {quota['max_runs']} run(s) at once: its other runs hold them"))
    if quota["gpus"] is not None and gpu_count:
        held.append((f"mlyard-project-{project}-gpus", max(quota["gpus"], 1), gpu_count,
                     f"{gpu_count} of project {project}'s {quota['gpus']} GPU(s): its other runs hold them"))
    if quota["cpus"] and cpu:
        held.append((f"mlyard-project-{project}-millicpus", int(quota["cpus"] * 1000), int(cpu * 1000),
                     f"{cpu:g} of project {project}'s {quota['cpus']:g} CPU(s): its other runs hold them"))
    return tuple(held)
