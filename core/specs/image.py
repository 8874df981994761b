"""Images and registry accounts (the seed's private images): what a Kubernetes pod of a training, tuning,
endpoint or notebook runs, and the login its node pulls it with.

```yaml
# mlyard registry-accounts create team-ncr --registry example-kr1-registry.container.nhncloud.com \
#     --username ACCESS_KEY --password-stdin
# mlyard images create custom-training --address \
#     example-kr1-registry.container.nhncloud.com/registry/custom-training:v1 --kind training --account team-ncr
```

Pure: an image address is parsed with the grammar of the distribution project's `reference` package
(registry host, repository path, tag, digest), so a bad address is refused before anything is stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import ConfigDict, Field, SecretStr, field_validator

from mlyard.core.errors import SpecError
from mlyard.core.specs.common import NAME_PATTERN, SpecModel

ImageKind = Literal["notebook", "training"]
DOCKER_HUB = "docker.io"

# distribution/reference's grammar (reference/regexp.go), without its legacy corners
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:localhost|{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})+|\[[0-9a-fA-F:]+\])(?::[0-9]{{1,5}})?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
                        rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$")
REGISTRY = re.compile(rf"^{_DOMAIN}$")


@dataclass(frozen=True)
class ImageAddress:
    """A parsed image address: `registry` is the host (docker.io when the address names none)."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None


def parse_image(address: str, field: str = "address") -> ImageAddress:
    """The parts of an image address, or a SpecError naming `field` and the expected form."""
    match = _REFERENCE.match(address) if len(address) <= 512 else None
    if match is None:
        raise SpecError(field, address, "an image address such as registry.example.com/team/train:1.0 (lowercase "
                        "repository path, optional :tag and @sha256:digest)")
    domain = match["domain"]
    path = match["path"]
    if domain is None:  # `ubuntu`, `library/ubuntu`: Docker Hub
        domain = DOCKER_HUB
        path = path if "/" in path else f"library/{path}"
    return ImageAddress(domain.lower(), path, match["tag"], match["digest"])


def is_image_name(value: str) -> bool:
    """Whether `value` reads as an image's catalog name rather than an address: no registry, no tag.
    A name shadows a Docker Hub official image of the same name (`ubuntu`); write `docker.io/ubuntu`."""
    return re.match(NAME_PATTERN, value) is not None


class RegistryAccountSpec(SpecModel):
    """A login to a container registry. The password is kept as a Secret and never printed."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Account name: lowercase letters, digits and '-'.")
    description: str = Field(default="", max_length=255)
    registry: str = Field(max_length=253, description="Registry host (and port), e.g. registry.example.com:5000.")
    username: str = Field(min_length=1, max_length=255, description="Registry user (an access key for NCR).")
    password: SecretStr = Field(description="Registry password (a secret key for NCR); never printed.")

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str) -> str:
        value = value.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
        if not REGISTRY.match(value):
            raise ValueError("a registry host such as registry.example.com or localhost:5000 (no path)")
        return value.lower()

    @field_validator("password")
    @classmethod
    def _password(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("a password (empty is not allowed)")
        return value


class ImageSpec(SpecModel):
    """A private image pods run: its address, whether notebooks or trainings use it, and the registry
    account its pods pull it with (none: a public image)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Image name: lowercase letters, digits and '-'.")
    description: str = Field(default="", max_length=255)
    address: str = Field(description="Registry address, e.g. registry.example.com/team/custom-training:v1.")
    kind: ImageKind = Field(default="training", description="notebook or training (trainings, tunings, "
                            "batch inference and endpoints).")
    account: str | None = Field(default=None, pattern=NAME_PATTERN,
                                description="The registry account pods pull it with; none for a public image.")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            parse_image(value)
        except SpecError as exc:
            raise ValueError(exc.expected) from None
        return value
