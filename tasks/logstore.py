"""The index `mlyard logs` queries: every structured record (core/logrecords.py) the platform wrote,
in one SQLite file, `<home>/logs/records/index.db`.

The writers only append JSON lines to their files (flow runs under `<home>/logs/records/`, the model server
per endpoint under `<home>/endpoints/logs/`, the RAG query services under `<home>/rags/logs/`): nothing
on a request's or a run's path waits for a database. `catch_up()` reads what was appended since the
last time (each file's offset is kept in the same transaction as its records, so two catching up at
once never index a line twice; a torn last line waits for its end) and the mlyard API calls it every
few seconds and before each query. Each id field has its own index (partial: only the records that
carry it), so records are found by id, or by a prefix of one, without reading the others.

SQLite directly (the standard library's sqlite3), not SQLAlchemy: one table, inserts by the
thousand with executemany and range queries; nothing here needs the ORM or portability.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson

from mlyard.core import logrecords as lr

COLUMNS = {"trainingId": "training_id", "hyperparameterTuningId": "tuning_id", "batchInferenceId": "batch_id",
           "evaluationId": "evaluation_id", "endpointId": "endpoint_id", "endpointStageId": "stage_id",
           "inferenceId": "inference_id", "flowRunId": "flow_run_id", "action": "action", "modelName": "model_name",
           "name": "name", "easymakerAppKey": "appkey", "user": "user"}
ID_COLUMNS = ("training_id", "tuning_id", "batch_id", "evaluation_id", "endpoint_id", "stage_id", "inference_id",
              "flow_run_id")
SCHEMA = [
    "CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY, time REAL NOT NULL, category TEXT NOT NULL, "
    "level INTEGER NOT NULL, body TEXT NOT NULL, " + ", ".join(f"{c} TEXT" for c in COLUMNS.values()) + ")",
    "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, inode INTEGER, offset INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS records_category_time ON records (category, time)",
    "CREATE INDEX IF NOT EXISTS records_time ON records (time)",
    "CREATE INDEX IF NOT EXISTS records_name ON records (name, time) WHERE name IS NOT NULL",
    *(f"CREATE INDEX IF NOT EXISTS records_{c} ON records ({c}, time) WHERE {c} IS NOT NULL" for c in ID_COLUMNS),
]
EXACT = ("endpoint_id", "stage_id")  # catalog numbers: 7 is not the start of 70
READ_AT_ONCE = 64 << 20  # bytes of one file read in one pass


def sources(home: Path) -> list[Path]:
    """Every file of records under `home` (flow runs', endpoints', RAG query services')."""
    out: list[Path] = []
    for folder, pattern in ((home / "logs" / "records", "*/*.jsonl"), (home / "endpoints" / "logs", "*.jsonl"),
                            (home / "rags" / "logs", "*.jsonl")):
        if folder.is_dir():
            out += sorted(folder.glob(pattern))
    return out


def _epoch(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


def _row(doc: dict[str, Any]) -> tuple:
    return (_epoch(doc.get("time")), str(doc.get("category") or ""), lr.LEVELS.get(str(doc.get("logLevel")), 20),
            str(doc.get("body") or ""),
            *(None if doc.get(k) is None else str(doc[k]) for k in COLUMNS))


class LogStore:
    def __init__(self, home: Path, path: Path | None = None,
                 owner: Callable[[str], dict[str, Any]] | None = None):
        """`owner(endpoint name)`: what the records of that endpoint's inference log are, whatever they say
        ({"endpointId", "easymakerAppKey"} from the catalog): a served model writes those records itself,
        and must not pass them off as another endpoint's or project's."""
        self.home = Path(home)
        self.owner = owner
        self.path = path or self.home / "logs" / "records" / "index.db"
        private_dirs(self.path.parent)
        self.path.parent.chmod(0o700)
        new = not self.path.exists()
        # one connection indexes (under a lock: the API's background catch-up and a query's), and
        # each thread that queries reads on its own (WAL: readers never wait for the indexing)
        self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        if new:
            os.chmod(self.path, 0o600)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        for stmt in SCHEMA:
            self.db.execute(stmt)
        have = {row[1] for row in self.db.execute("PRAGMA table_info(records)")}
        for column in COLUMNS.values():  # an index made before a field was kept: the column, empty for old rows
            if column not in have:
                self.db.execute(f"ALTER TABLE records ADD COLUMN {column} TEXT")
        self._lock = threading.Lock()
        self._readers = threading.local()

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._readers, "conn", None)
        if conn is None:
            conn = self._readers.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        return conn

    def close(self) -> None:
        self.db.close()

    # -- indexing ------------------------------------------------------------------------------------

    def catch_up(self, files: Iterable[Path] | None = None) -> int:
        """Index what was appended to the record files since the last time; how many records."""
        added = 0
        for path in (sources(self.home) if files is None else files):
            try:
                st = path.stat()
            except OSError:
                continue
            with self._lock:
                added += self._catch_up_file(path, st)
        return added

    def _pinned(self, path: Path) -> dict[str, Any]:
        """The fields a file's records are given whatever they say: an endpoint's inference log's, its
        endpoint's and project's (none for an endpoint gone: its records are the admins' alone)."""
        if self.owner is None or path.parent != self.home / "endpoints" / "logs":
            return {}
        try:
            return self.owner(path.stem)
        except Exception:  # noqa: BLE001 - gone, or the catalog away: nobody's
            return {"endpointId": None, "easymakerAppKey": None}

    def _catch_up_file(self, path: Path, st: os.stat_result) -> int:
        known = self.db.execute("SELECT inode, offset FROM files WHERE path = ?", (str(path),)).fetchone()
        offset = 0 if known is None or known[0] != st.st_ino or known[1] > st.st_size else known[1]
        if offset == st.st_size:
            return 0
        added = 0
        while offset < st.st_size:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(READ_AT_ONCE)
            end = data.rfind(b"\n") + 1
            if end == 0:
                break  # a torn last line: its end comes later
            rows = []
            pinned = self._pinned(path)
            for raw in data[:end].splitlines():
                try:
                    doc = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(doc, dict):
                    rows.append(_row({**doc, **pinned}))
            self.db.execute("BEGIN IMMEDIATE")
            try:
                again = self.db.execute("SELECT inode, offset FROM files WHERE path = ?", (str(path),)).fetchone()
                if again is not None and again != known:  # another process indexed it meanwhile
                    self.db.execute("ROLLBACK")
                    return added
                self.db.executemany(f"INSERT INTO records (time, category, level, body, {', '.join(COLUMNS.values())}) "
                                    f"VALUES ({', '.join('?' * (4 + len(COLUMNS)))})", rows)
                self.db.execute("INSERT INTO files (path, inode, offset) VALUES (?, ?, ?) ON CONFLICT (path) DO "
                                "UPDATE SET inode = excluded.inode, offset = excluded.offset",
                                (str(path), st.st_ino, offset + end))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            known = (st.st_ino, offset + end)
            offset += end
            added += len(rows)
        return added

    def prune(self, keep_days: float, now: float | None = None) -> int:
        """Delete the records older than `keep_days`: the flow runs' day files before the cut (their
        names are their days) and the index's rows before it (the model server's own files are kept:
        their endpoint's deletion removes them). How many rows went."""
        cut = (now or time.time()) - keep_days * 86400
        day = time.strftime("%Y-%m-%d", time.gmtime(cut))
        gone = [p for p in (self.home / "logs" / "records").glob("*/*.jsonl") if p.stem < day]
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                deleted = self.db.execute("DELETE FROM records WHERE time < ?", (cut,)).rowcount
                for path in gone:
                    self.db.execute("DELETE FROM files WHERE path = ?", (str(path),))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        for path in gone:
            path.unlink(missing_ok=True)
        return int(deleted)

    # -- querying ------------------------------------------------------------------------------------

    def query(self, *, category: str | None = None, ids: dict[str, str] | None = None, names: dict[str, str] | None = None,
              level: str | None = None, since: float | None = None, until: float | None = None,
              after: int | None = None, limit: int = 100, newest: bool = True,
              projects: list[str] | None = None) -> list[dict[str, Any]]:
        """Records matching every filter given, oldest first: the last `limit` of them (`newest`), or the
        first `limit` after sequence number `after` (follow mode). `ids` maps columns to an id or the
        start of one (endpoint and stage ids: whole); `names` maps an id column to a name that may stand in for it (an endpoint's records
        written before its id was known carry its name); `projects`: only records of those projects' runs
        (their easymakerAppKey; None: every record)."""
        # with an id to go by, its index finds the records: the other columns are compared, not searched
        # (a unary + keeps SQLite from picking the category's or the time's index instead)
        plus = "+" if ids else ""
        common: list[tuple[str, list[Any]]] = []
        if category:
            common.append((f"{plus}category = ?", [lr.category(category)]))
        if level:
            common.append((f"{plus}level >= ?", [lr.LEVELS[level.upper()]]))
        if since is not None:
            common.append((f"{plus}time >= ?", [since]))
        if until is not None:
            common.append((f"{plus}time <= ?", [until]))
        if after is not None:
            common.append(("seq > ?", [after]))
        if projects is not None:
            common.append((f"{plus}appkey IN ({', '.join('?' * len(projects)) or 'NULL'})", list(projects)))
        by_id: dict[str, tuple[str, list[Any]]] = {}
        for column, value in (ids or {}).items():
            if column not in ID_COLUMNS:
                raise ValueError(column)
            if column in EXACT or len(value) >= 32:  # the index answers in time order at once
                by_id[column] = (f"{column} = ?", [value])
            else:  # a start of an id
                by_id[column] = (f"{column} >= ? AND {column} < ?", [value, value + "\U0010ffff"])
        alternatives = [[*common, *by_id.values()]]
        for column, name in (names or {}).items():  # the same filters, the name in place of that id
            alternatives.append([*common, *(c for k, c in by_id.items() if k != column), ("name = ?", [name])])
        rows: list[tuple] = []
        for conditions in alternatives:
            rows += self._select([c for c, _ in conditions], [x for _, xs in conditions for x in xs], after, newest,
                                 limit)
        rows = sorted(set(rows), key=lambda r: (r[0],) if after is not None else (r[1], r[0]))
        rows = rows[-limit:] if newest and after is None else rows[:limit]
        return [self._doc(r) for r in rows]

    def _select(self, where: list[str], args: list[Any], after: int | None, newest: bool, limit: int) -> list[tuple]:
        sql = f"SELECT * FROM records{' WHERE ' + ' AND '.join(where) if where else ''}"
        if after is not None:  # follow: in the order they were indexed
            return self._reader().execute(f"{sql} ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
        if newest:
            return self._reader().execute(f"{sql} ORDER BY time DESC, seq DESC LIMIT ?", (*args, limit)).fetchall()
        return self._reader().execute(f"{sql} ORDER BY time, seq LIMIT ?", (*args, limit)).fetchall()

    @staticmethod
    def _doc(row: tuple) -> dict[str, Any]:
        seq, t, cat, level, body, *rest = row
        stamp = datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        doc: dict[str, Any] = {"seq": seq, "time": stamp, "category": cat,
                               "logLevel": next(k for k, v in lr.LEVELS.items() if v == level), "body": body,
                               "logType": lr.LOG_TYPE}
        doc.update((k, v) for k, v in zip(COLUMNS, rest) if v is not None)
        return doc

    def count(self) -> int:
        return int(self._reader().execute("SELECT count(*) FROM records").fetchone()[0])

    def last_seq(self) -> int:
        return int(self._reader().execute("SELECT max(seq) FROM records").fetchone()[0] or 0)


def private_dirs(folder: Path) -> None:
    """`folder` and any parent made for it, readable by this user alone."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
        d.chmod(0o700)
