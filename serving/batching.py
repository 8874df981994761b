"""Adaptive batching: concurrent requests for one model become one model call, then each caller gets
exactly its own rows back.

A request's rows join the open batch. The batch goes to the model when it holds `max_batch_size`
rows, or when the model is free and `max_latency_ms` have passed since the batch opened (0, the
default: as soon as the event loop has read every request that has already arrived). While the model
works on one batch the next one fills, so under load batches grow by themselves and an idle server
adds no wait.

The model runs in one worker thread, so a call that hangs answers its callers with a timeout and the
server goes on (the stuck thread is left behind and a new one takes over). A batch whose call fails is
retried request by request, so that one bad request fails alone.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from mlyard.core.errors import ModelTimeout


@dataclass
class _Item:
    x: Any  # rows: a 2-D array, or a pandas DataFrame
    future: asyncio.Future
    n: int = field(init=False)

    def __post_init__(self) -> None:
        self.n = len(self.x)


class _Thread:
    """One thread that runs model calls in order; a stuck call keeps its thread, the next call gets a new one."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="mlyard-model", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn, fut = self._q.get()
            if not fut.set_running_or_notify_cancel():  # its caller gave up before it started
                continue
            try:
                result = fn()
            except BaseException as exc:  # handed to the caller
                fut.set_exception(exc)
            else:
                fut.set_result(result)

    def submit(self, fn: Callable[[], Any]) -> Future:
        fut: Future = Future()
        self._q.put((fn, fut))
        return fut


class Batcher:
    """`await batcher.run(x)` gives the model's output for rows `x` (whatever `call(rows)` returns,
    split back by `split(output, start, stop)`)."""

    def __init__(self, call: Callable[[Any], Any], *, max_batch_size: int = 64, max_latency_ms: float = 0.0,
                 timeout_seconds: float = 60.0, split: Callable[[Any, int, int], Any] | None = None,
                 join: Callable[[list[Any]], Any] | None = None):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.call, self.max_batch_size, self.max_latency = call, max_batch_size, max_latency_ms / 1000.0
        self.timeout = timeout_seconds
        self.split = split or _split
        self.join = join or _join
        self._open: list[_Item] = []
        self._rows = 0
        self._busy = False
        self._scheduled = False
        self._thread = _Thread()
        self.batches = 0  # calls made, for statistics
        self.batched_rows = 0

    async def run(self, x: Any) -> Any:
        loop = asyncio.get_running_loop()
        item = _Item(x, loop.create_future())
        if item.n >= self.max_batch_size:  # a big request goes alone
            return await self._call([item], loop, alone=True)
        self._open.append(item)
        self._rows += item.n
        if self._rows >= self.max_batch_size:
            self._flush(loop)
        elif not self._busy and not self._scheduled:
            self._scheduled = True
            if self.max_latency > 0:
                loop.call_later(self.max_latency, self._flush, loop)
            else:
                loop.call_soon(self._flush, loop)
        return await item.future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        if self._busy or not self._open:
            return
        batch: list[_Item] = []  # at most max_batch_size rows; the rest make the next call
        rows = 0
        while self._open and (not batch or rows + self._open[0].n <= self.max_batch_size):
            item = self._open.pop(0)
            batch.append(item)
            rows += item.n
        self._rows -= rows
        self._busy = True
        task = loop.create_task(self._call(batch, loop))
        task.add_done_callback(lambda _: self._done(loop))

    def _done(self, loop: asyncio.AbstractEventLoop) -> None:
        self._busy = False
        if self._open:  # what arrived while the model worked goes now
            self._flush(loop)

    async def _call(self, batch: list[_Item], loop: asyncio.AbstractEventLoop, alone: bool = False) -> Any:
        try:  # rows that cannot be joined (different widths) go request by request, as a failed batch does
            x = batch[0].x if len(batch) == 1 else self.join([i.x for i in batch])
            out = await self._model(x, loop)
        except ModelTimeout as exc:
            return self._fail(batch, exc, alone)
        except Exception as exc:
            if len(batch) == 1:
                return self._fail(batch, exc, alone)
            for item in batch:  # find the request that broke the batch: each alone
                try:
                    self._resolve([item], await self._model(item.x, loop))
                except Exception as single:  # noqa: BLE001 - handed to that caller
                    self._fail([item], single, False)
            return None
        self.batches += 1
        self.batched_rows += sum(i.n for i in batch)
        if alone:
            return out
        self._resolve(batch, out)
        return None

    async def _model(self, x: Any, loop: asyncio.AbstractEventLoop) -> Any:
        fut = asyncio.wrap_future(self._thread.submit(lambda: self.call(x)), loop=loop)
        try:
            return await asyncio.wait_for(fut, self.timeout)
        except asyncio.TimeoutError:
            self._thread = _Thread()  # the stuck call keeps the old thread
            raise ModelTimeout(f"the model did not answer within {self.timeout:g} s") from None

    def _resolve(self, batch: list[_Item], out: Any) -> None:
        start = 0
        for item in batch:
            if not item.future.done():
                item.future.set_result(self.split(out, start, start + item.n))
            start += item.n

    @staticmethod
    def _fail(batch: list[_Item], exc: BaseException, alone: bool) -> None:
        if alone:
            raise exc
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)


def _join(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    if hasattr(first, "iloc"):  # pandas DataFrame
        import pandas as pd

        return pd.concat(parts, ignore_index=True)
    return [row for p in parts for row in p]


def _split(out: Any, start: int, stop: int) -> Any:
    if isinstance(out, tuple):
        return tuple(None if o is None else o[start:stop] for o in out)
    return out[start:stop]
