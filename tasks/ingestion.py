"""The @task steps of a RAG sync (flows/rag.py): list the documents, diff them against the vector store,
ingest what changed. They wrap the plain functions of tasks/rag.py with retries, logging and state.
"""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlyard.core.settings import Settings
from mlyard.core.specs.rag import RagSpec
from mlyard.registry.catalog import Catalog
from mlyard.tasks.documents import content_hash
from mlyard.tasks.rag import Diff, Listing, Report, diff, ingest, list_documents
from mlyard.tasks.vectorstore import VectorStore


class Parts:
    """What a RAG sync touches: settings, storage and the catalog (not mlyard.flows.platform, which loads
    MLflow: 2.5 s of a sync's start that it never uses)."""

    def __init__(self) -> None:
        from mlyard.tasks.logrecords import install
        from mlyard.tasks.storage import Storage

        self.settings = Settings()
        install(self.settings)  # what the run logs, also as structured records (`mlyard logs`), as Platform does
        self.storage = Storage(self.settings)
        self.catalog = Catalog(self.settings.catalog_db_url)



@task(name="list-documents", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def list_step(p: Parts, path: str) -> Listing:
    return list_documents(p.storage, path)


@task(name="diff-documents", cache_policy=NO_CACHE)
def diff_step(p: Parts, listing: Listing, store: VectorStore) -> Diff:
    """Added, modified, deleted and unchanged, by content hash. A document whose stamp (size and
    modification time, or ETag) is the one it had when it was ingested is not read again, as rsync's
    quick check; any other is read and hashed, and one whose content turns out the same only gets its
    new stamp."""
    from concurrent.futures import ThreadPoolExecutor

    from mlyard.core.errors import StorageError

    def hashed(name: str) -> str | None:
        try:
            return content_hash(p.storage.read_bytes(listing.uris[name], "path"))
        except StorageError:  # removed since it was listed: as if it were not there
            return None

    known = store.known()
    hashes: dict[str, str] = {}
    check = []
    for e in listing.taken:
        was = known.get(e.name)
        if was is not None and was[1] is not None and was[1] == listing.stamps.get(e.name):
            hashes[e.name] = was[0]
        else:
            check.append(e.name)
    with ThreadPoolExecutor(max_workers=4) as pool:
        hashes.update((name, h) for name, h in zip(check, pool.map(hashed, check)) if h is not None)
    d = diff(hashes, {name: h for name, (h, _) in known.items()})
    same = set(d.unchanged)
    store.restamp({name: listing.stamps[name] for name in check if name in same and name in listing.stamps})
    return d


def _model(p: Parts, spec: RagSpec):
    """The embedding model: the RAG's running query service has it loaded (a sync then embeds through
    it, with no torch to import here), else it is loaded in this process (preloaded at the start)."""
    from mlyard.core.connection import replica_headers
    from mlyard.core.specs.rag import DEFAULT_EMBEDDING_MODEL, EmbeddingSpec
    from mlyard.tasks.embeddings import ServiceEmbedder, embedder
    from mlyard.tasks.rag_service import service_url

    if not spec.embedding.url and spec.embedding.model == DEFAULT_EMBEDDING_MODEL:
        url = service_url(p.settings.home_dir, spec.name)
        if url is not None:
            try:
                service = EmbeddingSpec(url=url, model=spec.embedding.model, batch_size=spec.embedding.batch_size)
                return ServiceEmbedder(service, headers=replica_headers(p.settings)), f"the query service at {url}"
            except Exception:  # noqa: BLE001 - it went away meanwhile: load the model here
                pass
    return embedder(spec.embedding), "this process"


@task(name="ingest-documents", cache_policy=NO_CACHE)
def ingest_step(p: Parts, spec: RagSpec, listing: Listing, names: list[str], store: VectorStore) -> Report:
    from mlyard.tasks.embeddings import tokenizer_for

    logger = get_run_logger()
    if not names:
        return Report()
    model, where = _model(p, spec)
    logger.info(f"embedding {len(names)} documents with {spec.embedding.model} in {where}")
    store.ensure(model.dim)
    last = [0.0]

    def progress(done: int, total: int, chunks: int) -> None:
        if time.monotonic() - last[0] > 5 or done == total:
            last[0] = time.monotonic()
            logger.info(f"ingested {done}/{total} documents ({chunks} chunks)")

    return ingest(spec, lambda name: p.storage.read_bytes(listing.uris[name], "path"), store, model,
                  tokenizer_for(spec.embedding), names, progress, stamps=listing.stamps)


def preload_model(rag: RagSpec) -> None:
    """Load the embedding model in a background thread (importing torch is most of it) while the
    sync begins, lists and diffs."""
    import threading

    from mlyard.tasks.embeddings import embedder

    def load() -> None:
        try:
            embedder(rag.embedding)
        except Exception:  # noqa: BLE001 - ingest_step loads it again and reports the error there
            pass

    threading.Thread(target=load, name="rag-embedder", daemon=True).start()
