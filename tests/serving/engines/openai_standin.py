#!/usr/bin/env python3
"""A STAND-IN for an inference engine's OpenAI-compatible server, for mlyard's tests only: it is not vLLM,
TGI or llama.cpp. Put on PATH under an engine's command name (`vllm`, `text-generation-launcher`, ...), it
takes the engine's own arguments (the port after --port) and answers as those servers do: GET /health
and /info, GET /v1/models, POST /v1/chat/completions (streamed or not, with OpenAI's `usage`, in a stream
only when asked). Its answer says the argv it was started with and the environment it was given, so a
test can see what mlyard ran. Standard library only; it binds 127.0.0.1 whatever --host says."""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARGV = [os.path.basename(sys.argv[0]), *sys.argv[1:]]
PORT = int(sys.argv[sys.argv.index("--port") + 1])


class Engine(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked streams

    def do_GET(self) -> None:
        if self.path in ("/health", "/info", "/v1/health/ready"):
            return self._send(200, {"ok": True})
        if self.path == "/v1/models":
            return self._send(200, {"object": "list", "data": [{"id": "standin", "object": "model"}]})
        return self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        text = f"argv={' '.join(ARGV)} env={os.environ.get('STANDIN_SAYS', '')}"
        prompt = sum(len(m["content"].split()) for m in body["messages"])
        usage = {"prompt_tokens": prompt, "completion_tokens": len(text.split()),
                 "total_tokens": prompt + len(text.split())}
        if not body.get("stream"):
            return self._send(200, {"id": "chatcmpl-standin", "object": "chat.completion", "model": "standin",
                                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                 "finish_reason": "stop"}], "usage": usage})
        # a stream in HTTP/1.1's chunks, as the engines send theirs: its end is said, not a closed connection
        # (whose close, racing the last read under load, a proxy may take for an answer broken off)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

        def event(doc: dict | str) -> None:
            data = b"data: " + (doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()) + b"\n\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        chunk = {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "model": "standin"}
        for i, word in enumerate(text.split()):
            delta = {"content": ("" if i == 0 else " ") + word}
            event({**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        event({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            event({**chunk, "choices": [], "usage": usage})
        event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")

    def _send(self, status: int, doc: dict) -> None:
        raw = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args) -> None:
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Engine).serve_forever()
