"""Continuous batching as users meet it (issue 55 §2): `mlyard serve --chat-model smollm2` with default
settings in its own process, chats streamed with the `openai` package at temperature 0, each its own prompt,
all with the same max_tokens. In one run:

1. the same 8 chats one at a time (each waits for the last to end), then all 8 at once: aggregate generated
   tokens a second (completion tokens over the wall time), and each chat's time to first token; and the
   time to first token of a chat that joins 7 others already generating (median of 3);
2. the curve at 1, 2, 4, 8 and 16 at once: aggregate tokens a second, the median and worst time to first
   token, and whether any chat waited for a whole other generation (its first token later than a lone
   chat's whole answer took);
3. the same 8 at once against `--max-sequences 0` (one generation at a time, the server before batching).

    python bench/chat_batching.py [MAX_TOKENS=64]
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MLYARD = str(Path(sys.executable).parent / "mlyard")
TOPICS = ["a lighthouse", "a robot gardener", "the moon", "a lost key", "an old library", "a rainy city", "a chess "
          "match", "a kite", "a river", "a clockmaker", "a snowstorm", "a bakery", "a train journey", "a fox",
          "a violin", "a volcano"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    proc = subprocess.Popen([MLYARD, "serve", "--chat-model", "smollm2", "--port", str(port), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("serving "):
            break
    return proc, f"http://127.0.0.1:{port}/openai/v1"


def chat(base_url: str, topic: str, max_tokens: int, began: float, started: Any = None, temperature: float = 0,
         seed: int | None = None) -> dict:
    """One streamed chat: when its first token came (after `began`), when it ended, its tokens and text;
    `started` (an Event) is set at its first token."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    asked = time.perf_counter()
    first, text, tokens = None, "", 0
    for chunk in client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": f"Write a short story about {topic}."}],
            max_tokens=max_tokens, temperature=temperature, stream=True, stream_options={"include_usage": True},
            **({"seed": seed} if seed is not None else {})):
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None and started is not None:
                started.set()
            first = first or time.perf_counter()
            text += chunk.choices[0].delta.content
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    assert first is not None
    return {"ttft": first - asked, "end": time.perf_counter() - began, "tokens": tokens, "text": text}


def at_once(base_url: str, topics: list[str], max_tokens: int) -> tuple[float, list[dict]]:
    began = time.perf_counter()
    with ThreadPoolExecutor(len(topics)) as pool:
        done = list(pool.map(lambda t: chat(base_url, t, max_tokens, began), topics))
    return time.perf_counter() - began, done


def joining(base_url: str, max_tokens: int, running: int = 7) -> float:
    """Time to first token of a chat that joins `running` others already generating (their answers twice as
    long, so that they run throughout)."""
    events = [threading.Event() for _ in range(running)]
    with ThreadPoolExecutor(running) as pool:
        going = [pool.submit(chat, base_url, TOPICS[8 + i], max_tokens * 2, time.perf_counter(), events[i])
                 for i in range(running)]
        for event in events:
            event.wait(600)
        joined = chat(base_url, TOPICS[0], max_tokens, time.perf_counter())
        for f in going:
            f.result()
    return joined["ttft"]


def main() -> None:
    max_tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    report: dict = {"max_tokens": max_tokens}
    proc, url = start()
    try:
        chat(url, "warming up", 8, time.perf_counter())  # the batch's first step starts its loop
        began = time.perf_counter()
        alone = [chat(url, t, max_tokens, time.perf_counter()) for t in TOPICS[:8]]
        alone_seconds = time.perf_counter() - began
        wall, together = at_once(url, TOPICS[:8], max_tokens)
        lone_answer = statistics.median(a["end"] for a in alone)
        rate_alone = sum(a["tokens"] for a in alone) / alone_seconds
        rate_together = sum(t["tokens"] for t in together) / wall
        report["eight"] = {
            "one_at_a_time_tok_s": round(rate_alone, 1), "at_once_tok_s": round(rate_together, 1),
            "ratio": round(rate_together / rate_alone, 2),
            "ttft_alone_median_s": round(statistics.median(a["ttft"] for a in alone), 3),
            "ttft_at_once_median_s": round(statistics.median(t["ttft"] for t in together), 3),
            "ttft_at_once_worst_s": round(max(t["ttft"] for t in together), 3),
            "same_answers": sum(a["text"] == t["text"] for a, t in zip(alone, together))}
        report["eight"]["ttft_joining_seven_running_s"] = round(statistics.median(
            joining(url, max_tokens) for _ in range(3)), 3)
        print(json.dumps(report["eight"]), flush=True)
        curve = []
        for n in (1, 2, 4, 8, 16):
            wall, done = at_once(url, TOPICS[:n], max_tokens)
            ttfts = [d["ttft"] for d in done]
            curve.append({"concurrent": n, "tok_s": round(sum(d["tokens"] for d in done) / wall, 1),
                          "ttft_median_s": round(statistics.median(ttfts), 3), "ttft_worst_s": round(max(ttfts), 3),
                          "waited_for_a_whole_answer": sum(t > lone_answer for t in ttfts)})
            print(json.dumps(curve[-1]), flush=True)
        report["curve"] = curve
    finally:
        proc.terminate()
        proc.wait(30)
    proc, url = start("--max-sequences", "0")
    try:
        chat(url, "warming up", 8, time.perf_counter())
        wall, done = at_once(url, TOPICS[:8], max_tokens)
        report["eight_without_batching"] = {"tok_s": round(sum(d["tokens"] for d in done) / wall, 1),
                                            "ttft_worst_s": round(max(d["ttft"] for d in done), 3)}
        print(json.dumps(report["eight_without_batching"]), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
