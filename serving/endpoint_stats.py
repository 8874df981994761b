"""The gateway's statistics per endpoint, stage and model, over any period: calls, failures, latency
(mean, p50, p95, p99), predictions per class, and the average confidence overall and per class.

Counts are kept per minute. A finished minute goes to the catalog database (every gateway replica adds
its own rows; a query merges them), or without one to `<dir>/<UTC date>.jsonl`, so statistics outlive
the gateway; a period's figures merge the minutes in it. Latency is kept as a histogram with
buckets 4 % wide (from 10 µs to hours), so any period's percentiles come from merged minutes, within
4 %. Since the gateway started, totals are also kept for Prometheus (`prometheus`: each gateway replica
exposes its own; Prometheus sums them). Pure: no HTTP; the gateway calls `record`, `flush`, `query`."""

from __future__ import annotations

import bisect
import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlyard.serving.stats_summary import add_usage, latency_bucket, percentiles, summarize

Key = tuple[str, str, str]  # (endpoint, stage, model)
_WHERE = ("minute", "endpoint", "stage", "model")  # a stored record's place; the rest are its counts


class _Minute:
    __slots__ = ("calls", "failures", "latency_sum", "hist", "raw", "callers", "tokens")

    def __init__(self) -> None:
        self.calls = self.failures = 0
        self.latency_sum = 0.0
        self.hist: dict[int, int] = {}
        self.raw: dict[bytes, int] = {}  # replicas' class headers as they came, counted (parsed when read)
        # token:<id>, key:<id> (user), rag:<name>, ... -> [calls, failures, tokens in, tokens out]
        self.callers: dict[str, list[int]] = {}
        self.tokens: dict[str, Any] | None = None  # generative answers: see `add_usage`

    def classes(self) -> dict[str, list[float]]:
        """label -> [predictions, confidence sum, scored]"""
        out: dict[str, list[float]] = {}
        for header, times in self.raw.items():
            for label, count, conf, scored in parse_classes(header):
                c = out.get(label)
                if c is None:
                    c = out[label] = [0, 0.0, 0]
                c[0] += count * times
                c[1] += conf * times
                c[2] += scored * times
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "failures": self.failures, "latency_sum": self.latency_sum,
                "hist": self.hist, "classes": self.classes(), "callers": self.callers,
                **({"tokens": self.tokens} if self.tokens else {})}


def parse_classes(header: bytes) -> list[tuple[str, int, float, int]]:
    """A replica's `x-mlyard-classes` header: `label=count:confidence_sum:scored;...` (labels URL-quoted)."""
    from urllib.parse import unquote

    out = []
    for part in header.decode("latin-1").split(";"):
        label, _, rest = part.rpartition("=")
        bits = rest.split(":")
        if label and len(bits) == 3:
            try:
                out.append((unquote(label), int(bits[0]), float(bits[1]), int(bits[2])))
            except ValueError:
                continue
    return out


# Prometheus histogram bounds of the request duration, in seconds (its client's defaults, plus 30 and 60 s)
PROMETHEUS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0)


class _Total:
    """Since this gateway started, for Prometheus: calls, failures, seconds, calls per bucket."""

    __slots__ = ("calls", "failures", "seconds", "buckets", "tokens_in", "tokens_out")

    def __init__(self) -> None:
        self.calls = self.failures = self.tokens_in = self.tokens_out = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(PROMETHEUS_BUCKETS) + 1)  # the last one: above every bound


class EndpointStats:
    """`catalog_url`: finished minutes go to the catalog's `endpoint_stat_minutes`, where every gateway
    replica adds its own and a query merges them all (a stateless gateway); else to files in `folder`."""

    def __init__(self, folder: Path | None, catalog_url: str | None = None):
        self.folder = Path(folder) if folder is not None else None
        self.catalog_url = catalog_url
        self._catalog: Any = None
        self._live: dict[int, dict[Key, _Minute]] = {}  # minute (epoch // 60) -> key -> counts
        self.totals: dict[Key, _Total] = {}
        self.queues: dict[Key, tuple[float, int, int]] = {}  # a chat model's batch as its last answer saw it
        self._stored_today: tuple[int, dict[str, int]] = (-1, {})  # (UTC day, caller -> tokens stored of it)

    def record(self, key: Key, ms: float, failed: bool, classes: bytes | None = None,
               now: float | None = None, caller: str | None = None, usage: Any = None) -> None:
        """Count one answer; `usage` (serving/usage.py) for a generative one: its tokens and first token."""
        minute = int((now if now is not None else time.time()) // 60)
        per = self._live.get(minute)
        if per is None:
            per = self._live[minute] = {}
        m = per.get(key)
        if m is None:
            m = per[key] = _Minute()
        m.calls += 1
        if failed:
            m.failures += 1
        m.latency_sum += ms
        b = latency_bucket(ms)
        m.hist[b] = m.hist.get(b, 0) + 1
        if classes:
            m.raw[classes] = m.raw.get(classes, 0) + 1
        if caller is not None:
            c = m.callers.get(caller)
            if c is None:
                c = m.callers[caller] = [0, 0, 0, 0]
            c[0] += 1
            c[1] += failed
            if usage is not None:
                c[2] += usage.prompt
                c[3] += usage.completion
        t = self.totals.get(key)
        if t is None:
            t = self.totals[key] = _Total()
        if usage is not None:
            ttft = usage.ttft_ms
            m.tokens = add_usage(m.tokens, {
                "answers": 1, "in": usage.prompt, "out": usage.completion,
                **({"ttft_sum": ttft, "ttft_n": 1, "ttft_hist": {latency_bucket(ttft): 1}} if ttft is not None else {}),
                **({"decode_ms": ms - ttft, "decoded": usage.completion} if ttft is not None and ms > ttft else {}),
                **({"queued_sum": q, "queued_n": 1, "queued_max": q} if (q := usage.queued_ms) is not None else {})})
            t.tokens_in += usage.prompt
            t.tokens_out += usage.completion
            if usage.queue is not None:
                self.queues[key] = (time.time() if now is None else now, *usage.queue)
        t.calls += 1
        t.failures += failed
        t.seconds += ms / 1000
        t.buckets[bisect.bisect_left(PROMETHEUS_BUCKETS, ms / 1000)] += 1

    def prometheus(self, gauges: dict[str, tuple[str, float]] | None = None) -> bytes:
        """The totals in Prometheus' text format (its client library writes it): per endpoint, stage and
        model, `mlyard_gateway_requests_total`, `..._request_failures_total` and the
        `..._request_duration_seconds` histogram; `gauges` adds name -> (help, value)."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        totals = dict(self.totals)

        class Collector:
            def collect(self):
                labels = ["endpoint", "stage", "model"]
                calls = CounterMetricFamily("mlyard_gateway_requests", "Requests routed to a stage's model.",
                                            labels=labels)
                failed = CounterMetricFamily("mlyard_gateway_request_failures",
                                             "Routed requests that failed (an error status or no answer).", labels=labels)
                seconds = HistogramMetricFamily("mlyard_gateway_request_duration_seconds",
                                                "Time from a request's arrival to its answer's end.", labels=labels)
                tokens = CounterMetricFamily("mlyard_gateway_tokens", "Tokens of generative answers: the prompts' "
                                             "(direction in) and the completions' (out).", labels=[*labels, "direction"])
                for key, t in sorted(totals.items()):
                    if t.tokens_in or t.tokens_out:
                        tokens.add_metric([*key, "in"], t.tokens_in)
                        tokens.add_metric([*key, "out"], t.tokens_out)
                    calls.add_metric(list(key), t.calls)
                    failed.add_metric(list(key), t.failures)
                    running, buckets = 0, []
                    for bound, count in zip((*PROMETHEUS_BUCKETS, math.inf), t.buckets):
                        running += count
                        buckets.append(("+Inf" if bound == math.inf else repr(bound), running))
                    seconds.add_metric(list(key), buckets, t.seconds)
                yield from (calls, failed, seconds, tokens)
                for name, (text, value) in (gauges or {}).items():
                    yield GaugeMetricFamily(name, text, value=value)

        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector())  # type: ignore[arg-type]
        return generate_latest(registry)

    def flush(self, now: float | None = None, everything: bool = False) -> int:
        """Store finished minutes (all of them with `everything`, at shutdown); how many records."""
        current = int((now if now is not None else time.time()) // 60)
        done = sorted(m for m in self._live if everything or m < current)
        written = self.store(self.records(done))
        for minute in done:
            self._keep_today(minute, self._live.pop(minute))
        return written

    def records(self, minutes: list[int] | None = None) -> list[dict[str, Any]]:
        """The counts of `minutes` (None: every minute still in progress here) as stored records."""
        return [{"minute": minute, "endpoint": endpoint, "stage": stage, "model": model, **counts.as_dict()}
                for minute in (sorted(self._live) if minutes is None else minutes)
                for (endpoint, stage, model), counts in self._live.get(minute, {}).items()]

    def store(self, records: list[dict[str, Any]]) -> int:
        """Records of minutes (`flush`'s, or those a killed gateway left: serving/stats_journal.py) added to
        the catalog, else to their days' files (nowhere without either); how many."""
        if not records or not self.catalog_url and self.folder is None:
            return 0
        if self.catalog_url:
            from mlyard.registry.tables import EndpointStatMinute

            with self._catalog_db().session() as s:
                s.add_all([EndpointStatMinute(minute=r["minute"], endpoint=r["endpoint"], stage=r["stage"],
                                              model=r["model"], counts={k: v for k, v in r.items() if k not in _WHERE})
                           for r in records])
            return len(records)
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        by_day: dict[str, list[str]] = {}
        for r in records:
            day = datetime.fromtimestamp(r["minute"] * 60, timezone.utc).strftime("%Y-%m-%d")
            by_day.setdefault(day, []).append(json.dumps(r) + "\n")
        for day, lines in by_day.items():
            with open(self.folder / f"{day}.jsonl", "a", encoding="utf-8") as fh:
                fh.write("".join(lines))
        return len(records)

    def _catalog_db(self):
        if self._catalog is None:
            from mlyard.registry.catalog import Catalog

            self._catalog = Catalog(self.catalog_url)  # type: ignore[arg-type]
        return self._catalog

    def _stored(self, first: int, last: int):
        if self.catalog_url:
            from sqlalchemy import select

            from mlyard.registry.tables import EndpointStatMinute as Row

            with self._catalog_db().session() as s:
                for r in s.scalars(select(Row).where(Row.minute >= first, Row.minute <= last)):
                    yield {"minute": r.minute, "endpoint": r.endpoint, "stage": r.stage, "model": r.model, **r.counts}
            return
        if self.folder is None or not self.folder.is_dir():
            return
        days = {datetime.fromtimestamp(m * 60, timezone.utc).strftime("%Y-%m-%d") for m in (first, last)}
        for path in sorted(self.folder.glob("*.jsonl")):
            if path.stem < min(days) or path.stem > max(days):
                continue
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash
                if first <= rec["minute"] <= last:
                    yield rec

    def query(self, since: float, until: float | None = None, endpoint: str | None = None, stage: str | None = None,
              model: str | None = None) -> dict[str, Any]:
        """Figures per (endpoint, stage, model) over [since, until], with a per-minute series."""
        until = until if until is not None else time.time()
        first, last = int(since // 60), int(until // 60)
        merged: dict[Key, dict[str, Any]] = {}

        def take(minute: int, key: Key, m: dict[str, Any]) -> None:
            if endpoint and key[0] != endpoint or stage and key[1] != stage or model and key[2] != model:
                return
            acc = merged.setdefault(key, {"calls": 0, "failures": 0, "latency_sum": 0.0, "hist": {}, "classes": {},
                                          "series": {}, "callers": {}, "tokens": None})
            for who, counts in (m.get("callers") or {}).items():  # minutes from before have none (or no tokens)
                c = acc["callers"].setdefault(who, [0, 0, 0, 0])
                for i, n in enumerate(counts[:4]):
                    c[i] += n
            if m.get("tokens"):
                acc["tokens"] = add_usage(acc["tokens"], m["tokens"])
            acc["calls"] += m["calls"]
            acc["failures"] += m["failures"]
            acc["latency_sum"] += m["latency_sum"]
            for b, n in m["hist"].items():
                acc["hist"][int(b)] = acc["hist"].get(int(b), 0) + n
            for label, (count, conf, scored) in m["classes"].items():
                c = acc["classes"].setdefault(label, [0, 0.0, 0])
                c[0] += count
                c[1] += conf
                c[2] += scored
            s = acc["series"].setdefault(minute, {"calls": 0, "failures": 0, "hist": {}, "tokens_out": 0})
            s["calls"] += m["calls"]
            s["failures"] += m["failures"]
            s["tokens_out"] += (m.get("tokens") or {}).get("out", 0)
            for b, n in m["hist"].items():
                s["hist"][int(b)] = s["hist"].get(int(b), 0) + n

        for rec in self._stored(first, last):
            take(rec["minute"], (rec["endpoint"], rec["stage"], rec["model"]), rec)
        for minute, per in list(self._live.items()):
            if first <= minute <= last:
                for key, m in list(per.items()):
                    take(minute, key, m.as_dict())
        rows = []
        for (ep, st, md), acc in sorted(merged.items()):
            queue = self.queues.get((ep, st, md))
            rows.append({"endpoint": ep, "stage": st, "model": md, **summarize(acc), **({"queue": {
                "generating": queue[1], "waiting": queue[2], "at": datetime.fromtimestamp(queue[0], timezone.utc)
                .isoformat()}} if queue else {}),
                         "series": [{"minute": datetime.fromtimestamp(mm * 60, timezone.utc).isoformat(),
                                     "calls": s["calls"], "failures": s["failures"],
                                     **({"tokens_out": s["tokens_out"]} if acc["tokens"] else {}),
                                     **{k: v for k, v in percentiles(s["hist"]).items() if k in ("p50", "p99")}}
                                    for mm, s in sorted(acc["series"].items())]})
        return {"since": datetime.fromtimestamp(since, timezone.utc).isoformat(),
                "until": datetime.fromtimestamp(until, timezone.utc).isoformat(), "stats": rows}

    def spent(self, caller: str, now: float | None = None) -> int:
        """Tokens (in and out) the caller has used today (UTC), on every endpoint: what the stored minutes held
        when `reload_today` last read them, and this gateway's since."""
        now = now if now is not None else time.time()
        day = int(now // 86400)
        if self._stored_today[0] != day:
            self.reload_today(now)
        first = day * 1440
        live = sum(c[2] + c[3] for minute, per in self._live.items() if minute >= first
                   for m in per.values() if (c := m.callers.get(caller)) is not None and len(c) > 3)
        return self._stored_today[1].get(caller, 0) + live

    def _keep_today(self, minute: int, per: dict[Key, _Minute]) -> None:
        """A minute leaving `_live` for the store: its callers' tokens move to today's stored counts."""
        day, spent = self._stored_today
        if minute // 1440 != day:
            return
        for m in per.values():
            for who, c in m.callers.items():
                if len(c) > 3 and c[2] + c[3]:
                    spent[who] = spent.get(who, 0) + c[2] + c[3]

    def reload_today(self, now: float | None = None) -> None:
        """Read today's stored minutes (every gateway replica's) into the callers' tokens of the day (the
        gateway does every minute while a budget is set; `spent` at the first call of a day, so a restarted
        gateway keeps today's budgets spent). A minute flushed while this reads is counted at the next read."""
        now = now if now is not None else time.time()
        day = int(now // 86400)
        spent: dict[str, int] = {}
        for rec in self._stored(day * 1440, int(now // 60)):
            for who, counts in (rec.get("callers") or {}).items():
                if len(counts) > 3:
                    spent[who] = spent.get(who, 0) + counts[2] + counts[3]
        self._stored_today = (day, spent)
