"""The diff of a RAG sync against the real embedded PostgreSQL + pgvector: a document whose stamp (size
and modification time) is the one it was ingested with is not read again; a touched one is read,
found unchanged by its content hash and restamped; a changed one is modified; and a store made before
stamps existed is diffed by reading everything."""

import os

import numpy as np

from mlyard.tasks.documents import content_hash
from mlyard.tasks.ingestion import Parts, diff_step
from mlyard.tasks.rag import list_documents
from mlyard.tasks.vectorstore import VectorStore


def _put(store: VectorStore, listing, name: str, stamped: bool = True) -> None:
    data = open(listing.uris[name], "rb").read()
    store.put(name, content_hash(data), [(0, "", data.decode())], np.zeros((1, 384), dtype=np.float32),
              listing.stamps[name] if stamped else None)


def test_only_documents_whose_stamp_changed_are_read(stack, tmp_path):
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / name).write_text(f"the text of {name}\n")
    p = Parts()
    reads: list[str] = []
    read_bytes = p.storage.read_bytes
    p.storage.read_bytes = lambda uri, field="uri": reads.append(os.path.basename(uri)) or read_bytes(uri, field)
    store = VectorStore(stack.vector_store_url, 999_002)
    store.ensure(384)
    try:
        listing = list_documents(p.storage, str(tmp_path))
        for name in ("a.txt", "b.txt", "c.txt"):
            _put(store, listing, name)

        d = diff_step.fn(p, listing, store)
        assert (d.unchanged, reads) == (["a.txt", "b.txt", "c.txt"], [])

        st = (tmp_path / "a.txt").stat()
        os.utime(tmp_path / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched
        (tmp_path / "b.txt").write_text("b changed\n")
        (tmp_path / "c.txt").unlink()
        (tmp_path / "d.txt").write_text("new\n")
        listing = list_documents(p.storage, str(tmp_path))
        d = diff_step.fn(p, listing, store)
        assert (d.added, d.modified, d.deleted, d.unchanged) == (["d.txt"], ["b.txt"], ["c.txt"], ["a.txt"])
        assert sorted(reads) == ["a.txt", "b.txt", "d.txt"]
        assert store.known()["a.txt"][1] == listing.stamps["a.txt"]  # restamped: not read next time

        reads.clear()
        d = diff_step.fn(p, listing, store)
        assert "a.txt" not in reads and d.unchanged == ["a.txt"]

        # a document recorded without a stamp is read and hashed; so is everything in a store made before
        # stamps, which then gets them
        _put(store, listing, "b.txt", stamped=False)
        reads.clear()
        d = diff_step.fn(p, listing, store)
        assert sorted(reads) == ["b.txt", "d.txt"] and "b.txt" in d.unchanged  # d.txt: added, never stored
        store.connect().execute(f"ALTER TABLE {store.docs} DROP COLUMN stamp")
        reads.clear()
        d = diff_step.fn(p, listing, store)
        assert (sorted(reads), d.unchanged, d.added) == (["a.txt", "b.txt", "d.txt"], ["a.txt", "b.txt"], ["d.txt"])
        known = store.known()
        assert [known[n][1] for n in ("a.txt", "b.txt")] == [listing.stamps[n] for n in ("a.txt", "b.txt")]
    finally:
        store.drop()
        store.close()
