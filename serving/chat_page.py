"""The chat page ("LLM Chat Test", as Backend.AI's console has it): a conversation with an endpoint's
chat model, streamed, with each answer's tokens and latency, which can also be pointed at any
OpenAI-compatible base URL with a token. The gateway serves it at /_chat (no endpoint can be named so), so
that the page and an endpoint's routes share one origin; `mlyard endpoints chat ENDPOINT --open` and the
dashboard open it with the endpoint's base URL, model and token in the address's fragment, which no server
sees. The page is static (serving/static/chat.*): it holds no data, so it needs no credential, and it shows
answers as text only under a Content-Security-Policy that runs its own script alone.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from urllib.parse import urlencode

PATH = "/_chat"
FILES = {PATH: ("chat.html", b"text/html; charset=utf-8"), "/_chat.js": ("chat.js", b"text/javascript; charset=utf-8"),
         "/_chat.css": ("chat.css", b"text/css; charset=utf-8")}
HEADERS = [(b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src *; "
            b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
           (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
           (b"cache-control", b"no-cache")]


@cache
def body(path: str) -> tuple[bytes, bytes]:
    """(the file, its content type) of a path of FILES."""
    name, kind = FILES[path]
    return files("mlyard.serving").joinpath("static", name).read_bytes(), kind


def link(gateway: str, base_url: str, model: str | None = None, token: str | None = None) -> str:
    """The page's address on `gateway`, set to talk to `base_url` (OpenAI's .../v1) as `model` with `token`."""
    given = {"base": base_url, **({"model": model} if model else {}), **({"token": token} if token else {})}
    return f"{gateway.rstrip('/')}{PATH}#{urlencode(given)}"
