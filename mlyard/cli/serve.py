"""`mlyard serve`: run a model server in the foreground."""

from __future__ import annotations

import errno
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from mlyard.cli.common import ask, err, guard
from mlyard.core.errors import MlyardError, SpecError


def serve(
    model: Optional[str] = typer.Argument(None, help="A registered model (name@alias, name/version, models:/...), "
                                          "runs:/..., or a directory holding an MLflow model or a scikit-learn "
                                          ".joblib file."),
    entry_script: Optional[Path] = typer.Option(None, "--entry-script", help="Serve an Azure ML entry script "
                                                "(init() and run()) instead of MODEL: routes / and /score."),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="With --entry-script: the model directory "
                                             "(AZUREML_MODEL_DIR)."),
    workers: int = typer.Option(1, "--workers", help="With --entry-script: processes that run run() side by side "
                                "(each runs init() first, as Azure's workers do)."),
    conda_file: Optional[Path] = typer.Option(None, "--conda-file", help="With --entry-script: the deployment's conda "
                                              "file; its pip: list is installed into a cached environment of those "
                                              "packages alone, which the script runs in (default: conda.yaml or "
                                              "environment.yml beside the script)."),
    requirements: Optional[Path] = typer.Option(None, "--requirements", help="With --entry-script: the deployment's "
                                                "requirements.txt (default: one beside the script)."),
    python: Optional[str] = typer.Option(None, "--python", help="With --entry-script (or a registered entry script): "
                                         "the Python to run the script with, e.g. a virtual environment's "
                                         "bin/python, instead of one built from its environment file."),
    chat_model: Optional[str] = typer.Option(None, "--chat-model", help="Also (or only) serve a generative model on "
                                             "OpenAI's routes (/openai/v1/chat/completions, /openai/v1/completions): "
                                             "smollm2 (the offline default; needs the llm extra), a .gguf file, a "
                                             "transformers model directory, or a registered one (name@alias)."),
    model_folder: Optional[Path] = typer.Option(None, "--model-folder", help="Serve a Backend.AI model folder "
                                                "(model-definition.yaml): its command is supervised and proxied."),
    definition: Optional[str] = typer.Option(None, "--definition", help="With --model-folder: the model definition "
                                             "file's name (default model-definition.yaml or .yml)."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="With --model-folder (or a registered model "
                                          "folder): the runtime variant, as Backend.AI's: vllm, nim, cmd, "
                                          "huggingface-tgi, sglang, modular-max, llama-cpp (no model-definition "
                                          "needed: the engine on PATH runs the folder) or custom (the folder's "
                                          "model-definition; the default). Its service-definition.toml section "
                                          "adds the environment."),
    engine_args: list[str] = typer.Option([], "--engine-arg", help="With --runtime: an extra engine flag, after "
                                          "the variant's command (repeatable; for cmd and nim, the command itself)."),
    envs: list[str] = typer.Option([], "--env", help="With --runtime: NAME=VALUE for the engine's environment "
                                   "(repeatable; over service-definition.toml's)."),
    service_port: Optional[int] = typer.Option(None, "--service-port", help="With --model-folder: run its service on "
                                               "this port instead of the definition's (0: a free one), as a "
                                               "container's port is mapped, so several replicas run side by side."),
    port: Optional[int] = typer.Option(None, "--port", "-p", help="Port to listen on (default 8080; 5001 with "
                                       "--entry-script, as Azure's server)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for every interface)."),
    name: Optional[str] = typer.Option(None, "--name", help="The model's name in the routes (default: the registered "
                                       "model's name, else the directory's)."),
    max_batch_size: int = typer.Option(64, help="Most rows merged into one model call (adaptive batching)."),
    max_latency_ms: float = typer.Option(0.0, help="How long an idle model waits for more requests to batch "
                                         "(0: only what has already arrived)."),
    timeout_seconds: float = typer.Option(60.0, help="A model call taking longer answers 504; the server goes on."),
    max_body_mb: float = typer.Option(32.0, help="Larger request bodies answer 413."),
    compile_model: bool = typer.Option(True, "--compile/--no-compile", help="Run a scikit-learn model compiled to "
                                       "ONNX (onnxruntime) when it compiles and agrees with the estimator (labels "
                                       "equal, probabilities within 1e-6): faster starts, less memory, faster trees. "
                                       "Compiled once, then cached."),
    max_sequences: int = typer.Option(8, "--max-sequences", min=0, max=64, help="With --chat-model: answers generated "
                                      "at once, batched continuously (64 more wait, then 503); 0: one at a time."),
    cache_tokens: int = typer.Option(16384, "--cache-tokens", min=256, max=1 << 20, help="With --chat-model: the "
                                     "batch's paged cache in tokens (about 46 KB each for SmolLM2-135M)."),
    queue_seconds: float = typer.Option(30.0, "--queue-seconds", min=0.1, max=3600, help="With --chat-model: the "
                                        "longest wait for a place in the batch, then 503 with Retry-After."),
    inference_log: Optional[str] = typer.Option(None, "--inference-log", help="Write a JSON record of every "
                                                "request to this file ('-': standard output); failures are always "
                                                "recorded on standard error."),
    param: list[str] = typer.Option([], "--param", help="A model parameter NAME=VALUE (repeatable; over the "
                                    "registered version's own). The model gets it under NAME, and the process "
                                    "as an environment variable in SCREAMING_SNAKE_CASE (maxLength: MAX_LENGTH)."),
) -> None:
    """Serve a model over OIP v1 and v2 (KServe/Triton clients work) with adaptive batching, /metrics and
    statistics, or an Azure ML entry script; prints its URL and runs until Ctrl-C."""
    import os

    from mlyard.core.environment import take_replica_token
    from mlyard.core.names import param_environ

    take_replica_token()  # a replica's credential, handed in a pipe by its supervisor
    given = guard(lambda: _params(param))
    os.environ.update(param_environ(given))
    if model_folder is not None:  # 1. a Backend.AI model folder, alone
        if model is not None or entry_script is not None or chat_model is not None:
            guard(lambda: _raise(SpecError("--model-folder", str(model_folder), "alone (not with MODEL, --entry-script "
                                           "or --chat-model)")))
        return _serve_folder(guard(lambda: _folder(model_folder, runtime, definition, engine_args, envs)),
                             service_port, host, port or 8080)
    if entry_script is not None:  # 2. an Azure ML entry script, alone
        if model is not None or chat_model is not None:
            guard(lambda: _raise(SpecError("MODEL" if model else "--chat-model", model or chat_model,
                                           "nothing with --entry-script (the script loads its model)")))
        if python is not None and (conda_file or requirements):
            guard(lambda: _raise(SpecError("--python", python, "alone, or --conda-file / --requirements, not both")))
        return _serve_script(entry_script, model_dir, host, port, workers, conda_file, requirements, python)
    if model is not None and chat_model is None and _registered(model) and \
            _serve_pushed_code(model, given, (definition, runtime, engine_args, envs), service_port, host, port, workers,
                               python):
        return  # 3. a version `mlyard endpoints deploy --sync` pushed: its entry script or model folder
    if model is None and chat_model is None:
        guard(lambda: _raise(SpecError("MODEL", None, "a model reference or directory (or --entry-script FILE, "
                                       "--model-folder DIR, --chat-model smollm2)")))
    # 4. a model and/or a chat model, on the model server
    _serve_models(_Served(model, chat_model, name, given, host, port or 8080, max_batch_size, max_latency_ms, timeout_seconds,
                          max_body_mb, compile_model, inference_log, max_sequences, cache_tokens, queue_seconds))


@dataclass(frozen=True)
class _Served:
    """What the model server is asked to serve, and how (`mlyard serve`'s options for it)."""

    model: str | None
    chat_model: str | None
    name: str | None
    given: dict[str, str]  # --param
    host: str
    port: int
    max_batch_size: int
    max_latency_ms: float
    timeout_seconds: float
    max_body_mb: float
    compile_model: bool
    inference_log: str | None
    max_sequences: int = 8
    cache_tokens: int = 16384
    queue_seconds: float = 30.0


def _serve_script(entry_script: Path, model_dir: Path | None, host: str, port: int | None, workers: int,
                  conda_file: Path | None, requirements: Path | None, python: str | None) -> None:
    from mlyard.serving.azure import DEFAULT_PORT, serve_entry_script

    _listening(lambda: serve_entry_script(str(entry_script), str(model_dir) if model_dir else None, host,
                                          port or DEFAULT_PORT, workers,
                                          conda_file=str(conda_file) if conda_file else None,
                                          requirements=str(requirements) if requirements else None, python=python),
               port or DEFAULT_PORT)


def _serve_pushed_code(model: str, given: dict[str, str], how: tuple, service_port: int | None, host: str,
                       port: int | None, workers: int, python: str | None = None) -> bool:
    """Serve a registered version that holds pushed code (an entry script or a model folder), or a model
    folder run by a runtime variant (`how`: definition, runtime, engine args, environment); False for a
    model of any other kind (the model server serves it)."""
    import os

    from mlyard.core.names import param_environ
    from mlyard.serving.variants import VARIANTS
    from mlyard.tasks.replicas import CODE_KIND

    path, _, _, registered = guard(lambda: _resolve(model))
    kind = "model-folder" if how[1] in VARIANTS else registered.get(CODE_KIND)
    if kind not in ("entry-script", "model-folder"):
        return False
    os.environ.update(param_environ({**registered, **given}))
    if kind == "model-folder":
        definition, runtime, engine_args, envs = how
        _serve_folder(guard(lambda: _folder(path, runtime, definition, engine_args, envs)), service_port, host,
                      port or 8080)
        return True
    from mlyard.serving.azure import serve_entry_script

    script = path / registered.get("entry_script", "score.py")
    _listening(lambda: serve_entry_script(str(script), str(path), host, port or 8080, workers, strict=True,
                                          python=python),
               port or 8080)
    return True


def _serve_models(o: _Served) -> None:
    """The model server: the request log opened, the model resolved and checked (loaded once the server
    listens), the chat model loaded, then the server runs until Ctrl-C."""
    loaded: dict = {}
    log = guard(lambda: _open_log(o.inference_log))
    pending = guard(lambda: _pending_model(o, loaded))
    chat = guard(lambda: _load_chat(o))
    from mlyard.serving.server import run

    def ready(url: str) -> None:
        served = loaded.get("model")
        if served is not None:
            if served.runtime_note:
                print(f"runtime: {served.runtime} ({served.runtime_note})", flush=True)
            print(f"serving {served.name} (version {served.version}) on {url}  "
                  f"(v1: {url}/v1/models/{served.name}:predict  v2: {url}/v2/models/{served.name}/infer)", flush=True)
        if chat is not None:
            from mlyard.serving.chat_page import link

            print(f"serving {chat.name} on {url}  (OpenAI base URL: {url}/openai/v1)", flush=True)
            print(f"chat page: {link(url, url + '/openai/v1', chat.name)}", flush=True)
            if chat.note:
                print(f"note: {chat.note}", flush=True)

    _listening(lambda: guard(lambda: run([], chat=chat, host=o.host, port=o.port, on_ready=ready, pending=pending,
                                         max_batch_size=o.max_batch_size, max_latency_ms=o.max_latency_ms,
                                         timeout_seconds=o.timeout_seconds,
                                         max_body_bytes=int(o.max_body_mb * 1024 * 1024), inference_log=log)), o.port)


def _pending_model(o: _Served, loaded: dict):
    """The model's files, name and version, resolved and checked before anything listens; it is loaded
    (compiled when it was not at registration) once the server listens: meanwhile it answers ready false
    and 503, as KServe's servers do, rather than refusing connections. None without a model."""
    import os

    from mlyard.core.names import param_environ
    from mlyard.serving.loading import layout, to_compile
    from mlyard.serving.loading import load as load_model
    from mlyard.serving.server import Pending

    if o.max_batch_size < 1:
        raise SpecError("--max-batch-size", o.max_batch_size, "at least 1")
    if o.model is None:
        return None
    model = o.model
    path, default_name, version, registered = _resolve(model)
    layout(path)  # a folder that holds no model it can serve is refused now, before listening
    merged = {**registered, **o.given}
    os.environ.update(param_environ(merged))
    served_name = o.name or default_name

    def load_model_now():
        print(f"listening on {o.host}:{o.port}; loading {served_name} (version {version}) ...", file=sys.stderr,
              flush=True)
        try:
            source = to_compile(path) if o.compile_model else None
            note = _compile_apart(source) if source is not None else None
            loaded["model"] = load_model(path, served_name, version, params=merged, compile=o.compile_model)
            if note and loaded["model"].runtime_note == "cached":
                loaded["model"].runtime_note = note
        except MlyardError:
            raise
        except Exception as exc:  # noqa: BLE001 - the model's own code or files: one line, naming it
            raise SpecError("MODEL", model, f"a model that loads here; loading it raised {type(exc).__name__}: "
                            f"{str(exc)[:500]}") from None
        return loaded["model"]

    return Pending(served_name, version, load_model_now)


def _load_chat(o: _Served):
    """The chat model (None without one): smollm2, a .gguf file, a transformers folder or a registered one."""
    from mlyard.serving.generative import ChatModel

    if o.chat_model is None:
        return None
    if o.model is None:
        print(f"loading {o.chat_model} ...", file=sys.stderr, flush=True)
    from mlyard.core.specs import is_registry_ref

    if o.chat_model.startswith("models:/") or (is_registry_ref(o.chat_model) and not Path(o.chat_model).exists()):
        path, registered_name, _, _ = _resolve(o.chat_model)  # a registered chat model (parameter task=chat)
        return ChatModel(str(path), (o.name if o.model is None else None) or registered_name, o.max_sequences,
                         o.cache_tokens, o.queue_seconds)
    return ChatModel(o.chat_model, o.name if o.model is None else None, o.max_sequences, o.cache_tokens,
                     o.queue_seconds)


def _open_log(inference_log: str | None):
    from mlyard.serving.inference_log import InferenceLog

    try:
        return InferenceLog(inference_log) if inference_log else None
    except OSError as exc:
        raise SpecError("--inference-log", inference_log, f"a file that can be written ({exc.strerror})") from None


def _compile_apart(source: Path) -> str | None:
    """Compile a scikit-learn model into the cache in a process of its own (scikit-learn, SciPy and
    skl2onnx stay out of the server, which then loads the compiled model lean); how it went, or None when
    that process failed (the server's own load then compiles, or says why not)."""
    import subprocess

    probe = ("import sys; from pathlib import Path; from mlyard.serving.loading import load; "
             "m = load(Path(sys.argv[1])); print(m.runtime_note)")
    done = subprocess.run([sys.executable, "-c", probe, str(source)], capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    return lines[-1] if done.returncode == 0 and lines else None


def _registered(model: str) -> bool:
    from mlyard.core.specs import is_registry_ref

    return model.startswith("models:/") or (is_registry_ref(model) and not Path(model).exists())


def _folder(path: Path, runtime: str | None, definition: str | None, engine_args: list[str], envs: list[str]):
    """The model folder as its runtime variant runs it, refused (one line) when its engine is not here."""
    from mlyard.serving.variants import NAMES, VARIANTS, engine_problem, folder_of

    if (engine_args or envs) and runtime is None:
        raise SpecError("--engine-arg" if engine_args else "--env", (engine_args or envs)[0], "used with --runtime")
    if runtime is not None and runtime not in NAMES and not (path / "service-definition.toml").is_file():
        raise SpecError("--runtime", runtime, f"one of {', '.join(NAMES)}")
    environ = {}
    for pair in envs:
        name, eq, value = pair.partition("=")
        if not eq or not name.strip():
            raise SpecError("--env", pair, "NAME=VALUE")
        environ[name.strip()] = value
    mf = folder_of(path, runtime, definition, engine_args, environ)
    if runtime in VARIANTS and (missing := engine_problem(mf)) is not None:
        raise SpecError("--runtime", runtime, f"its engine on PATH: {missing} is not found here; install it, or run "
                        "the stage on a cluster, where the variant's image has it")
    return mf


def _serve_folder(folder, service_port: int | None, host: str, port: int) -> None:
    from mlyard.serving.supervisor import serve_folder

    if service_port is not None:
        from mlyard.tasks.replicas import free_port

        folder = folder.on_port(service_port or free_port())
    _listening(lambda: guard(lambda: serve_folder(folder, host, port)), port)


def _params(pairs: list[str]) -> dict[str, str]:
    """--param NAME=VALUE strings as parameters."""
    from mlyard.core.names import param_env_name

    out: dict[str, str] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name.strip() or not param_env_name(name):
            raise SpecError("--param", pair, "NAME=VALUE with a name of letters, digits, '-' or '_'")
        out[name.strip()] = value
    return out


def _raise(exc: Exception):
    raise exc


def _listening(serve_fn, port: int) -> None:
    try:
        serve_fn()
    except OSError as exc:  # the port is taken (any other OSError, a model's file for one, is not this)
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES) or exc.filename is not None:
            raise
        err.print(f"error: port: {port} is not free ({exc.strerror}); pick another with --port", style="red")
        sys.exit(2)


@functools.cache
def _resolve(model: str) -> tuple[Path, str, str, dict[str, str]]:
    """(local directory, default name, version, the version's parameters) of a model reference."""
    from mlyard.core.environment import model_files
    from mlyard.core.specs import is_mlflow_uri, is_registry_ref

    given = model_files(model)  # a replica of an endpoint: what its flow found, in its sandbox
    if given is not None:
        return Path(given["path"]), given["name"], given["version"], given["parameters"]
    if is_registry_ref(model) or model.startswith("models:/"):
        found = ask("model_reference", model=model)  # models:/name/version, checked by the registry
        ref = found["uri"].removeprefix("models:/")
        name, version = ref.rsplit("/", 1)
        local = _local_source(found.get("source"))
        # a version whose files are on this machine (the embedded stack's artifact store) is served where
        # it is: no copy, and no MLflow to import for one
        return local or _fetch(found["uri"], name, version), name, version, found.get("parameters") or {}
    if is_mlflow_uri(model):
        return _fetch(model, "model", "1"), "model", "1", {}
    if "://" in model:
        return _fetch(model, Path(model.rstrip("/")).name, "1"), Path(model.rstrip("/")).name, "1", {}
    path = Path(model).expanduser().resolve()
    return path, (path.parent.name if path.is_file() else path.name), "1", {}


def _local_source(source: str | None) -> Path | None:
    from mlyard.tasks.served import local_source

    return local_source(source)


def _fetch(uri: str, name: str, version: str) -> Path:
    from mlyard.core.connection import connect
    from mlyard.tasks.served import model_copy

    return model_copy(connect(), uri, name, version)
