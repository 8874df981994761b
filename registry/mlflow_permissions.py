"""MLflow's own permissions (the `mlflow[auth]` app's store) kept in step with a user's project roles: each
experiment and registered model belongs to one project (its `mlyard.project` tag; untagged ones are
`default`'s), and a member of that project gets MLflow's permission for their role on it: a viewer READ,
an editor EDIT, an owner MANAGE. They get nothing on anything else (the UI's default permission is
NO_PERMISSIONS), so MLflow's own checks and its filtering of searches show each user their projects'
experiments, runs and models alone, and refuse a viewer's writes."""

from __future__ import annotations

import secrets
from typing import Any, Callable

from mlyard.core.access import DEFAULT_PROJECT
from mlyard.core.names import TAG_PROJECT

PERMISSION = {"viewer": "READ", "editor": "EDIT", "owner": "MANAGE"}


def wanted(tracking_uri: str, roles: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """What a user with `roles` (project -> role) is to hold: ({experiment id: permission}, {model name:
    permission})."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiments: dict[str, str] = {}
    token = None
    while True:
        page = client.search_experiments(view_type=ViewType.ALL, max_results=1000, page_token=token)
        for e in page:
            role = roles.get(e.tags.get(TAG_PROJECT, DEFAULT_PROJECT))
            if role in PERMISSION:
                experiments[e.experiment_id] = PERMISSION[role]
        token = page.token
        if not token:
            break
    models = {m.name: PERMISSION[roles[project]] for m in client.search_registered_models(max_results=1000)
              if (project := (m.tags or {}).get(TAG_PROJECT, DEFAULT_PROJECT)) in roles and roles[project] in PERMISSION}
    return experiments, models


def keep_in_step(store: Any, user: str, admin: bool, experiments: dict[str, str], models: dict[str, str]) -> None:
    """`user` in MLflow's permission `store` (made with a password nobody knows: they sign in with their API
    key), an admin there when they are one here, holding exactly `experiments` and `models`."""
    if not store.has_user(user):
        store.create_user(user, secrets.token_urlsafe(32), is_admin=admin)
    elif store.get_user(user).is_admin != admin:
        store.update_user(user, is_admin=admin)
    _in_step({p.experiment_id: p.permission for p in store.list_experiment_permissions(user)}, experiments,
             lambda e, p: store.create_experiment_permission(e, user, p),
             lambda e, p: store.update_experiment_permission(e, user, p),
             lambda e: store.delete_experiment_permission(e, user))
    _in_step({p.name: p.permission for p in store.list_registered_model_permissions(user)}, models,
             lambda m, p: store.create_registered_model_permission(m, user, p),
             lambda m, p: store.update_registered_model_permission(m, user, p),
             lambda m: store.delete_registered_model_permission(m, user))


def _in_step(held: dict[str, str], wanted: dict[str, str], create: Callable[[str, str], Any],
             update: Callable[[str, str], Any], delete: Callable[[str], Any]) -> None:
    for key, permission in wanted.items():
        if key not in held:
            create(key, permission)
        elif held[key] != permission:
            update(key, permission)
    for key in held.keys() - wanted.keys():
        delete(key)
