"""The `x-mlyard-classes` header a model server adds to a classifier's answer (predictions per class and
their confidence), which the gateway counts (serving/endpoint_stats.py reads it back)."""

from __future__ import annotations

from typing import Any


def format_classes(per: dict[str, list[float]]) -> bytes:
    from urllib.parse import quote

    return ";".join(f"{quote(str(k), safe='')}={int(v[0])}:{v[1]:.6g}:{int(v[2])}" for k, v in per.items()).encode()


def classes_of(preds: Any, probs: Any = None) -> bytes:
    """The `x-mlyard-classes` header of a classifier's answer (the model server's side): per predicted
    class how many rows, the sum of their confidences (each row's highest probability) and how many had
    one."""
    import numpy as np

    per: dict[str, list[float]] = {}
    conf = np.asarray(probs).max(axis=1) if probs is not None else None
    for i, label in enumerate(np.asarray(preds).tolist()):
        entry = per.setdefault(str(label), [0, 0.0, 0])
        entry[0] += 1
        if conf is not None:
            entry[1] += float(conf[i])
            entry[2] += 1
    return format_classes(per)
