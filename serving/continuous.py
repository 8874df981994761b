"""Continuous batching of a chat model's answers (Orca's iteration-level scheduling), with transformers' own
ContinuousBatchingManager and its paged cache on the CPU: a request joins the running batch at the next token
step and leaves it when it ends, instead of waiting for whole generations ahead of it. Every answer joins,
greedy or sampled, whatever its temperature, top_p, top_k, min_p, penalties, seed or logprobs: the engine is
set greedy and each row's token is chosen by the answer's own draw (serving/sampler.py), so batching changes
when a token is computed, never which.

    batcher = Batcher(chat, max_sequences=8, max_waiting=64, cache_tokens=16384, patience=30)
    async for piece in batcher.generate(input_ids, Sampling(temperature=0.7), max_tokens=64, stop=["\\n\\n"]):
        ...   # Piece(text, None, 0, logprobs) as tokens come, then Piece("", "stop" | "length", tokens)

Bounds: at most `max_sequences` answers in the batch; behind them at most `max_waiting` wait, each at most
`patience` seconds (then 503 with Retry-After, as when the queue is full). The paged cache holds
`cache_tokens` tokens shared by the batch (prompts and answers), so one long answer can take what short
ones leave; the engine moves a sequence that cannot grow off the cache until there is room. A request whose
client leaves, whose stop string is met or whose max_tokens is reached is cancelled at once and its place
and pages freed.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
import uuid
from typing import Any, AsyncIterator, Callable

from mlyard.core.errors import BadChat
from mlyard.serving.sampling import Piece, Sampling
from mlyard.serving.stops import TextStream

PAGE_TOKENS = 32  # tokens a KV cache page holds
CACHE_TOKENS = 16384  # the default paged cache, shared by the batch (prompts and answers together)
MAX_STEP_TOKENS = 512  # tokens computed in one step (a long prompt is taken in chunks of it)
PATIENCE = 30.0  # seconds a request waits for a place in the batch before it is answered 503


class Batcher:
    """A chat model's continuous batch: one background generation loop of transformers' (see the module)."""

    def __init__(self, chat: Any, max_sequences: int = 8, max_waiting: int = 64, cache_tokens: int = CACHE_TOKENS,
                 patience: float = PATIENCE):
        from transformers import ContinuousBatchingConfig, GenerationConfig

        from mlyard.serving import sampler

        tokenizer = chat.tokenizer
        self.tokenizer, self.vocab = tokenizer, int(chat.model.config.vocab_size)
        self.max_sequences, self.max_waiting, self.patience = max_sequences, max_waiting, patience
        self.cache_tokens = min(cache_tokens, chat.context)  # the longest prompt and answer that can join
        eos = chat.model.generation_config.eos_token_id
        eos = tokenizer.eos_token_id if eos is None else eos
        config = GenerationConfig(max_new_tokens=256, do_sample=False, eos_token_id=eos,
                                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
        self.manager = chat.model.init_continuous_batching(
            generation_config=config, continuous_batching_config=ContinuousBatchingConfig(
                page_size=PAGE_TOKENS, num_blocks=math.ceil(cache_tokens / PAGE_TOKENS) + 1,
                max_batch_tokens=MAX_STEP_TOKENS, max_requests_per_batch=max_sequences, allow_block_sharing=False))
        self.sampler = sampler.install(self.manager)
        self._draw = sampler.Draw
        self.manager.start()
        self.running = 0  # answers in the batch (one event loop: no lock)
        self.waiting: collections.deque[asyncio.Future] = collections.deque()  # requests waiting for a place
        self.waited: collections.deque[float] = collections.deque(maxlen=256)  # seconds the last answers waited

    def fits(self, prompt_tokens: int, max_tokens: int) -> bool:
        return prompt_tokens + max_tokens <= self.cache_tokens

    def queue(self) -> dict[str, Any]:
        """The batch as a user watches it: answers generating, requests waiting, and the last answers' waits."""
        waits = sorted(self.waited)
        return {"running": self.running, "waiting": len(self.waiting), "max_sequences": self.max_sequences,
                "wait_p50_ms": round(waits[len(waits) // 2] * 1000, 1) if waits else None,
                "wait_max_ms": round(waits[-1] * 1000, 1) if waits else None}

    async def _admit(self) -> float:
        """A place in the batch: the seconds waited for it; BadChat(503, Retry-After) past the queue or patience."""
        if self.running < self.max_sequences and not self.waiting:
            self.running += 1
            return 0.0
        retry = max(1, math.ceil(self.patience / 4))
        if len(self.waiting) >= self.max_waiting:
            raise BadChat(f"the model is busy: {self.running} answers are being generated and {len(self.waiting)} "
                          f"wait; retry in {retry} s", status=503, retry_after=retry)
        place: asyncio.Future = asyncio.get_running_loop().create_future()
        self.waiting.append(place)
        began = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(place), self.patience)
        except asyncio.TimeoutError:
            self._leave(place)
            raise BadChat(f"the model is busy: no place in the batch came within {self.patience:g} s "
                          f"({self.running} answers generating, {len(self.waiting)} waiting); retry in {retry} s",
                          status=503, retry_after=retry) from None
        except asyncio.CancelledError:
            self._leave(place)
            raise
        return time.monotonic() - began

    def _leave(self, place: asyncio.Future) -> None:
        """A waiting request gone: out of the queue, or, if its place had just been handed over, that place given on."""
        if place.done() and not place.cancelled():
            self._release()
        else:
            place.cancel()
            if place in self.waiting:
                self.waiting.remove(place)

    def _release(self) -> None:
        while self.waiting:
            place = self.waiting.popleft()
            if not place.done():
                place.set_result(None)  # the place passes to the next request: `running` stays
                return
        self.running -= 1

    async def generate(self, input_ids: list[int], sampling: Sampling, max_tokens: int, stop: list[str],
                       cancel: threading.Event | None = None,
                       admitted: Callable[[float], None] | None = None) -> AsyncIterator[Piece]:
        """Pieces as tokens come (see the module); BadChat(503) when no place comes. Setting `cancel` (the client
        left) ends it at the next token; `admitted` is told the seconds the request waited for its place."""
        waited = await self._admit()
        self.waited.append(waited)
        if admitted is not None:
            admitted(waited)
        number, rid, ended = self.sampler.add(self._draw(sampling, self.vocab)), uuid.uuid4().hex, False
        try:
            queue: asyncio.Queue = asyncio.Queue()
            self.manager.register_result_handler(rid, queue.put_nowait)
            if self.manager.add_request(input_ids, request_id=rid, max_new_tokens=max_tokens, streaming=True,
                                        mlyard_draw=number) is None:
                ended = True  # its loop has ended (a fatal error): the next request starts a new one (ChatModel.batcher)
                raise BadChat(f"the model's generation loop has stopped: "
                              f"{self.manager.background_thread_status.fatal_error}", status=503, retry_after=1)
            draw = self.sampler.draws[number]
            text, seen, finish = TextStream(self.tokenizer, stop), 0, None
            while finish is None:
                try:
                    out = await asyncio.wait_for(queue.get(), 0.5)
                except asyncio.TimeoutError:
                    if cancel is not None and cancel.is_set():
                        return
                    continue
                if out.error is not None:
                    raise BadChat(f"the model failed: {out.error}", status=500)
                piece = text.feed(out.generated_tokens[seen:])
                records = draw.records[seen:len(out.generated_tokens)]
                seen, ended = len(out.generated_tokens), out.is_finished()
                if text.stopped:
                    finish = "stop"
                elif ended:
                    piece += text.rest()
                    finish = "length" if seen >= max_tokens else "stop"
                if piece or records:
                    yield Piece(piece, None, 0, records)
                if cancel is not None and cancel.is_set():
                    return
            yield Piece("", finish, seen)
        finally:
            self.sampler.remove(number)
            self._release()
            if not ended:  # a stop string, a client gone, an error: its slot and pages freed at once
                self.manager.cancel_request(rid)
            with self.manager.output_router._lock:  # no final answer may come to clean its handler up
                self.manager.output_router.result_handlers.pop(rid, None)
