"""`mlyard k8s diff`: what an apply of the values would do, without doing it. Each object is applied as a
server-side dry run (the API server runs its admission and defaulting, nothing is stored) and compared with
the object as it is: created, changed (and which fields), unchanged, or, for a Job whose pod template changed
(a new image), replaced (it would run again)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from mlyard.core.errors import StackError
from mlyard.tasks.cluster_apply import (
    FIELD_MANAGER,
    TEMPLATE_HASH,
    changed_paths,
    hashed,
    live_of,
    replicas_kept,
    resource_of,
)


@dataclass
class Diffed:
    kind: str
    name: str
    outcome: str  # created, changed, replaced, unchanged
    fields: list[str] = field(default_factory=list)  # what an apply would change (dotted paths), at most 20


def diff(objs: list[dict], dyn: Any) -> Iterator[Diffed]:
    from kubernetes.dynamic.exceptions import ApiException

    for obj in objs:
        kind, meta = obj["kind"], obj["metadata"]
        resource, namespace = resource_of(dyn, obj)
        live = live_of(dyn, resource, meta["name"], namespace)
        if live is None:
            yield Diffed(kind, meta["name"], "created")
            continue
        if kind == "Job":
            obj = hashed(obj)
            if (live["metadata"].get("annotations") or {}).get(TEMPLATE_HASH) != \
                    obj["metadata"]["annotations"][TEMPLATE_HASH]:
                yield Diffed(kind, meta["name"], "replaced", ["spec.template"])
                continue
        obj, _ = replicas_kept(obj, live)  # another manager's count: an apply leaves it
        try:
            would = dyn.server_side_apply(resource, body=obj, namespace=namespace, field_manager=FIELD_MANAGER,
                                          force_conflicts=True, dry_run="All").to_dict()
        except ApiException as exc:
            raise StackError(f"{kind} {meta['name']}: the API server would refuse it: {exc.status} {exc.reason}") \
                from None
        changed = changed_paths(live, would)
        yield Diffed(kind, meta["name"], "changed" if changed else "unchanged", changed[:20])
