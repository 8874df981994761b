"""Images and registry accounts in the catalog, with the seed's rules:

- an account's password is kept as a Secret (`Credentials`), never in the catalog and never printed;
  changing the user or password re-makes the Secret, changing the name or description does not;
- an account that images use cannot be deleted, nor an image that trainings, tunings, endpoints,
  notebooks or templates use (the error names them);
- an image in a registry that has accounts names one of them (a private image needs its login), and
  the account's registry is the image's.

Where the Secret lives is the caller's choice: `FileCredentials` (a private file per account on one
machine) here, a `kubernetes.io/dockerconfigjson` Secret on a cluster (tasks/registry_secrets.py).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Protocol

from sqlalchemy import select
from sqlalchemy import true as sa_true
from sqlalchemy.exc import IntegrityError

from mlyard.core.errors import AlreadyExists, ImageNotFound, InUse, RegistryAccountNotFound, SpecError
from mlyard.core.specs import load_spec
from mlyard.core.specs.image import ImageSpec, RegistryAccountSpec, is_image_name, parse_image
from mlyard.registry.catalog import Catalog
from mlyard.registry.tables import Image, RegistryAccount, TrainingTemplate, utcnow

SECRET_PREFIX = "mlyard-registry-"


def dockerconfigjson(registry: str, username: str, password: str) -> str:
    """The `.dockerconfigjson` a kubelet (or `docker login`) reads for one registry."""
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    return json.dumps({"auths": {registry: {"username": username, "password": password, "auth": auth}}})


class Credentials(Protocol):
    """Where registry passwords live. `put` makes the Secret (`replace`: delete it first, so that pods
    started from now on use the new login), `delete` removes it (absent is fine)."""

    def put(self, secret_name: str, config_json: str, *, replace: bool) -> None: ...

    def delete(self, secret_name: str) -> None: ...


class FileCredentials:
    """One machine: each Secret is a file `<dir>/<secret_name>.dockerconfigjson`, readable by its owner
    only (the directory too), written whole or not at all."""

    def __init__(self, directory: Path):
        self.directory = directory

    def path(self, secret_name: str) -> Path:
        return self.directory / f"{secret_name}.dockerconfigjson"

    def put(self, secret_name: str, config_json: str, *, replace: bool) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")  # mkstemp: mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(config_json)
            os.replace(tmp, self.path(secret_name))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read(self, secret_name: str) -> str | None:
        p = self.path(secret_name)
        return p.read_text() if p.exists() else None

    def delete(self, secret_name: str) -> None:
        self.path(secret_name).unlink(missing_ok=True)


@dataclass(frozen=True)
class AccountInfo:
    name: str
    description: str
    registry: str
    username: str
    secret_name: str
    credentials_version: int
    images: list[str]
    created_at: datetime
    updated_at: datetime
    project: str = "default"

    def as_dict(self) -> dict[str, Any]:  # never the password
        return {"name": self.name, "project": self.project, "description": self.description, "registry": self.registry,
                "username": self.username, "secret": self.secret_name,
                "credentials_version": self.credentials_version, "images": self.images,
                "created_at": self.created_at.isoformat(), "updated_at": self.updated_at.isoformat()}


@dataclass(frozen=True)
class ImageInfo:
    name: str
    description: str
    address: str
    kind: str
    account: str | None
    registry: str
    pull_secret: str | None
    created_at: datetime
    project: str = "default"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "project": self.project, "description": self.description, "address": self.address, "kind": self.kind,
                "account": self.account, "registry": self.registry, "pull_secret": self.pull_secret,
                "created_at": self.created_at.isoformat()}


@dataclass(frozen=True)
class ResolvedImage:
    """What a pod runs for a spec's `image`: the address and the pull Secret (None: a public image)."""

    address: str
    pull_secret: str | None
    image: str | None  # the catalog name when the spec named a registered image


class Images:
    def __init__(self, catalog: Catalog, credentials: Credentials):
        self.catalog = catalog
        self.credentials = credentials

    # ---- registry accounts
    def create_account(self, spec: RegistryAccountSpec, project: str = "default") -> AccountInfo:
        """Record the account (of `project`) and make its Secret, in one step: a failure leaves neither."""
        try:
            with self.catalog.session() as s:
                row = RegistryAccount(name=spec.name, description=spec.description, registry_host=spec.registry,
                                      username=spec.username, secret_name=f"{SECRET_PREFIX}pending-{spec.name}",
                                      project=project)
                s.add(row)
                s.flush()
                row.secret_name = f"{SECRET_PREFIX}{row.id}"
                self.credentials.put(row.secret_name, dockerconfigjson(
                    spec.registry, spec.username, spec.password.get_secret_value()), replace=True)
                return _account(row, [])
        except IntegrityError as exc:
            raise AlreadyExists("registry account", spec.name) from exc

    def update_account(self, name: str, *, new_name: str | None = None, description: str | None = None,
                       username: str | None = None, password: str | None = None) -> AccountInfo:
        """Rename, describe, or change the login. A new user or password re-makes the Secret (pods started
        from then on pull with it); a name or description change leaves the Secret as it is."""
        with self.catalog.session() as s:
            row = self._account_row(s, name)
            changed = load_spec(RegistryAccountSpec, {  # the fields' rules, on what the account becomes
                "name": new_name or row.name, "description": row.description if description is None else description,
                "registry": row.registry_host, "username": username or row.username,
                "password": password or "unchanged"}, source="registry account")
            relogin = (username is not None and username != row.username) or password is not None
            if relogin and password is None:
                raise SpecError("password", None, "the password too when the user changes (--password-stdin)")
            if new_name and new_name != row.name and s.scalar(
                    select(RegistryAccount.id).where(RegistryAccount.name == new_name)) is not None:
                raise AlreadyExists("registry account", new_name)
            row.name, row.description, row.username = changed.name, changed.description, changed.username
            if relogin:
                assert password is not None
                row.credentials_version += 1
                self.credentials.put(row.secret_name, dockerconfigjson(row.registry_host, changed.username, password),
                                     replace=True)
            row.updated_at = utcnow()
            s.flush()
            return _account(row, self._images_of(s, row.id))

    def delete_account(self, name: str) -> None:
        with self.catalog.session() as s:
            row = self._account_row(s, name)
            images = self._images_of(s, row.id)
            if images:
                raise InUse("registry account", name, [f"image {i}" for i in images],
                            "delete those images first (`mlyard images delete NAME`), then the account.")
            secret = row.secret_name
            s.delete(row)
        self.credentials.delete(secret)

    def list_accounts(self, projects: list[str] | None = None) -> list[AccountInfo]:
        """Every account, or those of `projects`."""
        q = select(RegistryAccount).order_by(RegistryAccount.name)
        if projects is not None:
            q = q.where(RegistryAccount.project.in_(projects))
        with self.catalog.session() as s:
            return [_account(r, self._images_of(s, r.id)) for r in s.scalars(q)]

    def get_account(self, name: str) -> AccountInfo:
        with self.catalog.session() as s:
            row = self._account_row(s, name)
            return _account(row, self._images_of(s, row.id))

    # ---- images
    def create_image(self, spec: ImageSpec, project: str = "default") -> ImageInfo:
        """Record an image of `project` after checking its account: it exists in the same project (another
        project's login is not this one's to use), its registry is the image's, and an image in a registry
        that has accounts names one."""
        registry = parse_image(spec.address).registry
        try:
            with self.catalog.session() as s:
                account = self._account_row(s, spec.account) if spec.account else None
                if account is not None and account.project != project:
                    raise RegistryAccountNotFound(spec.account or "")
                if account is not None and account.registry_host != registry:
                    raise SpecError("account", spec.account, f"an account of the image's registry {registry} "
                                    f"(account {account.name!r} logs in to {account.registry_host})")
                if account is None:
                    private = self._accounts_for(s, registry)
                    if private:
                        raise SpecError("account", None, f"one of {', '.join(private)}: registry {registry} is "
                                        "private (it has accounts), so its images need one (--account)")
                row = Image(name=spec.name, description=spec.description, address=spec.address, kind=spec.kind,
                            account_id=account.id if account else None, project=project)
                s.add(row)
                s.flush()
                return _image(row)
        except IntegrityError as exc:
            raise AlreadyExists("image", spec.name) from exc

    def update_image(self, name: str, *, new_name: str | None = None, description: str | None = None) -> ImageInfo:
        """Rename or describe an image (its address, kind and account are what runs: make a new image)."""
        with self.catalog.session() as s:
            row = self._image_row(s, name)
            if new_name and new_name != row.name:
                load_spec(ImageSpec, {"name": new_name, "address": row.address}, source="image")  # the name's rules
                if s.scalar(select(Image.id).where(Image.name == new_name)) is not None:
                    raise AlreadyExists("image", new_name)
                row.name = new_name
            if description is not None:
                row.description = description
            s.flush()
            return _image(row)

    def delete_image(self, name: str, users: Callable[[ImageInfo], list[str]] = lambda _: []) -> None:
        """Delete an image nothing uses: templates here, plus what `users` finds (runs, endpoints, notebooks)."""
        info = self.get_image(name)
        used = self.template_users(info) + users(info)
        if used:
            raise InUse("image", name, used, "delete or finish those first, then the image.")
        with self.catalog.session() as s:
            s.delete(self._image_row(s, name))

    def list_images(self, kind: str | None = None, projects: list[str] | None = None) -> list[ImageInfo]:
        """Every image (of `kind`), or those of `projects`."""
        with self.catalog.session() as s:
            q = select(Image).order_by(Image.name)
            if kind:
                q = q.where(Image.kind == kind)
            if projects is not None:
                q = q.where(Image.project.in_(projects))
            return [_image(r) for r in s.scalars(q)]

    def get_image(self, name: str) -> ImageInfo:
        with self.catalog.session() as s:
            return _image(self._image_row(s, name))

    def template_users(self, info: ImageInfo) -> list[str]:
        with self.catalog.session() as s:
            return [f"template {t.name}" for t in s.scalars(select(TrainingTemplate).order_by(TrainingTemplate.name))
                    if uses(t.spec.get("image"), info)]

    def resolve(self, ref: str, field: str = "image", project: str | None = None) -> ResolvedImage:
        """What a spec's `image` means: a registered image's name (its address and pull Secret), or an
        address. An address in a registry that has accounts must be registered (`mlyard images create`):
        its pods need the account's login. With `project` (a member's run), only that project's images
        count: another project's does not exist, and its login is never borrowed."""
        with self.catalog.session() as s:
            mine = (Image.project == project) if project is not None else sa_true()
            if is_image_name(ref):
                row = s.scalar(select(Image).where(Image.name == ref, mine))
                if row is None:
                    raise ImageNotFound(ref)
                return ResolvedImage(row.address, row.account.secret_name if row.account else None, row.name)
            registry = parse_image(ref, field).registry
            row = s.scalars(select(Image).where(Image.address == ref, mine).order_by(Image.account_id.is_(None))).first()
            if row is not None:
                return ResolvedImage(row.address, row.account.secret_name if row.account else None, row.name)
            private = self._accounts_for(s, registry)
            if private and project is not None:  # another project's accounts are not named to this one
                raise SpecError(field, ref, f"a registered image of your project: registry {registry} is private; "
                                "register your account of it and the image (`mlyard registry-accounts create`, "
                                f"`mlyard images create NAME --address {ref} --account ACCOUNT`), then name the image")
            if private:
                raise SpecError(field, ref, f"a registered image: registry {registry} is private (accounts: "
                                f"{', '.join(private)}); `mlyard images create NAME --address {ref} --account "
                                f"{private[0]}`, then name the image")
            return ResolvedImage(ref, None, None)

    # ---- rows
    @staticmethod
    def _account_row(s, name: str) -> RegistryAccount:
        row = s.scalar(select(RegistryAccount).where(RegistryAccount.name == name))
        if row is None:
            raise RegistryAccountNotFound(name)
        return row

    @staticmethod
    def _image_row(s, name: str) -> Image:
        row = s.scalar(select(Image).where(Image.name == name))
        if row is None:
            raise ImageNotFound(name)
        return row

    @staticmethod
    def _images_of(s, account_id: int) -> list[str]:
        return list(s.scalars(select(Image.name).where(Image.account_id == account_id).order_by(Image.name)))

    @staticmethod
    def _accounts_for(s, registry: str) -> list[str]:
        return list(s.scalars(select(RegistryAccount.name).where(RegistryAccount.registry_host == registry)
                              .order_by(RegistryAccount.name)))


def uses(ref: str | None, info: ImageInfo) -> bool:
    """Whether a spec's `image` value refers to the image (by name or by address)."""
    return bool(ref) and ref in (info.name, info.address)


def _account(row: RegistryAccount, images: list[str]) -> AccountInfo:
    return AccountInfo(row.name, row.description, row.registry_host, row.username, row.secret_name,
                       row.credentials_version, images, row.created_at, row.updated_at, row.project or "default")


def _image(row: Image) -> ImageInfo:
    account = row.account
    return ImageInfo(row.name, row.description, row.address, row.kind, account.name if account else None,
                     parse_image(row.address).registry, account.secret_name if account else None, row.created_at,
                     row.project or "default")
