"""Batch inference's vectorized paths give what the row-by-row ones give: JSONL read a chunk at a time
(one parse per chunk) and output lines written a column at a time."""

from __future__ import annotations

import numpy as np
import pytest

from mlyard.core.errors import BadRecord
from mlyard.tasks.inference import _slow_lines, encode_lines
from mlyard.tasks.records import read_chunks, read_records

LINES = [b'{"id": 1, "x": [1, 2.5]}\n', b"\n", b'{"id": "b", "x": [3, 4]}\n', b"not json\n",
         b'{"a": 1} {"b": 2}\n', b'[1, 2]\n', b'1,[2\n', b'3]\n', b'{"id": 9007199254740993123, "x": [0, 0]}\n',
         b'{"id": 4, "x": [5, 6]}']


def _rows(records):
    return [(row, ("BAD", r.reason) if isinstance(r, BadRecord) else r) for row, r, *_ in records]


@pytest.mark.parametrize("size", [1, 2, 3, 1000])
@pytest.mark.parametrize("lines", [LINES, [b'{"id": %d, "x": [%d, 1]}\n' % (i, i) for i in range(10)]])
def test_chunks_read_what_records_read(tmp_path, size, lines):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(lines))
    want = _rows(read_records(path, "jsonl"))
    got = [item for chunk, _ in read_chunks(path, "jsonl", size=size) for item in chunk]
    assert _rows(got) == want
    half = len(b"".join(lines[:4]))  # a shard ends at a line boundary
    want = _rows(read_records(path, "jsonl", 0, half))
    assert _rows([i for c, _ in read_chunks(path, "jsonl", 0, half, size=size) for i in c]) == want
    want = _rows(read_records(path, "jsonl", half, None, 4))
    assert _rows([i for c, _ in read_chunks(path, "jsonl", half, None, 4, size=size) for i in c]) == want


@pytest.mark.parametrize("ids, preds, proba", [
    ([1, "a", None, 4.5], [1, 0, 1, 0], np.random.default_rng(0).random((4, 3)).astype(np.float32)),
    (None, ["x", "y", "z", "w"], None),
    ([1, 2, 3, 2**70], [0.5, float("nan"), 2.0, -1e-7], np.array([[0.1, 0.9], [np.nan, 1], [0, 1], [1, 0]])),
    ([], [], None),
])
def test_lines_written_a_column_at_a_time_are_the_same(ids, preds, proba):
    rows = list(range(10, 10 + len(preds)))
    ids = ids if ids != [] else None
    assert encode_lines(rows, ids, preds, proba) == _slow_lines(rows, ids, preds, proba)
