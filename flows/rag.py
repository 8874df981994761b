"""RAG sync: ingest a RAG's documents into its vector store (its first ingestion, or a sync).

1. Begin: the RAG (CREATE IN PROGRESS the first time; a sync is UPDATE IN PROGRESS already) and a
   record in its ingestion history.
2. List the documents under its path; unsupported, oversized and oddly named files are skipped with
   the reason.
3. Diff them against the vector store by content hash: added, modified, deleted, unchanged (a
   document whose size and modification time, or ETag, did not change is not read again).
4. Ingest the added and modified ones: parse, chunk, embed in batches, one transaction per document
   (a document that cannot be read is skipped with the reason).
5. Remove the vectors of deleted documents; build the HNSW index once it pays.
6. End: the history record (counts, skipped files, duration, state) and the RAG's status: ACTIVE, or
   CREATE FAILED / UPDATE FAILED with the reason. A failed ingestion resumes: documents already
   written are unchanged at the next sync, so they are not embedded again.

On a cluster (the run in a pod) the run applies the RAG's query service first (tasks/rag_cluster.py), and routes
it once its pods are ready, before the RAG is ACTIVE. A run given `withdraw` deletes a deleted RAG's objects.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote
from pydantic import BaseModel, Field

from mlyard.core.names import FLOW_RAG_SYNC
from mlyard.core.settings import Settings, in_kubernetes_pod
from mlyard.core.specs.rag import RagSpec
from mlyard.registry.rags import Rags
from mlyard.tasks.documents import Skipped
from mlyard.tasks.ingestion import Parts, diff_step, ingest_step, list_step, preload_model
from mlyard.tasks.orchestration import run_name
from mlyard.tasks.vectorstore import VectorStore, conninfo


class RagSyncSpec(BaseModel):
    """Which RAG to ingest (its spec is the one it was created with)."""

    rag: str = Field(description="The RAG's name (mlyard rags list).")
    withdraw: int | None = Field(default=None, description="On a cluster, the id of a RAG deleted: its query "
                                 "service's objects are deleted (mlyard rags delete queues it); nothing is ingested.")


class RagSyncResult(BaseModel):
    rag: str
    state: str = Field(description="ACTIVE, CREATE FAILED or UPDATE FAILED.")
    counts: dict[str, float] = Field(description="added, modified, deleted, unchanged, skipped, failed, chunks, "
                                                 "seconds, embed_seconds.")


@flow(name=FLOW_RAG_SYNC, flow_run_name=run_name(FLOW_RAG_SYNC),
      description="Ingest a RAG's documents into its vector store: list, diff by content hash, parse, chunk, embed, "
                  "upsert, delete what disappeared.")
def rag_sync(spec: RagSyncSpec) -> RagSyncResult:
    logger = get_run_logger()
    if spec.withdraw is not None:
        from mlyard.tasks.kubernetes import cluster_client
        from mlyard.tasks.rag_cluster import withdraw

        if (alive := Rags(Parts().catalog).by_id(spec.withdraw)) is not None:  # only a deleted RAG's objects go
            raise ValueError(f"withdraw: RAG id {spec.withdraw} is {alive.name!r}, which exists: delete it with "
                             "`mlyard rags delete`, which withdraws its objects")
        gone = withdraw(cluster_client("withdraw", "kubernetes"), Settings().kube_namespace, spec.withdraw)
        logger.info(f"RAG {spec.rag} (id {spec.withdraw}) deleted: " + (", ".join(gone) or "no object was left"))
        return RagSyncResult(rag=spec.rag, state="DELETED", counts={"objects_deleted": len(gone)})
    p = Parts()
    rags = Rags(p.catalog)
    t0 = time.monotonic()

    # 1. Begin. The embedding model loads meanwhile (importing torch is most of it): it is needed as
    # soon as the diff finds a document to embed.
    record = rags.get(spec.rag)
    from mlyard.tasks.rag_service import service_url

    if service_url(p.settings.home_dir, spec.rag) is None:
        preload_model(RagSpec.model_validate(record.spec))
    first = record.status in ("CREATE REQUESTED", "CREATE IN PROGRESS", "CREATE FAILED")
    if first:
        record = rags.set_status(spec.rag, "CREATE IN PROGRESS")
    elif record.status != "UPDATE IN PROGRESS":  # started by a schedule or the UI's Run, not `rags sync`
        record = rags.begin_sync(spec.rag)  # refused while the RAG is being deleted
    rag = RagSpec.model_validate(record.spec)
    history = rags.start_ingestion(record.id, str(flow_run.get_id() or "") or None)
    counts: dict[str, float] = {}
    skipped: list[Skipped] = []
    manifests = None
    try:
        if in_kubernetes_pod():  # a cluster's run: the query service as the spec says now (tasks/rag_cluster.py)
            from mlyard.tasks.rag_cluster import deploy

            manifests, why = deploy(spec.rag, record.id, rag)
            if why:
                logger.warning(f"RAG {spec.rag}: {why}")
        from mlyard.core.connection import read_state

        state = read_state(p.settings)
        store = VectorStore(conninfo(rag.vector_store, p.settings, state.vector_store_url if state else None), record.id)

        # 2. List.
        listing = list_step(p, rag.path)
        skipped = list(listing.skipped)
        for s in skipped:
            logger.warning(f"skipped {s.name}: {s.reason}")

        # 3. Diff.
        d = diff_step(p, quote(listing), store)  # quote: Prefect need not walk 10,000s of entries
        counts.update(d.counts())
        logger.info("documents: " + ", ".join(f"{v} {k}" for k, v in d.counts().items()))

        # 4. Ingest what changed.
        report = ingest_step(p, rag, quote(listing), d.added + d.modified, store)
        skipped += report.failed
        for s in report.failed:
            logger.warning(f"skipped {s.name}: {s.reason}")
        failed_names = {s.name for s in report.failed}
        store.remove(sorted(failed_names & set(d.modified)))  # a modified file that no longer reads: its old text goes
        counts.update(added=len(set(d.added) - failed_names), modified=len(set(d.modified) - failed_names))

        # 5. Deleted documents; the index.
        store.remove(d.deleted)
        indexed = store.index()
        counts.update(chunks=report.chunks, failed=len(report.failed), skipped=len(listing.skipped),
                      embed_seconds=round(report.embed_seconds, 3), ingest_seconds=round(report.seconds, 3),
                      seconds=round(time.monotonic() - t0, 3),
                      hnsw=int(indexed), **{f"store_{k}": v for k, v in store.counts().items()})
        store.close()
    except Exception as exc:
        # 6. End (failed): nothing half-written (each document is one transaction); the next sync resumes.
        failed_state = "CREATE FAILED" if first else "UPDATE FAILED"
        reason = f"{type(exc).__name__}: {exc}" if not str(exc).startswith(type(exc).__name__) else str(exc)
        counts["seconds"] = round(time.monotonic() - t0, 3)
        rags.end_ingestion(history.id, "FAILED", counts, [s.__dict__ for s in skipped], reason)
        rags.set_status(spec.rag, failed_state, reason)
        raise

    # 6. End: on a cluster, the query service routed first, so that an ACTIVE RAG answers.
    if manifests is not None:
        from mlyard.tasks.rag_cluster import route

        if why := route(rags, record.id, rag, manifests):
            logger.error(f"RAG {spec.rag}: its query service is not ready, and answers nothing yet: {why}")
    rags.end_ingestion(history.id, "COMPLETE", counts, [s.__dict__ for s in skipped])
    rags.set_status(spec.rag, "ACTIVE")
    logger.info(f"RAG {spec.rag}: ACTIVE ({counts.get('store_documents', 0)} documents, "
                f"{counts.get('store_chunks', 0)} chunks; {counts['seconds']:.1f} s)")
    return RagSyncResult(rag=spec.rag, state="ACTIVE", counts=counts)
