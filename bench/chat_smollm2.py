"""SmolLM2-135M-Instruct over /openai/v1/chat/completions as a user meets it: `mlyard serve
--chat-model smollm2` in its own process (time to ready, cached and not), then streamed chat requests
with the `openai` package: time to first token and tokens per second (completion tokens over the
time from the first to the last chunk, and over the whole request). Against the same model's bare
`generate()` in this process, same prompt and settings, same run.

    python bench/chat_smollm2.py [REQUESTS=5] [MAX_TOKENS=128]
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MLYARD = str(Path(sys.executable).parent / "mlyard")
PROMPT = [{"role": "user", "content": "Explain in a few sentences what a model registry is for."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cache: str) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "MLYARD_CACHE_DIR": cache}
    began = time.perf_counter()
    proc = subprocess.Popen([MLYARD, "serve", "--chat-model", "smollm2", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("serving "):
            break
    return proc, f"http://127.0.0.1:{port}/openai/v1", time.perf_counter() - began


def measure(base_url: str, requests: int, max_tokens: int) -> list[tuple[float, float, float, int]]:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused")
    out = []
    for _ in range(requests):
        began = time.perf_counter()
        first = last = None
        tokens = 0
        for chunk in client.chat.completions.create(model="smollm2", messages=PROMPT, max_tokens=max_tokens,
                                                    temperature=0, stream=True, stream_options={"include_usage": True}):
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or now
                last = now
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        assert first is not None and last is not None
        out.append((first - began, tokens / (last - first), tokens / (last - began), tokens))
    return out


def bare(max_tokens: int, requests: int) -> float:
    """Tokens/s of generate() on the loaded model in this process (no server, no streaming)."""
    from mlyard.serving.generative import ChatModel

    chat = ChatModel("smollm2")
    inputs = chat.prompt_ids(PROMPT, None)
    rates = []
    import torch

    for _ in range(requests):
        began = time.perf_counter()
        with torch.no_grad():
            out = chat.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False,
                                      pad_token_id=chat.tokenizer.eos_token_id)
        rates.append((out.shape[1] - inputs["input_ids"].shape[1]) / (time.perf_counter() - began))
    return statistics.median(rates)


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    max_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    cache = tempfile.mkdtemp(prefix="mlyard-bench-cache-")
    try:
        proc, url, cold = start(cache)  # an empty cache: de-quantizes the GGUF file
        proc.terminate()
        proc.wait()
        proc, url, warm = start(cache)
        try:
            got = measure(url, requests, max_tokens)
        finally:
            proc.terminate()
            proc.wait()
        os.environ["MLYARD_CACHE_DIR"] = cache
        bare_rate = bare(max_tokens, requests)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    ttft = statistics.median(g[0] for g in got)
    stream_rate = statistics.median(g[1] for g in got)
    whole_rate = statistics.median(g[2] for g in got)
    print(f"ready: first start {cold:.1f} s (GGUF de-quantized and cached), then {warm:.1f} s")
    print(f"time to first token: median {ttft * 1000:.0f} ms over {requests} streamed requests "
          f"({statistics.median(g[3] for g in got):.0f} tokens each)")
    print(f"tokens/s: {stream_rate:.1f} while streaming, {whole_rate:.1f} over the whole request; "
          f"bare generate() {bare_rate:.1f} -> ratio {whole_rate / bare_rate:.2f}")


if __name__ == "__main__":
    main()
