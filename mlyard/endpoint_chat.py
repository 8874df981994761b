"""Chat with an endpoint's generative model: Backend.AI's "LLM Chat Test" in a terminal (`mlyard endpoints
chat ENDPOINT`), or on the dashboard's chat page (`--open`, serving/chat_page.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from core.connection import connect, gateway_url
from core.errors import SpecError
from mlyard import sse
from mlyard.endpoints import endpoint_registry


def chat(endpoint: str, *, stage: str | None = None, token: str | None = None, model: str | None = None,
         read=input, write=print, max_tokens: int = 256, temperature: float | None = None) -> int:
    """Backend.AI's LLM chat test in a terminal: each line read is sent with the conversation so far to
    the endpoint's OpenAI chat route, and the answer is written as it streams (temperature unset: the
    model's own; 0: greedy). Returns the turns taken."""
    view = endpoint_registry().get(endpoint)
    st = next((s for s in view["stages"] if s["name"] == (stage or view["default_stage"])), None)
    if st is None:
        raise SpecError("stage", stage, f"a stage of {endpoint}")
    name = model or st["resources"][0]["model"].rsplit("/", 1)[0]
    base = gateway_url(connect()) + f"/{endpoint}" + ("" if st["default"] else f"/stages/{st['name']}") + f"/{name}"
    url = base + "/openai/v1/chat/completions"
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
