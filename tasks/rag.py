"""The steps of a RAG ingestion (flows/rag.py): list the documents, diff them against what the vector
store holds, and ingest what changed.

Ingestion keeps the embedding model busy, since it is the expensive part: documents are read,
parsed and chunked by a thread pool ahead of it, their chunks are embedded in full batches across
documents, and each document is written in its own transaction as soon as its vectors are there. A
document that cannot be read is skipped with its reason; it does not fail the ingestion.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from mlyard.core.errors import DocumentError, StorageError
from mlyard.core.specs.rag import RagSpec
from mlyard.tasks.documents import Chunk, Entry, Skipped, chunk, content_hash, parse, select
from mlyard.tasks.vectorstore import VectorStore


@dataclass
class Listing:
    taken: list[Entry]
    skipped: list[Skipped]
    uris: dict[str, str]  # each document's own URI
    stamps: dict[str, str] = field(default_factory=dict)  # size and mtime (or ETag): changes with the content


@dataclass
class Diff:
    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("added", "modified", "deleted", "unchanged")}


@dataclass
class Report:
    documents: int = 0  # written (added or modified)
    chunks: int = 0  # embedded and written
    failed: list[Skipped] = field(default_factory=list)  # could not be read: skipped with the reason
    embed_seconds: float = 0.0
    seconds: float = 0.0


def list_documents(storage: Any, path: str) -> Listing:
    """The files under `path` with their sizes, split into those taken and those skipped."""
    entries = storage.entries(path, field="path")
    taken, skipped = select(Entry(name, size) for name, size, _, _ in entries)
    return Listing(taken, skipped, {name: uri for name, _, uri, _ in entries},
                   {name: stamp for name, _, _, stamp in entries})


def diff(hashes: dict[str, str], known: dict[str, str]) -> Diff:
    """`hashes`: each document now and its content hash; `known`: what the vector store holds."""
    d = Diff()
    for name, h in sorted(hashes.items()):
        if name not in known:
            d.added.append(name)
        elif known[name] != h:
            d.modified.append(name)
        else:
            d.unchanged.append(name)
    d.deleted = sorted(set(known) - set(hashes))
    return d


@dataclass
class _Parsed:
    name: str
    hash: str
    chunks: list[Chunk]
    error: str | None = None


def ingest(spec: RagSpec, read: Callable[[str], bytes], store: VectorStore, embedder: Any, tokenizer: Any,
           names: list[str], progress: Callable[[int, int, int], None] | None = None, threads: int = 2,
           stamps: dict[str, str] | None = None) -> Report:
    """Parse, chunk, embed and write the documents `names` (`read(name)` gives a document's bytes;
    `stamps`, their stamps at listing, are kept with them for the next diff). `progress(done, total,
    chunks)` is called after each document."""
    report = Report()
    t0 = time.monotonic()

    def prepare(name: str) -> _Parsed:
        try:
            data = read(name)
        except StorageError as exc:  # removed or unreadable since it was listed: skipped, saying why
            return _Parsed(name, "", [], f"cannot be read: {exc}")
        try:
            sections = parse(data, name)
            chunks = chunk(sections, tokenizer, spec.chunk_tokens, spec.chunk_overlap)
        except DocumentError as exc:
            return _Parsed(name, content_hash(data), [], exc.reason)
        if not chunks:
            return _Parsed(name, content_hash(data), [], "no text could be extracted")
        return _Parsed(name, content_hash(data), chunks)

    batch = max(1, int(getattr(embedder, "batch_size", 64)))
    pending: list[_Parsed] = []
    done = 0

    def flush() -> None:
        nonlocal done
        texts = [c.text for p in pending for c in p.chunks]
        e0 = time.monotonic()
        vectors = embedder.encode(texts)
        report.embed_seconds += time.monotonic() - e0
        at = 0
        for p in pending:
            n = len(p.chunks)
            store.put(p.name, p.hash, [(c.index, c.where, c.text) for c in p.chunks], vectors[at:at + n],
                      (stamps or {}).get(p.name))
            at += n
            report.documents += 1
            report.chunks += n
            done += 1
            if progress:
                progress(done, len(names), report.chunks)
        pending.clear()

    for parsed in _ahead(prepare, names, threads):
        if parsed.error is not None:
            report.failed.append(Skipped(parsed.name, parsed.error))
            done += 1
            continue
        pending.append(parsed)
        if sum(len(p.chunks) for p in pending) >= batch:
            flush()
    if pending:
        flush()
    report.seconds = time.monotonic() - t0
    return report


def _ahead(fn: Callable[[str], _Parsed], names: list[str], threads: int, lookahead: int = 16) -> Iterator[_Parsed]:
    """fn over names, in order, computed by a thread pool up to `lookahead` names ahead."""
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="rag-parse") as pool:
        futures: list[Future] = []
        it = iter(names)
        for name in it:
            futures.append(pool.submit(fn, name))
            if len(futures) >= lookahead:
                break
        while futures:
            result = futures.pop(0).result()
            nxt = next(it, None)
            if nxt is not None:
                futures.append(pool.submit(fn, nxt))
            yield result
