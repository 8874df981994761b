"""How one answer of a chat model chooses its tokens: OpenAI's sampling fields (and vLLM's top_k and min_p),
checked once from a request body; serving/sampler.py applies them token by token, in the continuous batch
or alone. Pure: no torch here, so the routes that check a request do not load it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from mlyard.core.errors import BadChat

MAX_TOP_LOGPROBS = 20  # OpenAI's bound for chat; the legacy completions route allows 5
MAX_N = 8


class Piece(NamedTuple):
    """What a generation yields as it goes: text and the logprob records of the tokens it came from (token,
    logprob, top alternatives), then a last piece with the finish reason and the number of tokens generated."""

    text: str
    finish: str | None = None
    tokens: int = 0
    logprobs: list[tuple[int, float, list[tuple[int, float]]]] = []


@dataclass(frozen=True)
class Sampling:
    """One answer's choices. temperature 0 is greedy (the most likely token, after the penalties and bias);
    `logprobs` None asks for none, 0 for the chosen tokens' own, k also for the k most likely at each step."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: every token
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logprobs: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)

    def with_seed(self, seed: int | None) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.top_k, self.min_p, self.presence_penalty,
                        self.frequency_penalty, seed, self.logprobs, self.logit_bias)


def number(req: dict, name: str, low: float, high: float, default: float) -> float:
    value = req.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise BadChat(f"{name} must be a number from {low:g} to {high:g}", name)
    return float(value)


def integer(req: dict, name: str, low: int, high: int, default: int | None) -> int | None:
    value = req.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadChat(f"{name} must be an integer from {low} to {high}", name)
    return value


def from_request(req: dict, chat: bool, vocab: int, default_temperature: float = 1.0) -> Sampling:
    """The request's sampling fields, each checked (BadChat names the first one that is wrong). Chat asks for
    logprobs as `logprobs: true` and `top_logprobs: k`; the legacy completions route as `logprobs: k` (0 to 5)."""
    if chat:
        wanted = req.get("logprobs")
        if wanted not in (None, True, False):
            raise BadChat("logprobs must be true or false (top_logprobs says how many alternatives)", "logprobs")
        top = integer(req, "top_logprobs", 0, MAX_TOP_LOGPROBS, None)
        if top and not wanted:
            raise BadChat("top_logprobs needs logprobs: true", "top_logprobs")
        logprobs = (top or 0) if wanted else None
    else:
        logprobs = integer(req, "logprobs", 0, 5, None)
    seed = req.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not -2**63 <= seed < 2**64):
        raise BadChat("seed must be an integer", "seed")
    return Sampling(
        temperature=number(req, "temperature", 0.0, 2.0, default_temperature),
        top_p=number(req, "top_p", 0.0, 1.0, 1.0),
        top_k=max(integer(req, "top_k", -1, vocab, 0) or 0, 0),  # vLLM's -1 and 0: every token
        min_p=number(req, "min_p", 0.0, 1.0, 0.0),
        presence_penalty=number(req, "presence_penalty", -2.0, 2.0, 0.0),
        frequency_penalty=number(req, "frequency_penalty", -2.0, 2.0, 0.0),
        seed=seed, logprobs=logprobs, logit_bias=_bias(req.get("logit_bias"), vocab))


def _bias(raw: Any, vocab: int) -> dict[int, float]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > 300:
        raise BadChat("logit_bias must be an object of at most 300 token ids to a number from -100 to 100",
                      "logit_bias")
    out = {}
    for key, value in raw.items():
        if not str(key).isdigit() or int(key) >= vocab:
            raise BadChat(f"logit_bias: {key!r} is not a token id of this model (0 to {vocab - 1})", "logit_bias")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not -100 <= value <= 100:
            raise BadChat(f"logit_bias[{key}] must be a number from -100 to 100", "logit_bias")
        out[int(key)] = float(value)
    return out
