"""Backend.AI model folders: `model-definition.yaml|yml` (or a named file) and an optional
`service-definition.toml`, read with the semantics Backend.AI gives them.

- `command` is a string, run by the shell that `shell` names (default /bin/bash, `shell -c`: pipes,
  `&&`, `cd` and `$VAR` work), or a list, run as argv; `port` is where it listens. Files that name it
  `start_command` (its deprecated name) still run; `command` wins when both are there, as current
  Backend.AI runs it (reported either way).
- Keys of Backend.AI's own schema that mlyard does not use (a model's older `info` block, `metadata`'s
  own keys) are kept and reported, not refused; a key the schema does not know is refused.
- `pre_start_actions` run in order before it: write_file, write_tempfile, run_command, mkdir, log.
- `health_check`: only when the block exists are its defaults applied (interval 10, max_retries 10,
  max_wait_time 15, expected_status_code 200, initial_delay 60; `path` is required in it).
- `service-definition.toml` has one section per runtime variant: `[variant.environment]` (image,
  architecture), `[variant.resource_slots]`, `[variant.environ]` (environment variables).
- `model_path` is where the folder is mounted in a container; run here, the folder itself is that
  path: arguments that start with it are rewritten to the folder.

Everything is checked before anything starts: a bad file is refused naming the file, the key and the value.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mlyard.core.errors import SpecError

DEFINITION_NAMES = ("model-definition.yaml", "model-definition.yml")
SERVICE_DEFINITION = "service-definition.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HealthCheck(_Strict):
    path: str = Field(description="HTTP path probed with GET, e.g. /health.")
    interval: float = Field(10.0, gt=0, description="Seconds between probes.")
    max_retries: int = Field(10, ge=0, description="Consecutive failures tolerated before UNHEALTHY.")
    max_wait_time: float = Field(15.0, gt=0, description="Timeout of one probe, in seconds.")
    expected_status_code: int = Field(200, ge=100, le=599, description="The status a healthy service answers.")
    initial_delay: float = Field(60.0, ge=0, description="Seconds after start before the first probe (DEGRADED).")

    @field_validator("path")
    @classmethod
    def _slash(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("a path starting with /, e.g. /health")
        return v


class WriteFileArgs(_Strict):
    filename: str
    body: str = ""
    mode: str | int = "644"
    append: bool = False


class WriteTempfileArgs(_Strict):
    body: str = ""
    mode: str | int = "644"


class RunCommandArgs(_Strict):
    command: list[str] = Field(min_length=1)


class MkdirArgs(_Strict):
    path: str


class LogArgs(_Strict):
    message: str
    debug: bool = False


_ARGS: dict[str, type[BaseModel]] = {"write_file": WriteFileArgs, "write_tempfile": WriteTempfileArgs, "run_command": RunCommandArgs,
         "mkdir": MkdirArgs, "log": LogArgs}


class Action(_Strict):
    action: Literal["write_file", "write_tempfile", "run_command", "mkdir", "log"]
    args: dict[str, Any] = Field(default_factory=dict)

    def parsed(self) -> BaseModel:
        return _ARGS[self.action].model_validate(self.args)


class Service(_Strict):
    command: Union[str, list[str], None] = None
    start_command: Union[str, list[str], None] = Field(default=None, description="The deprecated name of command.")
    port: int = Field(ge=1, le=65535)
    pre_start_actions: list[Action] = Field(default_factory=list)
    health_check: HealthCheck | None = None
    shell: str = Field(default="/bin/bash", min_length=1, description="Runs a command given as a string.")

    @property
    def command_line(self) -> Union[str, list[str], None]:
        """What runs: command, else the deprecated `start_command`."""
        return self.command if self.command is not None else self.start_command

    def argv(self) -> list[str]:
        line = self.command_line
        if line is None:
            raise ValueError("command is missing")
        if isinstance(line, str):
            if not line.strip():
                raise ValueError("command is empty")
            return [self.shell, "-c", line]
        if not line:
            raise ValueError("command is empty")
        return list(line)


class ModelEntry(_Strict):
    name: str = Field(min_length=1)
    model_path: str = Field(min_length=1)
    service: Service | None = None
    metadata: dict[str, Any] | None = None
    info: dict[str, Any] | None = Field(default=None, description="Older files' model information: kept, not used.")


class ModelDefinition(_Strict):
    models: list[ModelEntry] = Field(min_length=1)


class RuntimeVariant(BaseModel):
    """One `[variant.*]` group of service-definition.toml."""

    image: str | None = None
    architecture: str | None = None
    resource_slots: dict[str, Any] = Field(default_factory=dict)
    environ: dict[str, str] = Field(default_factory=dict)


class ModelFolder(BaseModel):
    """A model folder ready to run: the model to serve, its service, and the chosen runtime variant."""

    folder: Path
    definition_file: Path
    model: ModelEntry
    service: Service
    variant: RuntimeVariant | None = None
    notes: list[str] = Field(default_factory=list, description="What was read but not used, and why.")

    def local(self, value: str) -> str:
        """`value` with the container's model_path replaced by the folder (a path under it, or itself)."""
        root = self.model.model_path.rstrip("/") or "/"
        if value == root or value.startswith(root + "/"):
            return str(self.folder) + value[len(root):]
        return value

    def local_text(self, text: str) -> str:
        """A shell command line with every path under model_path (a word of its own) pointing at the folder."""
        root = self.model.model_path.rstrip("/")
        if not root:
            return text
        return re.sub(rf"(?<![\w/.-]){re.escape(root)}(?=/|$|[\s'\";&|)<>])", lambda _: str(self.folder), text)

    def argv(self) -> list[str]:
        argv = self.service.argv()
        if isinstance(self.service.command_line, str):  # [shell, -c, line]
            return [*argv[:2], self.local_text(argv[2])]
        return [self.local(a) for a in argv]

    def on_port(self, port: int) -> "ModelFolder":
        """The folder with its service moved to `port`, as a container's port is mapped: arguments that
        are the definition's port (`8000`, `:8000`, `--port=8000`) name the new one, and PORT is set.
        Several replicas of one folder run side by side on one machine this way."""
        old = str(self.service.port)

        def moved(arg: str) -> str:
            if arg == old:
                return str(port)
            for sep in (":", "="):
                if arg.endswith(sep + old):
                    return arg[:-len(old)] + str(port)
            return arg

        line = self.service.command_line
        if isinstance(line, str):  # the port as a word of the shell line
            command: Union[str, list[str]] = re.sub(rf"(?<![\w.]){old}(?![\w.])", str(port), line)
        else:
            command = [moved(a) for a in self.service.argv()]
        service = self.service.model_copy(update={"command": command, "start_command": None, "port": port})
        variant = self.variant.model_copy(update={"environ": {**self.variant.environ, "PORT": str(port)}}) \
            if self.variant else RuntimeVariant(environ={"PORT": str(port)})
        return self.model_copy(update={"service": service, "variant": variant})


def load(folder: Path | str, definition: str | None = None, variant: str | None = None,
         model: str | None = None) -> ModelFolder:
    """Read and check a model folder; SpecError names the file, the key and the value."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise SpecError("model folder", str(folder), "a directory holding model-definition.yaml")
    if definition:
        file = folder / definition
        if not file.is_file():
            raise SpecError("model definition", definition, f"a file inside {folder}")
    else:
        found = [folder / n for n in DEFINITION_NAMES if (folder / n).is_file()]
        if not found:
            raise SpecError("model folder", str(folder), f"a folder holding {' or '.join(DEFINITION_NAMES)}")
        file = found[0]
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(file.name, "the file", f"valid YAML ({str(exc).splitlines()[0]})") from None
    parsed = _validated(ModelDefinition, raw, file.name)
    entries = [m for m in parsed.models if m.service is not None]
    if model is not None:
        entries = [m for m in parsed.models if m.name == model]
        if not entries:
            raise SpecError(f"{file.name}: models", model, f"one of {', '.join(m.name for m in parsed.models)}")
    if not entries or entries[0].service is None:
        raise SpecError(f"{file.name}: models[].service", None, "a model with a service (command and port)")
    entry = entries[0]
    assert entry.service is not None
    index = parsed.models.index(entry)
    try:
        entry.service.argv()
    except ValueError as exc:
        raise SpecError(f"{file.name}: models[{index}].service.command", entry.service.command_line,
                        f"a command to run ({exc})") from None
    notes = []
    if entry.info is not None:
        notes.append(f"{file.name}: models[{index}].info is kept and not used (older files carry it; "
                     "Backend.AI reads metadata)")
    if entry.service.start_command is not None:
        notes.append(f"{file.name}: models[{index}].service.start_command " + (
            "is not used: command takes precedence" if entry.service.command is not None
            else "runs as the command (start_command is its deprecated name)"))
    for i, action in enumerate(entry.service.pre_start_actions):
        try:
            action.parsed()
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise SpecError(f"{file.name}: models[{index}].service.pre_start_actions[{i}].args.{key}",
                            err.get("input"), f"{err['msg']} (action {action.action})") from None
    return ModelFolder(folder=folder, definition_file=file, model=entry, service=entry.service,
                       variant=load_section(folder, variant), notes=notes)


def load_section(folder: Path, name: str | None, required: bool = True) -> RuntimeVariant | None:
    """The `[name.*]` section of the folder's service-definition.toml (its first without a name); with
    `required` False, None when the file or the section is not there (a runtime variant's is optional)."""
    file = folder / SERVICE_DEFINITION
    if not file.is_file():
        if name and required:
            raise SpecError("runtime variant", name, f"a [{name}.*] section in {SERVICE_DEFINITION}; the folder has none")
        return None
    try:
        doc = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(SERVICE_DEFINITION, "the file", f"valid TOML ({exc})") from None
    if not doc:
        return None
    chosen = name or next(iter(doc))
    if chosen not in doc and not required:
        return None
    if chosen not in doc or not isinstance(doc[chosen], dict):
        raise SpecError("runtime variant", chosen, f"one of the sections of {SERVICE_DEFINITION}: {', '.join(doc)}")
    section = doc[chosen]
    unknown = set(section) - {"environment", "resource_slots", "environ"}
    if unknown:
        key = sorted(unknown)[0]
        raise SpecError(f"{SERVICE_DEFINITION}: [{chosen}.{key}]", section[key], "environment, resource_slots or environ")
    env = section.get("environment", {})
    if env:
        for key in ("image", "architecture"):
            if key not in env:
                raise SpecError(f"{SERVICE_DEFINITION}: [{chosen}.environment].{key}", None,
                                "a value (it is required in the environment section)")
    environ = section.get("environ", {})
    bad = [k for k, v in environ.items() if isinstance(v, (dict, list))]
    if bad:
        raise SpecError(f"{SERVICE_DEFINITION}: [{chosen}.environ].{bad[0]}", environ[bad[0]], "a string, number or boolean")
    return RuntimeVariant(image=env.get("image"), architecture=env.get("architecture"),
                          resource_slots=section.get("resource_slots", {}),
                          environ={k: str(v) for k, v in environ.items()})


def _validated(model: type[BaseModel], raw: Any, file: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        # union members add their type to the location: keep the user's keys only
        key = key.replace(".str", "").replace(".list[str]", "")
        raise SpecError(f"{file}: {key or 'the file'}", err.get("input"), err["msg"]) from None
