"""A model version's parameters as the model server receives them: as arguments under the names as
given, and as environment variables in SCREAMING_SNAKE_CASE (`maxLength`, `max-length` and
`max_length` all become MAX_LENGTH)."""

from __future__ import annotations

import re
from typing import Mapping

from mlyard.errors import SpecError

_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z]|\d|\b|_)|[A-Z]?[a-z]+|[A-Z]+|\d+")


def env_name(name: str) -> str:
    """`maxLength` -> MAX_LENGTH, `batch-size` -> BATCH_SIZE, `HTTPTimeout` -> HTTP_TIMEOUT."""
    return "_".join(w.upper() for w in _WORD.findall(name))


def environ(parameters: Mapping[str, object]) -> dict[str, str]:
    """The parameters as environment variables."""
    return {env_name(k): str(v) for k, v in parameters.items() if env_name(k)}


def arguments(parameters: Mapping[str, object]) -> list[str]:
    """The parameters as `--name value` arguments, names as given."""
    out: list[str] = []
    for k, v in parameters.items():
        out += [f"--{k}", str(v)]
    return out


def parse(pairs: list[str], field: str = "--param") -> dict[str, str]:
    """`NAME=VALUE` strings (from the command line) as parameters."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name.strip() or not env_name(name):
            raise SpecError(field, pair, "NAME=VALUE with a name of letters, digits, '-' or '_'")
        out[name.strip()] = value
    return out
