"""Signing in at mlyard's front door to the Prefect UI (mlyard/prefect_door.py): the sign-in page, and the
session a browser then holds.

A person signs in once with their API key (and, if they are in several projects, the project to work in).
The browser keeps a session cookie, not the key. The cookie names the key's id, the project and an
expiry, and carries an HMAC of them made with a secret derived from the platform's internal credential.
The cookie is HttpOnly and SameSite=Strict. Every request reads the key's row again: when the key is
revoked, the session ends at its next request. A person signs out with POST /sign-out.

It also holds the door's own answers: a refusal (an HttpError) worded as Prefect's API words one, the body
read within its bound, and the check that a write comes from the door's own pages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import time
from typing import Any

from mlyard.core.errors import HttpError

COOKIE = "mlyard_door"
SESSION_SECONDS = 12 * 3600
MAX_FORM_BYTES = 4096
MAX_BODY_BYTES = 1 << 20  # a JSON request to Prefect's API


def session_secret(internal: str) -> bytes:
    """The secret sessions are signed with: derived from the internal credential, so every replica of the
    front door shares it and a new credential ends every session."""
    return hmac.new(internal.encode(), b"mlyard-door-session", hashlib.sha256).digest()


def make_session(secret: bytes, key_id: str, project: str | None, now: float | None = None) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(
        {"k": key_id, "p": project, "e": int((now or time.time()) + SESSION_SECONDS)}).encode()).decode().rstrip("=")
    return f"{payload}.{_mac(secret, payload)}"


def read_session(secret: bytes, value: str, now: float | None = None) -> tuple[str, str | None] | None:
    """(key id, project) of a session cookie that is this door's and has not expired; None otherwise."""
    payload, _, mac = value.partition(".")
    if not mac or not hmac.compare_digest(mac, _mac(secret, payload)):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("k"), str) or data.get("e", 0) < (now or time.time()):
        return None
    project = data.get("p")
    return data["k"], project if isinstance(project, str) else None


def _mac(secret: bytes, payload: str) -> str:
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


def cookie_of(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, given = part.strip().partition("=")
                if key == COOKIE:
                    return given
    return None


def set_cookie(value: str, secure: bool, max_age: int = SESSION_SECONDS) -> tuple[bytes, bytes]:
    flags = "; Secure" if secure else ""
    return b"set-cookie", f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{flags}".encode()


def safe_next(given: str | None) -> str:
    """Where to go after signing in: a path of this site only (never `//host` or a scheme: no open redirect)."""
    if not given or not given.startswith("/") or given.startswith("//") or "\\" in given:
        return "/runs"
    return given


def page(next_path: str, problem: str = "", who: str = "") -> bytes:
    """The sign-in page: an API key, a project (for a member of several), and the line that says what went wrong."""
    said = f'<p class="problem" role="alert">{html.escape(problem)}</p>' if problem else ""
    signed = f"<p>Signed in as {html.escape(who)}.</p>" if who else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in · mlyard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:15px/1.5 system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem;color:#1d2433}}
label{{display:block;margin-top:1rem;font-weight:600}}input{{width:100%;padding:.5rem;font:inherit;box-sizing:border-box}}
button{{margin-top:1.2rem;padding:.5rem 1.2rem;font:inherit}}.problem{{color:#b00020}}.hint{{color:#5b6475;font-size:13px}}</style>
</head><body><h1>mlyard</h1><p>Sign in to the Prefect UI with your mlyard API key.</p>{signed}{said}
<form method="post" action="/sign-in"><input type="hidden" name="next" value="{html.escape(safe_next(next_path))}">
<label for="key">API key</label><input id="key" name="key" type="password" autocomplete="current-password"
 placeholder="mly_..." required>
<label for="project">Project</label><input id="project" name="project" autocomplete="off"
 placeholder="your only project when empty">
<p class="hint">An admin gives you a key with <code>mlyard users create</code> or <code>mlyard users add-key</code>.</p>
<button type="submit">Sign in</button></form></body></html>""".encode()


def parse_form(body: bytes) -> dict[str, str]:
    from urllib.parse import parse_qs

    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), max_num_fields=8).items()}


# The door's own answers are never framed by another page (the Run button is not to be clicked through
# someone else's) and never cached.
FRAMING: list[tuple[bytes, bytes]] = [(b"x-frame-options", b"DENY"),
                                      (b"content-security-policy", b"frame-ancestors 'none'")]
NOT_CACHED: list[tuple[bytes, bytes]] = [(b"cache-control", b"no-store"), *FRAMING]


def detail(message: str) -> bytes:
    """An error body as Prefect's API words it (the UI shows `detail`)."""
    return json.dumps({"detail": message}).encode()


# -- the door's own answers ----------------------------------------------------------------------------------


def same_origin(scope: dict) -> None:
    """A write comes from this site's own pages: a browser says where a request comes from (Sec-Fetch-Site,
    Origin), and a page elsewhere (another port of this machine is another origin) is refused."""
    if scope["method"] in ("GET", "HEAD"):
        return
    headers = dict(scope["headers"])
    site = headers.get(b"sec-fetch-site")
    origin = headers.get(b"origin")
    host = headers.get(b"host", b"")
    if site not in (None, b"same-origin", b"none") or (origin is not None and origin.split(b"://", 1)[-1] != host):
        raise HttpError(403, "a write through mlyard's front door comes from its own pages (same origin)")


async def body(scope: dict, receive: Any, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request's body within `limit` bytes: one that says it is longer is refused before a byte is read."""
    from mlyard.core.errors import BodyTooLarge
    from mlyard.serving.asgi import read_body

    declared = dict(scope["headers"]).get(b"content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge(limit)
    return await read_body(receive, limit)


async def answer_json(send: Any, status: int, body: bytes) -> None:
    from mlyard.serving.asgi import reply

    await reply(send, status, body, b"application/json", NOT_CACHED)


async def relay(send: Any, answer: Any, drop: set[bytes] | frozenset[bytes]) -> None:
    """An upstream answer (an httpx response opened with stream=True) sent on as it comes, without the
    headers in `drop`; closed once sent, or once the client is gone."""
    try:
        kept = [(k.lower(), v) for k, v in answer.headers.raw if k.lower() not in drop]
        await send({"type": "http.response.start", "status": answer.status_code, "headers": kept + FRAMING})
        async for chunk in answer.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        await answer.aclose()


async def answer_html(send: Any, status: int, body: bytes) -> None:
    from mlyard.serving.asgi import reply

    await reply(send, status, body, b"text/html; charset=utf-8", NOT_CACHED)


async def redirect(send: Any, to: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    from mlyard.serving.asgi import reply

    await reply(send, 303, b"", b"text/plain", [*NOT_CACHED, (b"location", to.encode()), *(headers or [])])
