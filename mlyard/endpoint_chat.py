"""Chat with an endpoint's generative model: Backend.AI's "LLM Chat Test" in a terminal (`mlyard endpoints
chat ENDPOINT`), or on the dashboard's chat page (`--open`, serving/chat_page.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from mlyard import sse
from mlyard.core.connection import connect, gateway_url
from mlyard.core.errors import SpecError
from mlyard.endpoints import endpoint_view


def base_url(endpoint: str, stage: str | None = None, model: str | None = None) -> tuple[str, str]:
    """(the OpenAI base URL of the endpoint's chat model through the gateway, the model's name)."""
    view = endpoint_view(endpoint)
    gateway = _gateway(view)
    st = next((s for s in view["stages"] if s["name"] == (stage or view["default_stage"])), None)
    if st is None:
        raise SpecError("stage", stage, f"a stage of {endpoint}")
    res = st["resources"][0]
    name = model or res["model"].rsplit("/", 1)[0]
    base = gateway + f"/{endpoint}" + ("" if st["default"] else f"/stages/{st['name']}") + f"/{name}"
    engine = (res.get("runtime") or {}).get("variant", "custom") != "custom"  # an engine's own /v1 routes
    return base + ("/v1" if engine else "/openai/v1"), name


def page(endpoint: str, *, stage: str | None = None, token: str | None = None, model: str | None = None) -> str:
    """The chat page's address (serving/chat_page.py) set to talk to the endpoint's chat model; `token` (the
    endpoint's, or a member's API key) rides in the address's fragment, which no server sees."""
    from mlyard.serving.chat_page import link

    base, name = base_url(endpoint, stage, model)
    return link(base.split(f"/{endpoint}/", 1)[0], base, name, token or _own_key())


def _own_key() -> str | None:
    """A team member's API key (it opens their project's endpoints), when they hold one."""
    from mlyard.core.settings import Settings

    key = Settings().api_key
    return key.get_secret_value() if key is not None else None


def _gateway(view: dict) -> str:
    """The gateway as the caller reaches it: from the URLs a member's view carries, else this stack's."""
    for url in (view.get("urls") or {}).get("default", {}).values():
        return url.split(f"/{view['name']}/", 1)[0]
    return gateway_url(connect())


def chat(endpoint: str, *, stage: str | None = None, token: str | None = None, model: str | None = None,
         read=input, write=print, max_tokens: int = 256, temperature: float | None = None) -> int:
    """Backend.AI's LLM chat test in a terminal: each line read is sent with the conversation so far to
    the endpoint's OpenAI chat route, and the answer is written as it streams (temperature unset: the
    model's own; 0: greedy). Returns the turns taken."""
    base, name = base_url(endpoint, stage, model)
    url, token = base + "/chat/completions", token or _own_key()
    about = _about(base, token)
    if about:
        write(f"{name}: {about}")
    messages: list[dict[str, str]] = []
    turns = 0
    while True:
        try:
            line = read("you> ")
        except EOFError:
            return turns
        if line.strip() in ("", "/exit", "/quit"):
            return turns
        messages.append({"role": "user", "content": line})
        body = json.dumps({"model": name, "messages": messages, "stream": True, "max_tokens": max_tokens,
                           **({} if temperature is None else {"temperature": temperature})}).encode()
        headers = {"content-type": "application/json", **({"authorization": f"Bearer {token}"} if token else {})}
        req = urllib.request.Request(url, data=body, headers=headers)
        answer = []
        try:
            with urllib.request.urlopen(req, timeout=300) as resp:
                for chunk in sse.chunks(resp):
                    delta = sse.delta_text(chunk)
                    answer.append(delta)
                    write(delta, end="", flush=True)
        except urllib.error.HTTPError as exc:
            raise SpecError("endpoint", endpoint, f"an endpoint that answers chat at {url} "
                            f"({exc.code}: {exc.read().decode(errors='replace')[:300]})") from None
        write("")
        messages.append({"role": "assistant", "content": "".join(answer)})
        turns += 1


def _about(base: str, token: str | None) -> str | None:
    """What the model server says of its model (a demonstration model's note), if it says anything."""
    req = urllib.request.Request(base + "/models", headers={"authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            found = json.loads(resp.read())["data"][0].get("mlyard") or {}
    except (OSError, ValueError, LookupError, AttributeError):
        return None  # an engine's own server, or none: nothing said
    return found.get("note")
