"""RAG figures (issue 12), on a throwaway embedded stack (real Prefect server and worker, the embedded
PostgreSQL + pgvector, the offline all-MiniLM-L6-v2 on this CPU), default settings:

1. ingestion throughput: COPIES copies of Python's language reference (examples/rag/quality.py, one
   file per topic) ingested as a user does it (`rags.create(..., wait=True)`: a flow run of
   rag-sync/rag-sync-local); chunks per second of the ingestion (read, parse, chunk, embed, write: the flow's
   ingest step, from its history record), of the whole flow run (with listing, hashing and loading
   the model) and of the whole command, against the embedding model's own encode rate on the same
   chunks, measured in the same run (SentenceTransformer.encode, the same batch size).
   Target: ingestion >= 0.8x encode.
2. sync after changing 1 file of FILES: a RAG over FILES small text files; one is changed and
   `rags.sync(wait=True)` timed from the call to its return, then changed again and `mlyard rags sync
   many --wait` timed from a shell (a fresh process); the chunks each embedded are counted. 3 rounds.
   Target: < 10 s, only that file's chunks.
3. retrieval through the route, no LLM: a RAG whose store holds CHUNKS chunks (real embeddings of the
   reference's chunks with a little noise, written straight to its tables; HNSW built as ingestion
   builds it), QUERIES questions sent one after another to POST /rag/v1/search on the gateway by one
   HTTP client. Target: p50 <= 50 ms, p99 <= 150 ms.
4. streaming: time to the first token through POST /rag/v1/query (stream) against the same LLM asked
   directly with the same filled prompt (the RAG's own SmolLM2 replica), ASKS each, interleaved.

Run: `python bench/rag.py` (about 15 minutes; never part of the tests). `--only N` runs one part.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "rag"))
import _stack  # noqa: E402


def _wait_deployed(rags, name: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while rags.show(name)["deploy_status"] != "COMPLETE":
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: the query service did not come up: {rags.show(name)['deploy_status']}")
        time.sleep(1)


def throughput(home: Path, copies: int) -> None:
    import quality

    import mlyard.rags as rags
    from mlyard.core.specs.rag import RagSpec
    from mlyard.tasks.documents import chunk, parse
    from mlyard.tasks.embeddings import embedder, tokenizer_for

    folder = home.parent / "bench-reference"
    for i in range(copies):
        quality.write(folder / f"copy{i}")
    t0 = time.perf_counter()
    view = rags.create({"name": "reference", "path": str(folder)}, wait=True)
    whole = time.perf_counter() - t0
    last = view["last_ingestion"]
    chunks = last["chunks"]
    spec = RagSpec(name="x", path=str(folder))
    tok = tokenizer_for(spec.embedding)
    texts = [c.text for p in sorted(folder.rglob("*.md"))
             for c in chunk(parse(p.read_bytes(), p.name), tok, spec.chunk_tokens, spec.chunk_overlap)]
    model = embedder(spec.embedding)
    model.encode(texts[:64])  # warm
    e0 = time.perf_counter()
    model.encode(texts)
    encode = time.perf_counter() - e0
    ingest_rate, encode_rate = chunks / last["ingest_seconds"], len(texts) / encode
    print(json.dumps({"part": "throughput", "documents": last["added"], "chunks": chunks,
                      "flow_seconds": last["seconds"], "ingest_step_seconds": last["ingest_seconds"],
                      "embed_seconds_within": last["embed_seconds"], "command_seconds": round(whole, 2),
                      "flow_chunks_per_s": round(chunks / last["seconds"], 1),
                      "ratio_flow_vs_encode": round(chunks / last["seconds"] / encode_rate, 3),
                      "ingestion_chunks_per_s": round(ingest_rate, 1),
                      "command_chunks_per_s": round(chunks / whole, 1),
                      "encode_alone_chunks_per_s": round(encode_rate, 1),
                      "ratio_ingestion_vs_encode": round(ingest_rate / encode_rate, 3),
                      "ratio_command_vs_encode": round(chunks / whole / encode_rate, 3)}), flush=True)
    rags.delete("reference")


def sync_one(home: Path, files: int, rounds: int = 3) -> None:
    import mlyard.rags as rags

    folder = home.parent / "bench-many"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (folder / f"note-{i:05d}.txt").write_text(f"Note {i}: the value of item {i} is {i * 7 % 1000} units, "
                                                  f"kept in bin {i % 97}.\n")
    t0 = time.perf_counter()
    rags.create({"name": "many", "path": str(folder)}, wait=True, timeout_seconds=7200)
    first = time.perf_counter() - t0
    import subprocess

    mlyard_bin = str(Path(sys.executable).parent / "mlyard")
    for i in range(rounds):
        (folder / "note-04242.txt").write_text(f"Note 4242 was changed ({i}): the item moved to bin 3 and is worth "
                                               "12 units.\n")
        t0 = time.perf_counter()
        view = rags.sync("many", wait=True)
        took = time.perf_counter() - t0
        last = view["last_ingestion"]
        # the same from a shell: a fresh process that imports the CLI and Prefect's client first
        (folder / "note-04242.txt").write_text(f"Note 4242 was changed ({i}) again.\n")
        t0 = time.perf_counter()
        out = subprocess.run([mlyard_bin, "rags", "sync", "many", "--wait", "--json"], capture_output=True, text=True,
                             check=True)
        took_cli = time.perf_counter() - t0
        cli = json.loads(out.stdout)["last_ingestion"]
        print(json.dumps({"part": "sync_one_of_many", "files": files, "first_ingestion_seconds": round(first, 1),
                          "sync_seconds": round(took, 2), "flow_seconds": last["seconds"],
                          "modified": last["modified"], "unchanged": last["unchanged"],
                          "chunks_embedded": last["chunks"], "cli_sync_seconds": round(took_cli, 2),
                          "cli_flow_seconds": cli["seconds"], "cli_chunks_embedded": cli["chunks"]}), flush=True)
    rags.delete("many")


def retrieval(home: Path, settings, total: int, queries: int) -> None:
    import httpx
    import numpy as np
    import quality

    import mlyard.rags as rags
    from mlyard.core.connection import gateway_url, read_state
    from mlyard.core.specs.rag import RagSpec
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.rags import Rags
    from mlyard.tasks.documents import chunk, parse
    from mlyard.tasks.embeddings import embedder, tokenizer_for
    from mlyard.tasks.vectorstore import VectorStore

    folder = home.parent / "bench-route"
    docs = quality.write(folder / "reference")
    rags.create({"name": "route", "path": str(folder), "llm": {"base_url": "http://127.0.0.1:9/v1"}}, wait=True)
    spec = RagSpec(name="route", path=str(folder))
    tok, model = tokenizer_for(spec.embedding), embedder(spec.embedding)
    base = [(p.name, c) for p in docs for c in chunk(parse(p.read_bytes(), p.name), tok, 200, 40)]
    vectors = model.encode([c.text for _, c in base])
    record = Rags(Catalog(settings.catalog_db_url)).get("route")
    store = VectorStore(read_state(settings).vector_store_url, record.id)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    written, copy = len(base), 0
    while written < total:  # noisy copies of the real chunks, 1,000 chunks a transaction
        n = min(1000, total - written)
        idx = rng.integers(0, len(base), n)
        noisy = vectors[idx] + rng.normal(0, 0.02, (n, vectors.shape[1])).astype(np.float32)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        store.put(f"synthetic-{copy}", "-", [(i, base[j][1].where, base[j][1].text) for i, j in enumerate(idx)], noisy)
        written += n
        copy += 1
    fill = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.index()
    index = time.perf_counter() - t0
    counts = store.counts()
    store.close()
    _wait_deployed(rags, "route")
    url = f"{gateway_url(settings)}/rag/v1/search"
    questions = [q for q, _ in quality.QUESTIONS]
    lat: list[float] = []
    with httpx.Client(timeout=30) as client:
        for q in questions:  # warm
            client.post(url, json={"model": "route", "query": q})
        for i in range(queries):
            q = questions[i % len(questions)]
            t = time.perf_counter()
            resp = client.post(url, json={"model": "route", "query": q})
            lat.append((time.perf_counter() - t) * 1000)
            assert resp.status_code == 200, resp.text
    lat.sort()
    q = statistics.quantiles(lat, n=100)
    print(json.dumps({"part": "retrieval_route", "chunks": counts["chunks"], "fill_seconds": round(fill, 1),
                      "hnsw_build_seconds": round(index, 1), "queries": queries, "p50_ms": round(q[49], 1),
                      "p99_ms": round(q[98], 1), "max_ms": round(lat[-1], 1)}), flush=True)
    rags.delete("route")


def ttft(home: Path, settings, asks: int) -> None:
    import httpx
    import quality

    import mlyard.rags as rags
    from mlyard.core.connection import gateway_url
    from mlyard.serving.rag import build, context_of

    folder = home.parent / "bench-ttft"
    quality.write(folder)
    rags.create({"name": "chat", "path": str(folder), "llm": {"max_tokens": 8}}, wait=True)
    _wait_deployed(rags, "chat")
    service = build("chat")  # to fill the same prompt the route fills, and to find the LLM replica
    base = service.llm_base()
    served = httpx.get(f"{base}/models").json()["data"][0]["id"]
    route_t, direct_t = [], []

    def first(client: httpx.Client, url: str, body: dict) -> float:
        t = time.perf_counter()
        with client.stream("POST", url, json=body) as resp:
            for line in resp.iter_lines():
                if line.startswith("data:") and '"content":"' in line and '"content":""' not in line:
                    return time.perf_counter() - t
        return float("nan")

    with httpx.Client(timeout=120) as client:
        for i in range(asks):
            q = quality.QUESTIONS[i % len(quality.QUESTIONS)][0]
            hits = service._retrieve(q, service.spec.top_k)
            prompt = service.spec.prompt.format(context=context_of(hits), question=q)
            route_t.append(first(client, f"{gateway_url(settings)}/rag/v1/query",
                                 {"model": "chat", "messages": [{"role": "user", "content": q}], "stream": True,
                                  "max_tokens": 8}))
            direct_t.append(first(client, f"{base}/chat/completions",
                                  {"model": served, "messages": [{"role": "user", "content": prompt}], "stream": True,
                                   "max_tokens": 8}))
    print(json.dumps({"part": "ttft", "asks": asks, "route_median_s": round(statistics.median(route_t), 3),
                      "llm_direct_median_s": round(statistics.median(direct_t), 3),
                      "overhead_median_ms": round((statistics.median(route_t) - statistics.median(direct_t)) * 1000, 1)}),
          flush=True)
    rags.delete("chat")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--asks", type=int, default=10)
    ap.add_argument("--only", type=int, choices=[1, 2, 3, 4])
    args = ap.parse_args()
    settings = _stack.start()
    home = settings.home_dir
    print(json.dumps({"cores": os.cpu_count()}), flush=True)
    if args.only in (None, 1):
        throughput(home, args.copies)
    if args.only in (None, 3):
        retrieval(home, settings, args.chunks, args.queries)
    if args.only in (None, 4):
        ttft(home, settings, args.asks)
    if args.only in (None, 2):
        sync_one(home, args.files)


if __name__ == "__main__":
    main()
