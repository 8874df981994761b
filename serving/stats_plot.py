"""The chart of an endpoint's (or a RAG's) statistics, as `mlyard endpoints stats --png` draws it: calls and
failures, latency, tokens a minute and predictions per class (serving/endpoint_stats.py's `query`)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def plot(result: dict[str, Any], path: Path) -> Path:
    """A PNG: calls and failures per minute, p50/p99 latency per minute, predictions per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["stats"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for row in rows:
        label = f"{row['endpoint']}/{row['stage']}/{row['model']}"
        xs = [datetime.fromisoformat(s["minute"]) for s in row["series"]]
        axes[0].plot(xs, [s["calls"] for s in row["series"]], marker="o", label=f"{label} calls")
        if any(s["failures"] for s in row["series"]):
            axes[0].plot(xs, [s["failures"] for s in row["series"]], marker="x", linestyle="--",
                         label=f"{label} failures")
        axes[1].plot(xs, [s.get("p50") for s in row["series"]], marker="o", label=f"{label} p50")
        axes[1].plot(xs, [s.get("p99") for s in row["series"]], marker=".", linestyle="--", label=f"{label} p99")
    axes[0].set_title("calls per minute")
    axes[1].set_title("latency (ms)")
    import matplotlib.dates as mdates

    period = (datetime.fromisoformat(result["since"]), datetime.fromisoformat(result["until"]))
    for ax in axes[:2]:  # the whole period, even when only a few minutes had calls
        ax.set_xlim(*period)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=timezone.utc))
    axes[0].set_ylim(bottom=0)
    labels = sorted({k for row in rows for k in row.get("predictions", {})})
    if not labels and any(row.get("tokens") for row in rows):  # a generative model: tokens out per minute
        for row in rows:
            xs = [datetime.fromisoformat(s["minute"]) for s in row["series"]]
            axes[2].plot(xs, [s.get("tokens_out", 0) for s in row["series"]], marker="o",
                         label=f"{row['stage']}/{row['model']}")
        axes[2].set_title("tokens generated per minute")
        axes[2].set_xlim(*period)
        axes[2].set_ylim(bottom=0)
        axes[2].xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=timezone.utc))
        return _save(fig, axes, result, path)
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        preds = row.get("predictions", {})
        axes[2].bar([j + i * width for j in range(len(labels))], [preds.get(k, 0) for k in labels], width,
                    label=f"{row['stage']}/{row['model']}")
    axes[2].set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, rotation=30)
    axes[2].set_title("predictions per class")
    return _save(fig, axes, result, path)


def _save(fig: Any, axes: Any, result: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.autofmt_xdate()
    fig.suptitle(f"{result['since']} .. {result['until']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
