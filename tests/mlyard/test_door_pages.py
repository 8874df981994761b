"""The door's notebook websockets, without a stack: a person's open ones are bounded, so one person's
many tabs cannot take every connection of the door (the relay itself is tested end to end in
tests/mlyard/test_teams.py and in Chromium)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from mlyard.door_pages import SOCKETS_PER_PERSON, DoorPages


def test_a_persons_websockets_past_the_bound_are_closed_try_again_later():
    pages = DoorPages(frozenset(), frozenset())
    relayed: list[str] = []

    async def target(path, actor):
        return "http://127.0.0.1:9", "token"

    async def relay(scope, receive, send, where, token, headers, again):
        relayed.append(scope["path"])

    pages.target, pages._relay = target, relay  # type: ignore[method-assign]
    scope = {"path": "/notebooks/3/api/kernels/k/channels", "query_string": b"", "headers": [
        (b"host", b"127.0.0.1:4203"), (b"origin", b"http://127.0.0.1:4203")]}

    async def opened(actor) -> list[dict]:
        sent: list[dict] = []

        async def receive():
            return {"type": "websocket.connect"}

        async def send(message):
            sent.append(message)

        await pages.websocket(scope, receive, send, actor)
        return sent

    alice, bob = SimpleNamespace(name="alice"), SimpleNamespace(name="bob")
    pages._sockets["alice"] = SOCKETS_PER_PERSON  # her tabs hold as many as a person may
    assert asyncio.run(opened(alice)) == [{"type": "websocket.close", "code": 1013}] and relayed == []
    assert asyncio.run(opened(bob)) == [] and relayed == [scope["path"]]  # not held up by hers
    assert pages._sockets["bob"] == 0  # given back when it ended
    pages._sockets["alice"] -= 1  # one of her tabs closed
    assert asyncio.run(opened(alice)) == [] and len(relayed) == 2
