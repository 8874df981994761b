"""Where a batch inference's results live under output_uri, and reading them back: one predictions
file per input file, a record per finished shard (what makes a rerun resume), the plan, the summary
and the failures."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mlyard.core.errors import StorageNotFound
from mlyard.core.specs import BatchShard
from mlyard.tasks.storage import Storage


@dataclass(frozen=True)
class Layout:
    output_uri: str

    def _join(self, *parts: str) -> str:
        return "/".join([self.output_uri.rstrip("/"), *parts])

    def output(self, file: str) -> str:
        return self._join(f"{file}.predictions.jsonl")

    def part(self, shard: BatchShard) -> str:
        return self._join("_mlyard", "parts", f"{shard.file}.{shard.index + 1}-of-{shard.count}.jsonl")

    def target(self, shard: BatchShard) -> str:
        return self.output(shard.file) if shard.count == 1 else self.part(shard)

    def record(self, shard: BatchShard) -> str:
        return self._join("_mlyard", "shards", quote(shard.key, safe="") + ".json")

    @property
    def records_dir(self) -> str:
        return self._join("_mlyard", "shards")

    @property
    def manifest(self) -> str:
        return self._join("_mlyard", "batch.json")

    @property
    def summary(self) -> str:
        return self._join("_summary.json")

    @property
    def failures(self) -> str:
        return self._join("_failures.jsonl")


@dataclass
class ShardRecord:
    key: str
    file: str
    rows: int = 0
    failed_rows: int = 0
    failed_batches: int = 0
    seconds: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)


def done_records(storage: Storage, layout: Layout) -> dict[str, ShardRecord]:
    try:
        names = storage.list(layout.records_dir, "*.json", field="output_uri")
    except StorageNotFound:
        return {}
    out = {}
    for name in names:
        data = json.loads(storage.read_bytes(f"{layout.records_dir}/{name}", "output_uri"))
        out[data["key"]] = ShardRecord(**data)
    return out



def concat(paths: list[Path], dest: Path) -> None:
    with open(dest, "wb") as out:
        for p in paths:
            with open(p, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    out.write(chunk)


def rows_per_second(rows: int, seconds: float) -> float:
    return round(rows / seconds, 1) if seconds > 0 else 0.0
