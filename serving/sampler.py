"""Each answer's own token choice (serving/sampling.py's `Sampling`), made by mlyard rather than by the engine:
transformers' continuous batch samples every sequence with one global `torch.multinomial` or `argmax`, so
per-request seeds, min_p, penalties and logprobs cannot be had there. Instead, a logits processor of the
batch (`BatchSampler`) chooses each row's token itself and hands the engine a row where that token alone is
possible; the engine, set greedy, takes it. The same choice (`Draw.choose`) runs for an answer generated
alone (`AloneSampler`, a `generate()` logits processor), so an answer depends on its request alone: a seeded
request gives the same text alone and in any batch.

A draw's randomness is its own generator (seeded by the request's seed, else at random), drawn once per
token; its penalties count its own generated tokens (as OpenAI and vLLM do, not the prompt's); its
logprobs are the model's raw log-probabilities (before temperature and penalties, as vLLM's default).
"""

from __future__ import annotations

import itertools
import random
import threading
from typing import Any

import torch
from transformers import LogitsProcessor
from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessor

from mlyard.serving.sampling import Sampling

KEY = "mlyard_draw"  # the per-request keyword the batch carries to BatchSampler: the draw's number


class Draw:
    """One answer's sampling state: its generator, its tokens' counts, the logprobs asked for."""

    def __init__(self, sampling: Sampling, vocab: int):
        self.sampling = sampling
        self.generator = torch.Generator().manual_seed(
            sampling.seed % 2**64 if sampling.seed is not None else random.getrandbits(63))
        self.counts: torch.Tensor | None = None  # made on the first token when a penalty asks for it
        self.vocab = vocab
        self.records: list[tuple[int, float, list[tuple[int, float]]]] = []  # (token, logprob, top alternatives)

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from one row of raw logits ([vocab], float32)."""
        s = self.sampling
        x = logits
        if s.logit_bias:
            x = x.clone()
            index = torch.tensor(list(s.logit_bias), dtype=torch.long)
            x[index] += torch.tensor(list(s.logit_bias.values()), dtype=x.dtype)
        if self.counts is not None:
            x = x - s.frequency_penalty * self.counts - s.presence_penalty * (self.counts > 0).to(x.dtype)
        if s.temperature == 0:
            token = int(torch.argmax(x))
        else:
            x = x / s.temperature
            if s.top_k and s.top_k < x.numel():
                kth = torch.topk(x, s.top_k).values[-1]
                x = x.masked_fill(x < kth, float("-inf"))
            probs = torch.softmax(x, dim=-1)
            if s.top_p < 1.0:
                probs = _nucleus(probs, s.top_p)
            if s.min_p > 0:
                probs = probs.masked_fill(probs < s.min_p * probs.max(), 0.0)
            cumulative = torch.cumsum(probs, 0)  # inverse CDF: one uniform draw a token (multinomial costs 15x)
            drawn = torch.rand(1, generator=self.generator) * cumulative[-1]
            token = min(int(torch.searchsorted(cumulative, drawn, right=True)), probs.numel() - 1)
        if s.presence_penalty or s.frequency_penalty:
            if self.counts is None:
                self.counts = torch.zeros(logits.numel(), dtype=torch.float32)
            self.counts[token] += 1
        if s.logprobs is not None:
            lp = torch.log_softmax(logits, dim=-1)
            top: list[tuple[int, float]] = []
            if s.logprobs:
                values, ids = torch.topk(lp, s.logprobs)
                top = list(zip(ids.tolist(), values.tolist()))
            self.records.append((token, float(lp[token]), top))
        return token


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The fewest most likely tokens holding `top_p` of the mass (the rest zeroed), found among the 256 most
    likely when they hold it (a sort of the whole vocabulary costs 25 times more), else among all."""
    k = min(256, probs.numel())
    ordered, order = torch.topk(probs, k)
    if float(ordered.sum()) < top_p:
        ordered, order = torch.sort(probs, descending=True)
    keep = (torch.cumsum(ordered, 0) - ordered) < top_p
    keep[0] = True
    return torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])


def one_hot(scores: torch.Tensor, row: int, token: int) -> None:
    scores[row].fill_(float("-inf"))
    scores[row, token] = 0.0


class BatchSampler(ContinuousBatchingLogitsProcessor):
    """The batch's processor: each row with a draw gets that draw's choice; a row without one (no draw
    registered) is left as it is, for the engine's greedy argmax."""

    supported_kwargs: dict[str, type] = {KEY: int}
    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.draws: dict[int, Draw] = {}
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, draw: Draw) -> int:
        with self._lock:
            number = next(self._numbers) % 2**31
            self.draws[number] = draw
        return number

    def remove(self, number: int) -> None:
        with self._lock:
            self.draws.pop(number, None)

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(0)

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
        return torch.tensor([r.state.logit_processor_kwargs.get(KEY, 0) for r in requests_with_new_token],
                            dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        numbers = tensor_arg[:scores.size(0)].tolist()
        with self._lock:
            draws = [self.draws.get(n) for n in numbers]
        for row, draw in enumerate(draws):
            if draw is not None:
                one_hot(scores, row, draw.choose(scores[row]))
        return scores


def install(manager: Any) -> BatchSampler:
    """Put a BatchSampler in a ContinuousBatchingManager's logits processors (before its start, which sizes the
    processors' argument storage); the manager must be greedy with no processor of its own."""
    sampler = BatchSampler()
    processors = manager.logit_processor
    processors.logits_processor.append(sampler)
    processors.tensors_required += 1
    processors.supported_keys[KEY] = int
    processors.do_processing = True
    return sampler


class AloneSampler(LogitsProcessor):
    """The same choice for `generate()` (one sequence): its scores become the draw's one token."""

    def __init__(self, draw: Draw):
        self.draw = draw

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float().clone()
        one_hot(scores, 0, self.draw.choose(scores[0].clone()))
        return scores  # type: ignore[return-value]
