"""`mlyard images ...` and `mlyard registry-accounts ...`: private images pods run, and the registry
logins their nodes pull them with (passwords are read from stdin or a hidden prompt, kept as Secrets,
never printed)."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from mlyard.cli.common import JSON, ask, emit, guard, out, typer_app
from mlyard.commands import act

app = typer_app("Private images that trainings, tunings, batch inference, endpoints and notebooks run on "
                "Kubernetes pools.")
accounts_app = typer_app("Registry accounts: the logins Kubernetes nodes pull private images with.")

PASSWORD_STDIN = typer.Option(False, "--password-stdin", help="Read the password from stdin (like `docker login "
                              "--password-stdin`); without it, a hidden prompt asks.")
IMAGE_COLUMNS = ["name", "project", "kind", "address", "account", "description", "created_at"]
ACCOUNT_COLUMNS = ["name", "project", "registry", "username", "images", "secret", "description", "updated_at"]


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        from mlyard.core.errors import SpecError

        raise SpecError("password", None, "given on stdin with --password-stdin (no terminal to ask on)")
    return typer.prompt("Registry password", hide_input=True)


def _row(d: dict) -> dict:
    return {**d, "created_at": d["created_at"][:19], **({"updated_at": d["updated_at"][:19]} if "updated_at" in d
                                                       else {})}


# ---- images
@app.command("create")
def images_create(name: str,
                  address: str = typer.Option(..., "--address", help="Registry address, e.g. "
                                              "registry.example.com/team/custom-training:v1."),
                  kind: str = typer.Option("training", "--kind", help="notebook or training."),
                  account: Optional[str] = typer.Option(None, "--account", help="The registry account pods pull "
                                                        "it with (required for a registry that has accounts)."),
                  description: str = typer.Option("", help="Shown in lists."), as_json: bool = JSON) -> None:
    """Register an image under a name that specs give as `image: NAME`."""
    emit(_row(guard(lambda: act("images_create", name=name, address=address, kind=kind, account=account,
                                description=description))), as_json)


@app.command("list")
def images_list(kind: Optional[str] = typer.Option(None, "--kind", help="Only notebook or training images."),
                as_json: bool = JSON) -> None:
    """Registered images."""
    rows = [_row(i) for i in guard(lambda: ask("images_list", kind=kind))]
    emit(rows, as_json, IMAGE_COLUMNS, empty="no images yet: `mlyard images create NAME --address REGISTRY/REPO:TAG`")


@app.command("show")
def images_show(name: str, as_json: bool = JSON) -> None:
    """One image, with its registry and the pull Secret its pods name."""
    emit(_row(guard(lambda: ask("images_show", name=name))), as_json)


@app.command("update")
def images_update(name: str, new_name: Optional[str] = typer.Option(None, "--name", help="A new name."),
                  description: Optional[str] = typer.Option(None, help="A new description."),
                  as_json: bool = JSON) -> None:
    """Rename or describe an image (a new address or account is a new image)."""
    emit(_row(guard(lambda: act("images_update", name=name, new_name=new_name, description=description))), as_json)


@app.command("delete")
def images_delete(name: str) -> None:
    """Delete an image that no unfinished run, endpoint, notebook or template uses."""
    guard(lambda: act("images_delete", name=name))
    out.print(f"deleted image {name}")


# ---- registry accounts
@accounts_app.command("create")
def accounts_create(name: str,
                    registry: str = typer.Option(..., "--registry", help="Registry host, e.g. registry.example.com."),
                    username: str = typer.Option(..., "--username", help="Registry user (an access key for NCR)."),
                    password_stdin: bool = PASSWORD_STDIN,
                    description: str = typer.Option("", help="Shown in lists."), as_json: bool = JSON) -> None:
    """Save a registry login; its password becomes a Secret (a private file here, a
    kubernetes.io/dockerconfigjson Secret on a cluster)."""
    emit(_row(guard(lambda: act("accounts_create", name=name, registry=registry, username=username,
                                password=_password(password_stdin), description=description))), as_json)


@accounts_app.command("list")
def accounts_list(as_json: bool = JSON) -> None:
    """Registry accounts and the images that use each (never a password)."""
    rows = [_row(a) for a in guard(lambda: ask("accounts_list"))]
    emit(rows, as_json, ACCOUNT_COLUMNS,
         empty="no registry accounts yet: `mlyard registry-accounts create NAME --registry HOST --username USER`")


@accounts_app.command("show")
def accounts_show(name: str, as_json: bool = JSON) -> None:
    """One account (never its password)."""
    emit(_row(guard(lambda: ask("accounts_show", name=name))), as_json)


@accounts_app.command("update")
def accounts_update(name: str, new_name: Optional[str] = typer.Option(None, "--name", help="A new name."),
                    description: Optional[str] = typer.Option(None, help="A new description."),
                    username: Optional[str] = typer.Option(None, "--username", help="A new user (asks for the "
                                                           "password too)."),
                    password: bool = typer.Option(False, "--password", help="Change the password (hidden prompt, "
                                                  "or stdin with --password-stdin)."),
                    password_stdin: bool = PASSWORD_STDIN, as_json: bool = JSON) -> None:
    """Rename or describe an account, or change its login: a new user or password re-makes its Secret,
    so pods started from then on pull with it (running ones keep the image they pulled)."""
    def go():
        relogin = username is not None or password or password_stdin
        secret = _password(password_stdin) if relogin else None
        return act("accounts_update", name=name, new_name=new_name, description=description, username=username,
                   password=secret)

    emit(_row(guard(go)), as_json)


@accounts_app.command("delete")
def accounts_delete(name: str) -> None:
    """Delete an account that no image uses (delete those images first); its Secret goes with it."""
    guard(lambda: act("accounts_delete", name=name))
    out.print(f"deleted registry account {name}")
