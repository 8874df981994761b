"""Continuous batching of a chat model's greedy generations (Orca's iteration-level scheduling), with
transformers' own ContinuousBatchingManager and its paged cache on the CPU: a request joins the running
batch at the next token step and leaves it when it ends, instead of waiting for whole generations ahead
of it (serving/generative.py's `ChatModel.generate`, one at a time, still answers sampled requests).

    batcher = Batcher(chat, max_sequences=8, max_waiting=64)
    async for text, finish, tokens in batcher.generate(input_ids, max_tokens=64, stop=["\\n\\n"]):
        ...   # (piece, None, 0) as tokens come, then ("", "stop" | "length", tokens generated)

Bounds: at most `max_sequences` sequences in the batch (their KV cache pages are reserved up front, so
memory is bounded too), at most `max_waiting` requests queued behind them (the next is refused: Busy).
A request whose client leaves (its iterator is closed), whose stop string is met or whose max_tokens is
reached is cancelled at once and its slot and pages freed. Each answer is the tokens the model gives that
request alone, greedily: batching changes when a token is computed, never which.
"""

from __future__ import annotations

import asyncio
import math
import threading
import uuid
from typing import Any, AsyncIterator

from mlyard.core.errors import BadChat
from mlyard.serving.stops import first_stop, partial_stop

PAGE_TOKENS = 32  # tokens a KV cache page holds
MAX_SEQUENCE_TOKENS = 2048  # the cache reserved for each sequence in the batch (prompt and answer together)
MAX_STEP_TOKENS = 512  # tokens computed in one step (a long prompt is taken in chunks of it)


class Batcher:
    """A chat model's continuous batch: one background generation loop of transformers' (see the module)."""

    def __init__(self, chat: Any, max_sequences: int = 8, max_waiting: int = 64):
        from transformers import ContinuousBatchingConfig, GenerationConfig

        tokenizer = chat.tokenizer
        self.max_sequences, self.max_waiting = max_sequences, max_waiting
        self._rust = tokenizer._tokenizer  # the fast tokenizer's own, for step-by-step decoding
        eos = chat.model.generation_config.eos_token_id
        eos = tokenizer.eos_token_id if eos is None else eos
        config = GenerationConfig(max_new_tokens=256, do_sample=False, eos_token_id=eos,
                                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
        per_sequence = math.ceil(min(chat.context, MAX_SEQUENCE_TOKENS) / PAGE_TOKENS)
        self.manager = chat.model.init_continuous_batching(
            generation_config=config, continuous_batching_config=ContinuousBatchingConfig(
                page_size=PAGE_TOKENS, num_blocks=max_sequences * per_sequence + 1, max_batch_tokens=MAX_STEP_TOKENS,
                max_requests_per_batch=max_sequences, allow_block_sharing=False))
        self.manager.start()
        self.active = 0  # requests in the batch or waiting for it (one event loop: no lock)

    async def generate(self, input_ids: list[int], max_tokens: int, stop: list[str],
                       cancel: threading.Event | None = None) -> AsyncIterator[tuple[str, str | None, int]]:
        """(text piece, None, 0) as tokens come, then ("", finish_reason, tokens generated); BadChat(503)
        when the batch and its queue are full. Setting `cancel` (the client left) ends it at the next token."""
        from tokenizers.decoders import DecodeStream

        if self.active >= self.max_sequences + self.max_waiting:
            raise BadChat(f"the model is busy: {self.max_sequences} answers are being generated and "
                          f"{self.max_waiting} wait; retry shortly", status=503)
        self.active += 1
        queue: asyncio.Queue = asyncio.Queue()
        rid = uuid.uuid4().hex
        self.manager.register_result_handler(rid, queue.put_nowait)
        if self.manager.add_request(input_ids, request_id=rid, max_new_tokens=max_tokens, streaming=True) is None:
            self.active -= 1  # its loop has ended (a fatal error): the next request starts a new one (ChatModel.batcher)
            with self.manager.output_router._lock:
                self.manager.output_router.result_handlers.pop(rid, None)
            raise BadChat(f"the model's generation loop has stopped: "
                          f"{self.manager.background_thread_status.fatal_error}", status=503)
        decoder, text, sent, seen, finish, ended = DecodeStream(skip_special_tokens=True), "", 0, 0, None, False
        try:
            while finish is None:
                try:
                    out = await asyncio.wait_for(queue.get(), 0.5)
                except asyncio.TimeoutError:
                    if cancel is not None and cancel.is_set():
                        return
                    continue
                if out.error is not None:
                    raise BadChat(f"the model failed: {out.error}", status=500)
                for token in out.generated_tokens[seen:]:
                    text += decoder.step(self._rust, token) or ""
                seen, ended = len(out.generated_tokens), out.is_finished()
                cut = first_stop(text, stop)
                if cut is not None:
                    text, finish = text[:cut], "stop"
                elif ended:
                    finish = "length" if seen >= max_tokens else "stop"
                hold = partial_stop(text, stop) if finish is None else 0
                if len(text) - hold > sent:
                    yield text[sent:len(text) - hold], None, 0
                    sent = len(text) - hold
                if cancel is not None and cancel.is_set():
                    return
            yield "", finish, seen
        finally:
            self.active -= 1
            if not ended:  # a stop string, a client gone, an error: its slot and pages freed at once
                self.manager.cancel_request(rid)
                with self.manager.output_router._lock:  # no final answer comes to clean its handler up
                    self.manager.output_router.result_handlers.pop(rid, None)
