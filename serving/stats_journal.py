"""A gateway's minutes in progress, kept on disk so that a gateway killed mid-minute loses none of its
counts (the statistics, and the tokens that budgets count): every second the gateway writes its unfinished
minutes over its journal (`write`, atomically), and a gateway that starts stores the minutes of journals
whose gateway on this machine is gone, then removes them (`recover`). A gateway that stops cleanly stores
everything and removes its own. Journals are named after their gateway (`host-pid-started.json`).

A minute stored by `flush` is in the journal until the next write, a moment later: a gateway killed in
between counts that minute twice once recovered (the same window as an append cut by the kill)."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from mlyard.serving.endpoint_stats import EndpointStats
from mlyard.tasks.processes import alive

log = logging.getLogger("mlyard.gateway")
_UNWRITABLE: set[Path] = set()


def write(stats: EndpointStats, path: Path) -> None:
    """The minutes in progress over `path` (nothing at all while there are none). A folder it cannot write
    (a pod's read-only root) is said once in the log, and the gateway goes on without a journal."""
    records = stats.records()
    try:
        if not records:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(records))
        os.replace(partial, path)
    except OSError as exc:
        if path not in _UNWRITABLE:
            _UNWRITABLE.add(path)
            log.warning("cannot keep the minutes in progress in %s (%s): a killed gateway loses them", path, exc)


def recover(stats: EndpointStats, folder: Path, own: Path) -> int:
    """Store what the journals in `folder` of gateways gone from this machine held, and remove them; how
    many records. A journal that cannot be read is removed (a write cut by the kill is never left half:
    `write` renames a whole file)."""
    stored = 0
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        parts = path.stem.rsplit("-", 2)  # its gateway's host (which may hold '-'), pid and start
        if path == own or len(parts) != 3 or not parts[1].isdigit() or parts[0] != socket.gethostname() \
                or alive(int(parts[1])):
            continue
        try:
            records = json.loads(path.read_text())
        except (OSError, ValueError):
            records = []
        stored += stats.store([r for r in records if isinstance(r, dict)])
        path.unlink(missing_ok=True)
    return stored
