"""A RAG's vectors in PostgreSQL + pgvector (psycopg 3): two tables per RAG.

    mlyard_rag_<id>_docs    one row per document ingested: its name, content hash and chunk count
    mlyard_rag_<id>_chunks  one row per chunk: document, place (page, sheet, slide), text, vector

A document is written in one transaction (its old chunks deleted, the new ones copied in, its hash
recorded), so a crash never leaves half of one, and the hashes say exactly which documents are done:
an interrupted ingestion resumes from them. Search is cosine distance on normalized vectors; an HNSW
index is built once a RAG holds enough chunks for it to pay (below that a scan is as fast).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from mlyard.core.environment import named_secret
from mlyard.core.errors import VectorStoreError
from mlyard.core.settings import Settings
from mlyard.core.specs.rag import VectorStoreSpec

HNSW_MIN_CHUNKS = 10_000


@dataclass(frozen=True)
class Hit:
    doc: str
    where: str
    text: str
    score: float  # cosine similarity, 1 = the same direction


def conninfo(spec: VectorStoreSpec, settings: Settings, stack_url: str | None = None) -> str:
    """The connection string of a RAG's vector store; its password is read from the environment here,
    at connection time, and never stored or shown."""
    if spec.kind == "embedded":
        url = settings.vector_store_url or stack_url
        if not url:
            raise VectorStoreError("the embedded vector store is not running; start the platform with `mlyard up` "
                                   "(or set MLYARD_VECTOR_STORE_URL)")
        return url
    from sqlalchemy.engine import URL, make_url

    password = named_secret(spec.password_env)
    if spec.url:
        u = make_url(spec.url)
        u = u.set(drivername="postgresql", password=password or u.password)
    else:
        u = URL.create("postgresql", username=spec.user, password=password, host=spec.host, port=spec.port,
                       database=spec.database)
    return u.render_as_string(hide_password=False)


def shown(url: str) -> str:
    """A connection string fit to print: the password masked."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "(a PostgreSQL URL)"


class VectorStore:
    def __init__(self, url: str, rag_id: int, connect_timeout: float = 10.0):
        self.url, self.rag_id = url, rag_id
        self.docs, self.chunks = f"mlyard_rag_{rag_id}_docs", f"mlyard_rag_{rag_id}_chunks"
        self._timeout = connect_timeout
        self._conn: Any = None
        self._searchable: bool | None = None  # its tables exist (known once they do)

    # -- connection ------------------------------------------------------------------------------

    def connect(self) -> Any:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        import psycopg
        from pgvector.psycopg import register_vector

        try:
            conn = psycopg.connect(self.url, connect_timeout=max(1, int(self._timeout)), autocommit=True)
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(conn)
        except psycopg.Error as exc:
            raise VectorStoreError(f"cannot use the vector store at {shown(self.url)}: "
                                   f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc
        self._conn = conn
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "VectorStore":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, fn: Any) -> Any:
        import psycopg

        try:
            return fn(self.connect())
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:  # the connection broke or closed
            self.close()
            raise VectorStoreError(f"the vector store at {shown(self.url)} went away: "
                                   f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc

    # -- schema ----------------------------------------------------------------------------------

    def ensure(self, dim: int) -> None:
        """Create the RAG's tables (a no-op when they exist)."""

        def go(conn: Any) -> None:
            with conn.transaction():
                conn.execute(f"CREATE TABLE IF NOT EXISTS {self.docs} (name text PRIMARY KEY, hash text NOT NULL, "
                             "chunks integer NOT NULL, ingested_at timestamptz NOT NULL DEFAULT now(), stamp text)")
                conn.execute(f"ALTER TABLE {self.docs} ADD COLUMN IF NOT EXISTS stamp text")  # stores made before it
                conn.execute(f"CREATE TABLE IF NOT EXISTS {self.chunks} (id bigserial PRIMARY KEY, doc text NOT NULL, "
                             f"idx integer NOT NULL, location text NOT NULL, text text NOT NULL, "
                             f"embedding vector({int(dim)}) NOT NULL)")
                conn.execute(f"CREATE INDEX IF NOT EXISTS {self.chunks}_doc ON {self.chunks} (doc)")

        self._run(go)

    def drop(self) -> None:
        self._run(lambda conn: conn.execute(f"DROP TABLE IF EXISTS {self.chunks}, {self.docs}"))

    # -- documents -------------------------------------------------------------------------------

    def known(self) -> dict[str, tuple[str, str | None]]:
        """Each document ingested so far: its content hash and its stamp when it was listed (none before
        the first ingestion)."""

        def go(conn: Any) -> dict[str, tuple[str, str | None]]:
            if conn.execute("SELECT to_regclass(%s)", (self.docs,)).fetchone()[0] is None:
                return {}
            cur = conn.execute(f"SELECT * FROM {self.docs}")  # a store made before stamps has none
            cols = [c.name for c in cur.description]
            at = (cols.index("name"), cols.index("hash"), cols.index("stamp") if "stamp" in cols else None)
            return {r[at[0]]: (r[at[1]], r[at[2]] if at[2] is not None else None) for r in cur.fetchall()}

        return self._run(go)

    def restamp(self, stamps: dict[str, str]) -> None:
        """Record new stamps of documents whose content did not change (touched, copied again)."""
        if not stamps:
            return

        def go(conn: Any) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(f"ALTER TABLE {self.docs} ADD COLUMN IF NOT EXISTS stamp text")  # a store made before it
                cur.executemany(f"UPDATE {self.docs} SET stamp = %s WHERE name = %s",
                                [(v, k) for k, v in stamps.items()])

        self._run(go)

    def put(self, doc: str, content_hash: str, rows: Sequence[tuple[int, str, str]], vectors: Any,
            stamp: str | None = None) -> None:
        """Replace the document's chunks by `rows` ((index, place, text) each) with their `vectors`, and
        record its hash and stamp: one transaction."""
        import numpy as np

        vectors = np.asarray(vectors, dtype=np.float32)

        def go(conn: Any) -> None:
            with conn.transaction():
                conn.execute(f"DELETE FROM {self.chunks} WHERE doc = %s", (doc,))
                with conn.cursor().copy(f"COPY {self.chunks} (doc, idx, location, text, embedding) FROM STDIN "
                                        "WITH (FORMAT BINARY)") as copy:
                    copy.set_types(["text", "int4", "text", "text", "vector"])
                    for (idx, where, text), vec in zip(rows, vectors):
                        copy.write_row((doc, idx, where, text, vec))
                conn.execute(f"INSERT INTO {self.docs} (name, hash, chunks, stamp) VALUES (%s, %s, %s, %s) "
                             "ON CONFLICT (name) DO UPDATE SET hash = EXCLUDED.hash, chunks = EXCLUDED.chunks, "
                             "stamp = EXCLUDED.stamp, ingested_at = now()", (doc, content_hash, len(rows), stamp))

        self._run(go)

    def remove(self, docs: Sequence[str]) -> None:
        """Drop these documents and their chunks (one transaction)."""
        if not docs:
            return

        def go(conn: Any) -> None:
            with conn.transaction():
                conn.execute(f"DELETE FROM {self.chunks} WHERE doc = ANY(%s)", (list(docs),))
                conn.execute(f"DELETE FROM {self.docs} WHERE name = ANY(%s)", (list(docs),))

        self._run(go)

    def counts(self) -> dict[str, int]:
        def go(conn: Any) -> dict[str, int]:
            if conn.execute("SELECT to_regclass(%s)", (self.chunks,)).fetchone()[0] is None:
                return {"documents": 0, "chunks": 0}
            docs = conn.execute(f"SELECT count(*) FROM {self.docs}").fetchone()[0]
            chunks = conn.execute(f"SELECT count(*) FROM {self.chunks}").fetchone()[0]
            return {"documents": int(docs), "chunks": int(chunks)}

        return self._run(go)

    def index(self) -> bool:
        """Build the HNSW index once the RAG holds HNSW_MIN_CHUNKS chunks; True when it exists."""

        def go(conn: Any) -> bool:
            name = f"{self.chunks}_hnsw"
            if conn.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", (name,)).fetchone():
                return True
            if conn.execute(f"SELECT count(*) FROM {self.chunks}").fetchone()[0] < HNSW_MIN_CHUNKS:
                return False
            conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {self.chunks} USING hnsw (embedding vector_cosine_ops)")
            return True

        return self._run(go)

    # -- search ----------------------------------------------------------------------------------

    def search(self, vector: Any, k: int) -> list[Hit]:
        import numpy as np

        vec = np.asarray(vector, dtype=np.float32)

        def go(conn: Any) -> list[Hit]:
            if self._searchable is None or not self._searchable:  # nothing ingested yet: no tables, no hits
                self._searchable = conn.execute("SELECT to_regclass(%s)", (self.chunks,)).fetchone()[0] is not None
                if not self._searchable:
                    return []
            rows = conn.execute(f"SELECT doc, location, text, 1 - (embedding <=> %s) FROM {self.chunks} "
                                "ORDER BY embedding <=> %s LIMIT %s", (vec, vec, int(k))).fetchall()
            return [Hit(d, w, t, float(s)) for d, w, t, s in rows]

        return self._run(go)
