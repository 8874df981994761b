"""`mlyard users ...`, `mlyard projects ...`, `mlyard audit`, `mlyard login|logout|whoami`: who may do what
(mlyard/teams.py decides; the platform's mlyard API answers for a team member's key)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from mlyard.cli.common import JSON, ask, emit, err, guard, out, typer_app
from mlyard.commands import act

users_app = typer_app("Users and their API keys (an admin's; anyone: their own keys).")
projects_app = typer_app("Projects: members and their roles (viewer, editor, owner), quotas.")

EXPIRES = typer.Option(None, "--expires-days", min=1, help="The key stops working after this many days (default: "
                                                             "never; revoke it any time).")


@users_app.command("create")
def users_create(name: str, admin: bool = typer.Option(False, "--admin", help="A platform admin: every project, "
                                                                              "every user."),
                 expires_days: Optional[int] = EXPIRES, as_json: bool = JSON) -> None:
    """Make a user and print their API key, once (it is kept only as a hash): hand it to them."""
    made = guard(lambda: act("users_create", name=name, admin=admin, expires_days=expires_days))
    if as_json:
        emit({"name": made["name"], "key": made["key"], "key_id": made["key_id"], "admin": made["admin"]}, True)
        return
    out.print(f"user {made['name']}{' (admin)' if made['admin'] else ''}; their API key (shown this once):")
    print(made["key"])
    err.print(f"they sign in with `mlyard login` (or MLYARD_API_KEY); add them to a project: "
              f"`mlyard projects add-member PROJECT {made['name']} --role editor`", markup=False, highlight=False)


@users_app.command("add-key")
def users_add_key(name: str, expires_days: Optional[int] = EXPIRES,
                  description: str = typer.Option("", help="What the key is for (a CI job, a laptop)."),
                  as_json: bool = JSON) -> None:
    """Another API key for a user (an admin's, or your own): printed once."""
    made = guard(lambda: act("users_add_key", name=name, expires_days=expires_days, description=description))
    if as_json:
        emit(made, True)
        return
    print(made["key"])


@users_app.command("list")
def users_list(as_json: bool = JSON) -> None:
    """Users, whether admins, and their roles per project (a member sees only themselves)."""
    rows = guard(lambda: ask("users_list"))
    emit(rows, as_json, ["name", "admin", "projects", "created_at", "created_by"], empty="no users yet: "
         "`mlyard users create NAME`")


@users_app.command("keys")
def users_keys(name: str, as_json: bool = JSON) -> None:
    """A user's keys: id, state (active, expired, revoked), last use, expiry. Never the keys themselves."""
    rows = guard(lambda: ask("users_keys", name=name))
    emit(rows, as_json, ["key_id", "state", "created_at", "last_used_at", "expires_at", "revoked_at", "description"],
         empty=f"{name} has no keys: `mlyard users add-key {name}`")


@users_app.command("revoke")
def users_revoke(key_id: str, as_json: bool = JSON) -> None:
    """End a key at once (its next request is refused)."""
    emit(guard(lambda: act("users_revoke", key_id=key_id)), as_json)


@users_app.command("delete")
def users_delete(name: str, as_json: bool = JSON) -> None:
    """Delete a user with their keys and roles; what they made stays with its project."""
    emit(guard(lambda: act("users_delete", name=name)), as_json)


@projects_app.command("create")
def projects_create(name: str, description: str = typer.Option("", help="Shown in lists."),
                    gpus: Optional[int] = typer.Option(None, "--gpus", min=0, help="GPUs its runs may hold at once."),
                    cpus: Optional[float] = typer.Option(None, "--cpus", min=0, help="CPUs its runs may hold at once."),
                    max_runs: Optional[int] = typer.Option(None, "--max-runs", min=0, help="Its runs at once."),
                    owner: Optional[str] = typer.Option(None, "--owner", help="A user to make its first owner."),
                    as_json: bool = JSON) -> None:
    """Make a project (an admin's): what its members make belongs to it; its quota bounds its runs."""
    emit(guard(lambda: act("projects_create", name=name, description=description, gpus=gpus, cpus=cpus,
                           max_runs=max_runs, owner=owner)), as_json)


@projects_app.command("list")
def projects_list(as_json: bool = JSON) -> None:
    """Your projects (an admin: all), your role in each, their quotas."""
    emit(guard(lambda: ask("projects_list")), as_json,
         ["name", "role", "members", "gpus", "cpus", "max_runs", "description"], empty="no projects")


@projects_app.command("show")
def projects_show(name: str, as_json: bool = JSON) -> None:
    """A project: members and roles, quotas."""
    emit(guard(lambda: ask("projects_show", name=name)), as_json)


@projects_app.command("add-member")
def projects_add_member(project: str, user: str,
                        role: str = typer.Option(..., "--role", help="viewer (reads), editor (creates, changes, "
                                                 "starts, stops) or owner (also members and deleting)."),
                        as_json: bool = JSON) -> None:
    """Give a user a role in the project, or change it (its owner's or an admin's)."""
    emit(guard(lambda: act("projects_add_member", project=project, user=user, role=role)), as_json)


@projects_app.command("remove-member")
def projects_remove_member(project: str, user: str, as_json: bool = JSON) -> None:
    emit(guard(lambda: act("projects_remove_member", project=project, user=user)), as_json)


@projects_app.command("set-quota")
def projects_set_quota(name: str, gpus: Optional[int] = typer.Option(None, "--gpus", min=0),
                       cpus: Optional[float] = typer.Option(None, "--cpus", min=0),
                       max_runs: Optional[int] = typer.Option(None, "--max-runs", min=0),
                       rate_limit: Optional[float] = typer.Option(None, "--rate-limit", help="Requests a second to "
                                                                  "the project's endpoints, all callers together."),
                       key_rate_limit: Optional[float] = typer.Option(None, "--key-rate-limit", help="Requests a "
                                                                      "second of one caller's key or token."),
                       as_json: bool = JSON) -> None:
    """Change a project's quota and its endpoints' rate limits (an admin's); the options given change, the
    rest stay. Over a rate limit the gateway answers 429 with Retry-After."""
    quota = {k: v for k, v in (("gpus", gpus), ("cpus", cpus), ("max_runs", max_runs), ("rate_limit", rate_limit),
                               ("key_rate_limit", key_rate_limit)) if v is not None}
    emit(guard(lambda: act("projects_set_quota", name=name, **quota)), as_json)


@projects_app.command("delete")
def projects_delete(name: str, as_json: bool = JSON) -> None:
    """Delete a project that holds nothing (an admin's): refused, naming what it still holds."""
    emit(guard(lambda: act("projects_delete", name=name)), as_json)


def audit(project: Optional[str] = typer.Option(None, "--project", help="One project's records."),
          user: Optional[str] = typer.Option(None, "--user", help="One user's records."),
          since: Optional[str] = typer.Option(None, "--since", help="From when: 30m, 24h, 7d or an ISO time."),
          limit: int = typer.Option(200, "--limit", min=1, max=10000), as_json: bool = JSON) -> None:
    """Who created, changed, started, stopped, deleted or granted what, when, from where, and the result
    (an admin's; a project owner's for their projects). Newest first."""
    rows = guard(lambda: ask("audit", project=project, user=user, since=since, limit=limit))
    emit(rows, as_json, ["at", "user", "project", "action", "resource", "result", "source", "detail"],
         empty="no records")


def login(url: str = typer.Option(..., "--url", help="The platform's mlyard API (`mlyard status` prints it on the "
                                                    "stack's machine; on a cluster, its ingress)."),
          key_stdin: bool = typer.Option(False, "--key-stdin", help="Read the key from stdin (else it is asked for)."),
          project: Optional[str] = typer.Option(None, "--project", help="The project to act in by default.")) -> None:
    """Keep your API key and the platform's address for your commands (~/.config/mlyard/login.json,
    readable by you alone), after checking that the platform knows the key."""
    import sys

    from mlyard.core.environment import login_path

    key = sys.stdin.readline().strip() if key_stdin else typer.prompt("API key", hide_input=True).strip()

    def check() -> dict:
        from mlyard.warm_api import post

        os.environ.update({"MLYARD_API_KEY": key, "MLYARD_API_URL": url})  # this check only: the command ends here
        if project:
            os.environ["MLYARD_PROJECT"] = project
        return post(url.rstrip("/"), "/v1/queries/whoami", {})

    me = guard(check)
    path = login_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(f"{path}.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"api_url": url, "api_key": key, **({"project": project} if project else {})}, f)
    os.replace(f"{path}.tmp", path)
    out.print(f"signed in as {me['name']}" + (f" (project {me['project']})" if me.get("project") else "") +
              f"; kept in {path}")


def logout() -> None:
    """Forget the key `mlyard login` kept (revoking it is `mlyard users revoke KEY_ID`)."""
    from mlyard.core.environment import login_path

    path = login_path()
    path.unlink(missing_ok=True)
    out.print(f"signed out ({path} removed)")


def whoami(as_json: bool = JSON) -> None:
    """Who your commands act as: the user, admin or not, roles, the project."""
    emit(guard(lambda: ask("whoami")), as_json)


@projects_app.command("queues")
def projects_queues(values: Optional[Path] = typer.Option(None, "-f", "--values", help="The install's values file "
                                                          "(core/specs/cluster.py); it names kueue_queue."),
                    apply: bool = typer.Option(False, "--apply", help="Apply them (server-side) instead of printing."),
                    kubeconfig: Optional[Path] = typer.Option(None, "--kubeconfig"),
                    context: Optional[str] = typer.Option(None, "--context"), as_json: bool = JSON) -> None:
    """Each project's Kueue queues on the cluster (an admin's): a ClusterQueue with the project's GPU and CPU
    quota as its nominal quota, in the cohort of the gpu pool's (idle quota is borrowed), and the LocalQueue
    the platform labels the project's Jobs with. Run it again after `projects create` or `set-quota`."""
    from mlyard.cli.k8s import values_of
    from mlyard.tasks import cluster

    def go() -> list[dict]:
        me = ask("whoami")
        if not me["admin"]:
            from mlyard.core.errors import Forbidden

            raise Forbidden(me["name"], None, "making the projects' queues", "admin", None)
        objs = cluster.project_queues(values_of(values), ask("projects_list"))
        if not apply:
            return objs
        dyn = cluster.dynamic_client(str(kubeconfig) if kubeconfig else None, context)
        from mlyard.tasks.cluster_apply import apply as applied

        return [a.__dict__ for a in applied(objs, dyn)]

    done = guard(go)
    if as_json or apply:
        emit(done, as_json, None if as_json else ["kind", "name", "outcome"])
        return
    print(cluster.to_yaml(done), end="")
