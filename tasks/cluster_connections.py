"""The install's database connections, bounded (values.database_connections).

Every process that opens a database holds a connection pool: the Prefect server, each MLflow server worker,
each mlyard API, gateway and scheduler replica (the catalog), and each flow-run pod (the catalog). Left at their
libraries' defaults (SQLAlchemy's 5 + 10 each) they add up past a managed PostgreSQL's 100 connections. So the
render sets each one's pool from the values (Prefect's and MLflow's own settings, MLYARD_CATALOG_CONNECTIONS for
mlyard's; a flow-run pod's through its pool's job template, mlyard/prefect_cluster.py), and `check` refuses an
install whose processes could hold more than `limit` at once, counting each workload's replicas (and an MLflow
replica's workers) and each pool's concurrency limit (a gpu pool without one: its GPUs, one run each at least).
The migration Job's one connection at a time is left out: it runs before the Deployments change.
"""

from __future__ import annotations

import re

from mlyard.core.errors import SpecError
from mlyard.core.specs.cluster import ClusterValues

CATALOG_ENV = "MLYARD_CATALOG_CONNECTIONS"
PLATFORM = ("mlyard-api", "gateway", "scheduler")  # the Deployments whose processes open the catalog


def split(connections: int) -> tuple[int, int]:
    """A pool of at most `connections`: (pool size, overflow), the overflow opened only under load."""
    return (connections + 1) // 2, connections // 2


def customize(objs: list[dict], values: ClusterValues) -> list[dict]:
    """Each database user's pool set from the values (in place)."""
    share = values.database_connections
    for obj in objs:
        name = obj["metadata"]["name"]
        if obj["kind"] == "ConfigMap" and name == "mlyard-config":  # every platform pod's; a run pod's template
            obj["data"][CATALOG_ENV] = str(share.platform)          # sets its own over it
        if obj["kind"] != "Deployment" or name not in ("prefect-server", "mlflow"):
            continue
        size, overflow = split(share.prefect if name == "prefect-server" else share.mlflow)
        names = (("PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE", "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW")
                 if name == "prefect-server" else ("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"))
        env = obj["spec"]["template"]["spec"]["containers"][0].setdefault("env", [])
        env[:] = [e for e in env if e["name"] not in names] + [{"name": names[0], "value": str(size)},
                                                               {"name": names[1], "value": str(overflow)}]
    return objs


def budget(objs: list[dict], values: ClusterValues) -> dict[str, int]:
    """The most connections each part of the install could hold at once."""
    share, deployments = values.database_connections, {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}

    def replicas(name: str) -> int:
        return int(deployments[name]["spec"].get("replicas", 1)) if name in deployments else 0

    mlflow_workers = 1
    if "mlflow" in deployments:
        found = re.search(r"--workers[ =](\d+)", " ".join(deployments["mlflow"]["spec"]["template"]["spec"]
                                                          ["containers"][0].get("command", [])))
        mlflow_workers = int(found.group(1)) if found else 1
    gpu = values.pool_concurrency.gpu or values.gpu.nodes * values.gpu.per_node
    return {"prefect": replicas("prefect-server") * share.prefect,
            "mlflow": replicas("mlflow") * mlflow_workers * share.mlflow,
            "platform": sum(map(replicas, PLATFORM)) * share.platform,
            "runs": (gpu + (values.pool_concurrency.cpu or 0)) * share.run}


def check(objs: list[dict], values: ClusterValues) -> None:
    """SpecError in one line when the install could hold more connections than `limit`."""
    limit = values.database_connections.limit
    if limit is None:
        return
    if values.pool_concurrency.cpu is None:
        raise SpecError("pool_concurrency.cpu", None, "a number of runs at once: the cpu pool's runs unbounded hold "
                        "database connections unbounded (or set database_connections.limit: null, not to check them)")
    parts = budget(objs, values)
    if sum(parts.values()) > limit:
        said = " + ".join(f"{k} {v}" for k, v in parts.items())
        raise SpecError("database_connections.limit", limit, f"at least the {sum(parts.values())} connections the "
                        f"install could hold at once ({said}): raise it, or lower a share, a replica count or "
                        "pool_concurrency")
