"""Reading input records: JSON (ijson, record by record), JSONL (from a byte offset, so workers share a
big file) and CSV, never a whole file in memory; and turning a batch of records into model input.
A record that cannot be read is yielded as a `BadRecord`, so that it becomes an error row, not a crash."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

import orjson

from mlyard.core.errors import BadRecord, SpecError


def read_records(path: Path, fmt: str, start: int = 0, end: int | None = None,
                 first_row: int = 0) -> Iterator[tuple[int, Any, int]]:
    """(row number, record or BadRecord, bytes read so far) for each record of the shard.

    Row numbers: the 0-based line of a JSONL file (blank lines are skipped but counted), the index
    in a JSON file, the data row of a CSV file (after its header)."""
    if fmt == "jsonl":
        yield from _jsonl(path, start, end, first_row)
    elif fmt == "json":
        yield from _json(path)
    elif fmt == "csv":
        yield from _csv(path)
    else:
        raise SpecError("input_format", fmt, "json, jsonl or csv")


def _jsonl(path: Path, start: int, end: int | None, row: int) -> Iterator[tuple[int, Any, int]]:
    done = 0
    limit = None if end is None else end - start
    with open(path, "rb") as fh:
        fh.seek(start)
        for line in fh:
            done += len(line)
            if line.strip():
                try:
                    yield row, orjson.loads(line), done
                except ValueError:
                    yield row, _slow_json(line), done
            row += 1
            if limit is not None and done >= limit:
                return


def read_chunks(path: Path, fmt: str, start: int = 0, end: int | None = None, first_row: int = 0,
                size: int = 1000) -> Iterator[tuple[list[tuple[int, Any]], int]]:
    """`read_records` in chunks of up to `size` records: ([(row, record or BadRecord)], bytes read so far),
    a JSONL chunk read and parsed in one pass (orjson per line beats one call over the joined lines)."""
    if fmt != "jsonl":
        chunk: list[tuple[int, Any]] = []
        done = 0
        for row, record, done in read_records(path, fmt, start, end, first_row):
            chunk.append((row, record))
            if len(chunk) >= size:
                yield chunk, done
                chunk = []
        if chunk:
            yield chunk, done
        return
    limit = None if end is None else end - start
    done, row = 0, first_row
    with open(path, "rb") as fh:
        fh.seek(start)
        while limit is None or done < limit:
            lines: list[bytes] = []
            for line in fh:
                lines.append(line)
                done += len(line)
                if len(lines) >= size or (limit is not None and done >= limit):
                    break
            if not lines:
                return
            yield _parse_lines(lines, row), done
            row += len(lines)


def _parse_lines(lines: list[bytes], row: int) -> list[tuple[int, Any]]:
    out = []
    for i, line in enumerate(lines):
        if line.strip():
            try:
                out.append((row + i, orjson.loads(line)))
            except ValueError:
                out.append((row + i, _slow_json(line)))
    return out


def _slow_json(line: bytes) -> Any:
    """A line orjson refused: the standard library reads what orjson does not (integers beyond 64 bits,
    NaN); what neither reads is a BadRecord."""
    try:
        return json.loads(line)
    except ValueError as exc:
        return BadRecord(f"not valid JSON: {exc}")


def _json(path: Path) -> Iterator[tuple[int, Any, int]]:
    import ijson

    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
        fh.seek(0)
        if head[:1] == b"[":
            prefix = "item"
        elif head[:1] == b"{":
            prefix = "instances.item"
        else:
            raise SpecError("input_format", "json", f"{path.name} must hold a JSON list of records or "
                                                    '{"instances": [...]}; use jsonl for a record per line')
        try:
            for row, record in enumerate(ijson.items(fh, prefix, use_float=True)):
                yield row, record, fh.tell()
        except ijson.JSONError as exc:
            raise SpecError("input_uri", path.name, f"a valid JSON file ({exc})") from exc


def _csv(path: Path) -> Iterator[tuple[int, Any, int]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            return
        raw = fh.buffer if hasattr(fh, "buffer") else None
        for row, values in enumerate(reader):
            if not values:
                continue
            if len(values) != len(header):
                yield row, BadRecord(f"{len(values)} values for {len(header)} columns"), _tell(raw)
                continue
            yield row, {k: _scalar(v) for k, v in zip(header, values)}, _tell(raw)


def _tell(raw) -> int:
    try:
        return raw.tell() if raw is not None else 0
    except (OSError, ValueError):
        return 0


def _scalar(text: str) -> Any:
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def features(records: list[Any], feature_fields: list[str] | None, skip: set[str]):
    """The model input for a batch: a 2-D array for vectors, a DataFrame for named fields."""
    import numpy as np

    first = records[0]
    if isinstance(first, list):
        return np.asarray(records)
    if not isinstance(first, dict):
        raise BadRecord(f"a record must be an object or a list, got {type(first).__name__}")
    fields = feature_fields or [k for k in first if k not in skip]
    if len(fields) == 1 and isinstance(first.get(fields[0]), list):
        return np.asarray([r[fields[0]] for r in records])
    import pandas as pd

    nested = [f for f in fields if isinstance(first.get(f), (list, dict))]
    if nested:
        raise BadRecord(f"field {nested[0]!r} holds a {type(first[nested[0]]).__name__} next to other fields "
                        f"({', '.join(fields[:5])}); feed one vector field alone or scalars only: set feature_fields, "
                        "id_field or drop_fields")
    missing = [f for f in fields if any(f not in r for r in records)]
    if missing:
        raise BadRecord(f"field {missing[0]!r} is missing in some rows")
    return pd.DataFrame.from_records([[r[f] for f in fields] for r in records], columns=fields)
