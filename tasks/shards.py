"""Choosing and planning the input of a batch inference: the files under a URI after the globs, the
shards they are cut into (a JSONL file at line boundaries, each piece knowing its first row), and
which worker runs which shard."""

from __future__ import annotations

from pathlib import Path

from mlyard.core.errors import SpecError
from mlyard.core.specs import BatchShard
from mlyard.tasks.storage import Storage, glob_match

MIN_SPLIT_BYTES = 1 << 20  # a JSONL file smaller than this is never cut


def select_files(storage: Storage, input_uri: str, include: list[str], exclude: list[str]) -> list[tuple[str, str]]:
    """(name, uri) of each input file, sorted. Raises SpecError when the globs leave nothing."""
    names = storage.list(input_uri, field="input_uri")
    single = storage.exists(input_uri, "input_uri")
    chosen = [n for n in names if any(glob_match(n, p) for p in include) and not any(glob_match(n, p) for p in exclude)]
    chosen = [n for n in chosen if not n.startswith("_mlyard/")]
    if not chosen:
        raise SpecError("include/exclude", {"include": include, "exclude": exclude},
                        f"patterns that match at least one file under {input_uri}; it holds: "
                        f"{', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")
    return [(n, input_uri if single else f"{input_uri.rstrip('/')}/{n}") for n in chosen]


def plan(files: list[tuple[str, Path]], fmt: str, workers: int) -> list[BatchShard]:
    """Shards for `workers`. JSONL files of at least MIN_SPLIT_BYTES are cut into about
    `workers` pieces at line boundaries (one pass counting newlines gives each piece's first row)."""
    shards: list[BatchShard] = []
    for name, path in files:
        size = path.stat().st_size
        pieces = min(workers, max(1, size // MIN_SPLIT_BYTES)) if fmt == "jsonl" else 1
        if pieces <= 1:
            shards.append(BatchShard(file=name, size=size))
            continue
        cuts = _line_cuts(path, size, pieces)
        bounds = list(zip(cuts, cuts[1:] + [(size, None)]))
        for i, ((start, row), (end, _)) in enumerate(bounds):
            shards.append(BatchShard(file=name, index=i, count=len(bounds), start=start,
                                     end=end if i < len(bounds) - 1 else None, first_row=row, size=end - start))
    return shards


def _line_cuts(path: Path, size: int, pieces: int) -> list[tuple[int, int]]:
    """(byte offset, row number) of the line starts nearest to size*i/pieces."""
    targets = [size * i // pieces for i in range(1, pieces)]
    cuts, rows, pos = [(0, 0)], 0, 0
    with open(path, "rb") as fh:
        while targets:
            chunk = fh.read(1 << 22)
            if not chunk:
                break
            while targets and pos + len(chunk) > targets[0]:
                nl = chunk.find(b"\n", max(0, targets[0] - pos))
                if nl < 0:
                    break
                cut_rows = rows + chunk.count(b"\n", 0, nl + 1)
                if pos + nl + 1 < size and pos + nl + 1 > cuts[-1][0]:
                    cuts.append((pos + nl + 1, cut_rows))
                targets.pop(0)
            rows += chunk.count(b"\n")
            pos += len(chunk)
    return cuts


def assign(shards: list[BatchShard], workers: int) -> list[list[BatchShard]]:
    """Spread shards over at most `workers` workers, biggest first onto the least loaded."""
    groups: list[list[BatchShard]] = [[] for _ in range(min(workers, len(shards)))]
    loads = [0] * len(groups)
    for shard in sorted(shards, key=lambda s: -s.size):
        i = loads.index(min(loads))
        groups[i].append(shard)
        loads[i] += max(shard.size, 1)
    return [g for g in groups if g]
