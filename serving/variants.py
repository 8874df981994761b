"""A model folder as a runtime variant runs it (core/runtimes.py gives each variant's definition, as
Backend.AI's source does): no model-definition file; the folder's `service-definition.toml` section of the
variant adds the image, resource slots and environment; the stage's own `args` (extra engine flags; for
cmd and nim, the command itself, as container arguments replace an image's command) and `environ` come
last. On one machine the engine's command must be on PATH; the folder stands for /models.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from mlyard.core.errors import SpecError
from mlyard.core.runtimes import MOUNT, VARIANTS, Variant
from mlyard.serving.modelfolder import HealthCheck, ModelEntry, ModelFolder, RuntimeVariant, Service, load, load_section

NAMES = (*VARIANTS, "custom")


def folder_of(folder: Path | str, variant: str | None = None, definition: str | None = None,
              args: Sequence[str] = (), environ: dict[str, str] | None = None) -> ModelFolder:
    """The model folder as `variant` runs it (None or custom: its model-definition), with the stage's extra
    `args` and `environ`; SpecError names what is wrong before anything starts."""
    if variant is None or variant not in VARIANTS:  # custom, or a section of service-definition.toml by name
        mf = load(folder, definition, None if variant == "custom" and not _has_section(folder, "custom") else variant)
        return _with_stage(mf, list(args), environ or {})
    v = VARIANTS[variant]
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise SpecError("model folder", str(folder), f"a directory holding the model the {variant} engine serves")
    if v.command:
        filled = {"model": MOUNT, "port": str(v.port), "host": "127.0.0.1",  # on one machine: this machine alone
                  "gguf": _gguf(folder) if "{model}/{gguf}" in v.command else ""}
        command = [part.format(**filled) for part in v.command] + list(args)
    elif args:
        command = list(args)
    else:
        raise SpecError("runtime.args", None, f"the command to run: the {variant} variant runs its image's own "
                        "command, which a cluster's pod takes from the image; here give it as the stage's args "
                        "(mlyard serve --engine-arg ...)")
    section = load_section(folder, variant, required=False) or RuntimeVariant()
    service = Service(command=command, port=v.port, health_check=_health_check(v))
    notes = [f"runtime {variant}: Backend.AI's default definition (port {v.port}, health "
             f"{v.health or 'none'}); the folder's model-definition is not used"]
    mf = ModelFolder(folder=folder, definition_file=folder, model=ModelEntry(name=v.model_name, model_path=MOUNT,
                                                                              service=service),
                     service=service, variant=section, notes=notes)
    return _with_stage(mf, [], environ or {})


def engine_problem(mf: ModelFolder) -> str | None:
    """Why the folder's engine cannot run on this machine (its command is not on PATH), or None."""
    argv = mf.argv()
    if argv and (argv[0].startswith("/") and Path(argv[0]).exists() or shutil.which(argv[0])):
        if argv[:3] == ["python3", "-m", "sglang.launch_server"]:  # that python3's sglang, not mlyard's
            import subprocess

            found = subprocess.run([argv[0], "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec("
                                    "'sglang') is None)"], capture_output=True, timeout=60).returncode == 0
            return None if found else "python3 -m sglang.launch_server (python3 with sglang installed)"
        return None
    return argv[0] if argv else "a command"


def _with_stage(mf: ModelFolder, args: list[str], environ: dict[str, str]) -> ModelFolder:
    """The stage's extra engine flags after the command, its environment over the folder's."""
    service = mf.service
    if args:
        line = service.command_line
        command = f"{line} {' '.join(_quoted(a) for a in args)}" if isinstance(line, str) else [*(line or []), *args]
        service = service.model_copy(update={"command": command, "start_command": None})
    section = mf.variant or RuntimeVariant()
    if environ:
        section = section.model_copy(update={"environ": {**section.environ, **environ}})
    return mf.model_copy(update={"service": service, "variant": section if (mf.variant or environ) else None})


def _quoted(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _gguf(folder: Path) -> str:
    found = sorted(p.name for p in folder.glob("*.gguf"))
    if len(found) != 1:
        raise SpecError("model folder", str(folder), f"exactly one .gguf file for llama-server (found {len(found)})")
    return found[0]


def _has_section(folder: Path | str, name: str) -> bool:
    return load_section(Path(folder), name, required=False) is not None


def _health_check(v: Variant) -> HealthCheck | None:
    if v.health is None:
        return None
    given = {"path": v.health, "interval": v.interval, "max_retries": v.max_retries}
    return HealthCheck.model_validate(given if v.initial_delay is None else {**given, "initial_delay": v.initial_delay})
