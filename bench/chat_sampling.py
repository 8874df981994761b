"""Sampled answers in the continuous batch as users meet them (issue 71 §1): `mlyard serve --chat-model smollm2`
with default settings in its own process, chats streamed with the `openai` package, each its own prompt, all
with the same max_tokens. In one run, three sets of 8 chats, each first one at a time (each waits for the
last to end), then all 8 at once:

1. greedy (temperature 0);
2. sampled as clients ask (temperature 0.7), each with its own seed, so that the one-at-a-time
   and the at-once answers are the same text (checked), and so the same number of tokens;
3. mixed: 4 greedy and 4 sampled at once.

Figures: aggregate generated tokens a second (completion tokens over the wall time) one at a time and at
once, their ratio per set, and the mixed batch's rate against the all-greedy one.

    python bench/chat_sampling.py [MAX_TOKENS=64]
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from chat_batching import TOPICS, chat, start


def one_set(url: str, asks: list[dict], max_tokens: int) -> dict:
    began = time.perf_counter()
    alone = [chat(url, TOPICS[i], max_tokens, time.perf_counter(), **ask) for i, ask in enumerate(asks)]
    alone_seconds = time.perf_counter() - began
    began = time.perf_counter()
    with ThreadPoolExecutor(len(asks)) as pool:
        together = list(pool.map(lambda ia: chat(url, TOPICS[ia[0]], max_tokens, began, **ia[1]), enumerate(asks)))
    wall = time.perf_counter() - began
    rate_alone = sum(a["tokens"] for a in alone) / alone_seconds
    rate_together = sum(t["tokens"] for t in together) / wall
    return {"one_at_a_time_tok_s": round(rate_alone, 1), "at_once_tok_s": round(rate_together, 1),
            "ratio": round(rate_together / rate_alone, 2), "tokens": sum(t["tokens"] for t in together),
            "same_answers": sum(a["text"] == t["text"] for a, t in zip(alone, together))}


def main() -> None:
    max_tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    greedy = [{"temperature": 0}] * 8
    sampled = [{"temperature": 0.7, "seed": 100 + i} for i in range(8)]
    mixed = [greedy[i] if i % 2 == 0 else sampled[i] for i in range(8)]
    report: dict = {"max_tokens": max_tokens}
    proc, url = start()
    try:
        chat(url, "warming up", 8, time.perf_counter())  # the batch's first step starts its loop
        for name, asks in (("greedy", greedy), ("sampled_0.7", sampled), ("mixed_4_4", mixed)):
            report[name] = one_set(url, asks, max_tokens)
            print(name, json.dumps(report[name]), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    report["mixed_against_greedy_at_once"] = round(report["mixed_4_4"]["at_once_tok_s"]
                                                  / report["greedy"]["at_once_tok_s"], 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
