"""The few ASGI pieces every server here shares: the lifespan handshake, reading a body under a size
limit, and sending a whole response."""

from __future__ import annotations

from typing import Awaitable, Callable, Iterable

from mlyard.core.errors import BodyTooLarge

Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
JSON = b"application/json"




async def lifespan(receive: Receive, send: Send, on_startup: Callable[[], None] | None = None,
                   on_shutdown: Callable[[], None] | None = None) -> None:
    """Answer the server's startup and shutdown messages (calling the hooks), until shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if on_startup is not None:
                on_startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if on_shutdown is not None:
                on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; BodyTooLarge as soon as it passes `limit` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def reply(send: Send, status: int, body: bytes, content_type: bytes = JSON,
                headers: Iterable[tuple[bytes, bytes]] = (), head: bool = False) -> None:
    """A whole response; `head`: the answer to a HEAD (the length of the body it would have, no body)."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": b"" if head else body})


def header(scope: dict, name: str) -> str | None:
    """A request header's value (`name` in lower case), or None."""
    key = name.encode()
    for k, v in scope["headers"]:
        if k == key:
            return v.decode("latin-1")
    return None
