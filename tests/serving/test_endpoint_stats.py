"""The gateway's statistics, pure: minutes merged over a period, percentiles within the histogram's
4 %, classes and confidence from the replicas' header, persisted minutes read back."""

from __future__ import annotations

import time

import numpy as np

from mlyard.serving.class_counts import format_classes
from mlyard.serving.endpoint_stats import EndpointStats, parse_classes


def test_percentiles_classes_and_persistence(tmp_path):
    stats = EndpointStats(tmp_path)
    rng = np.random.default_rng(0)
    lat = rng.lognormal(mean=1.0, sigma=0.6, size=5000)  # ms
    t0 = 1_800_000_000.0
    for i, ms in enumerate(lat):
        header = format_classes({"cat": [1, 0.9, 1]} if i % 4 else {"dog": [2, 1.2, 2]})
        stats.record(("e", "s", "m"), float(ms), failed=i % 100 == 0, classes=header, now=t0 + i * 0.05)
    stats.record(("e", "other", "m"), 1.0, False, now=t0)
    assert stats.flush(now=t0 + 3600) > 0  # finished minutes go to disk
    fresh = EndpointStats(tmp_path)  # a restarted gateway reads them back
    row = next(r for r in fresh.query(t0 - 60, t0 + 600, endpoint="e", stage="s")["stats"])
    assert row["calls"] == 5000 and row["failures"] == 50
    for q, name in ((50, "p50"), (95, "p95"), (99, "p99")):
        exact = float(np.percentile(lat, q))
        assert abs(row["latency_ms"][name] - exact) / exact < 0.05, (name, row["latency_ms"][name], exact)
    assert abs(row["latency_ms"]["mean"] - lat.mean()) < 1e-6 * 5000
    assert row["predictions"] == {"cat": 3750, "dog": 2500}
    assert row["average_confidence_per_class"] == {"cat": 0.9, "dog": 0.6}
    assert len(row["series"]) == 5  # 250 s of calls: five minutes
    assert fresh.query(t0 + 400, t0 + 500, endpoint="e")["stats"] == []


def test_class_header_round_trip_and_garbage():
    header = format_classes({"a b/c": [2, 1.5, 2], "0": [1, 0.0, 0]})
    assert parse_classes(header) == [("a b/c", 2, 1.5, 2), ("0", 1, 0.0, 0)]
    assert parse_classes(b"junk;=;x=1:2;y=a:b:c") == []


def test_totals_for_prometheus_read_back_by_its_own_parser():
    from prometheus_client.parser import text_string_to_metric_families

    stats = EndpointStats(None)
    for ms, failed in ((3.0, False), (40.0, False), (700.0, True), (90_000.0, False)):
        stats.record(("fraud", "default", "clf"), ms, failed)
    stats.record(("fraud", "canary", "clf"), 12.0, False)
    text = stats.prometheus({"mlyard_gateway_in_flight": ("now", 2)}).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    labels = {"endpoint": "fraud", "stage": "default", "model": "clf"}

    def value(family: str, sample: str, **extra: str) -> float:
        return next(s.value for s in families[family].samples if s.name == sample and s.labels == {**labels, **extra})

    assert value("mlyard_gateway_requests", "mlyard_gateway_requests_total") == 4
    assert value("mlyard_gateway_request_failures", "mlyard_gateway_request_failures_total") == 1
    seconds = "mlyard_gateway_request_duration_seconds"
    assert value(seconds, seconds + "_count") == 4 and abs(value(seconds, seconds + "_sum") - 90.743) < 1e-9
    assert value(seconds, seconds + "_bucket", le="0.005") == 1 and value(seconds, seconds + "_bucket", le="0.05") == 2
    assert value(seconds, seconds + "_bucket", le="60.0") == 3 and value(seconds, seconds + "_bucket", le="+Inf") == 4
    assert families["mlyard_gateway_in_flight"].samples[0].value == 2
    canary = [s for s in families["mlyard_gateway_requests"].samples if s.labels["stage"] == "canary"]
    assert [s.value for s in canary] == [1]


def test_gateway_replicas_add_to_one_record_in_the_catalog(tmp_path):
    """A stateless gateway: two replicas flush their minutes to the catalog; any reader merges them."""
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    a, b = EndpointStats(None, url), EndpointStats(None, url)
    t0 = 1_800_000_000.0
    for i in range(30):
        a.record(("fraud", "default", "clf"), 10.0, False, format_classes({"cat": [1, 0.8, 1]}), now=t0 + i)
        b.record(("fraud", "default", "clf"), 30.0, i < 3, format_classes({"dog": [1, 0.6, 1]}), now=t0 + i)
    assert a.flush(now=t0 + 120) == 1 and b.flush(now=t0 + 120) == 1
    row = EndpointStats(None, url).query(t0 - 60, t0 + 120, endpoint="fraud")["stats"][0]
    assert (row["calls"], row["failures"]) == (60, 3) and row["predictions"] == {"cat": 30, "dog": 30}
    assert abs(row["latency_ms"]["mean"] - 20.0) < 1e-9
    assert not list((tmp_path).glob("*.jsonl")), "nothing under a home"


def test_usage_is_read_off_an_answer_however_it_is_cut():
    """serving/usage.py, as the gateway relays: the model server's header or stream comment (taken out of
    what the client gets), an engine's OpenAI usage in a whole JSON answer or in a stream's last event,
    cut anywhere; a header that is not the model server's is not believed."""
    import json

    from mlyard.serving.usage import Scan, format_usage, parse_usage, stream_comment

    said = Scan(format_usage(12, 30, 153.2), 0.0, True)
    assert (said.usage.prompt, said.usage.completion, said.usage.ttft_ms) == (12, 30, 153.2)
    assert parse_usage(b"prompt=-1;completion=3") is None and parse_usage(b"garbage") is None
    scan = Scan(None, 0.0, True)
    out = scan.feed(b'data: {"x": 1}\n\n' + stream_comment(5, 7, 40.0) + b"data: [DONE]\n\n", 0.05)
    assert out == b'data: {"x": 1}\n\ndata: [DONE]\n\n' and scan.result().completion == 7
    event = b"data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9}}).encode()
    for cut in range(1, len(event), 7):
        scan = Scan(None, 0.0, True)
        scan.feed(b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n', 0.2)
        scan.feed(event[:cut], 0.3)
        scan.feed(event[cut:] + b"\n\ndata: [DONE]\n\n", 0.4)
        got = scan.result()
        assert (got.prompt, got.completion, got.ttft_ms) == (3, 9, 200.0), cut  # its first token timed here
    whole = json.dumps({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}).encode()
    scan = Scan(None, 0.0, True)
    for i in range(0, len(whole), 5):
        scan.feed(whole[i:i + 5], 0.1)
    assert (scan.result().prompt, scan.result().completion, scan.result().ttft_ms) == (4, 2, None)
    other = Scan(format_usage(1, 2, 3.0), 0.0, False)  # a route that is not a completion: nothing taken or read
    assert other.feed(stream_comment(5, 7, 40.0), 0.1) == stream_comment(5, 7, 40.0) and other.result() is None


def test_token_figures_per_caller_and_a_days_spending(tmp_path):
    from mlyard.serving.usage import Usage

    stats = EndpointStats(tmp_path)
    t0 = 1_800_000_000.0 // 86400 * 86400 + 3600  # 01:00 UTC of a day
    for i in range(4):
        stats.record(("chat", "default", "llm"), 1000.0, False, now=t0 + i, caller="token:1",
                     usage=Usage(10, 20, 200.0))
    stats.record(("chat", "default", "llm"), 500.0, False, now=t0 + 5, caller="rag:docs", usage=Usage(100, 5, 100.0))
    row = stats.query(t0 - 60, t0 + 60)["stats"][0]
    assert (row["tokens"]["answers"], row["tokens"]["in"], row["tokens"]["out"]) == (5, 140, 85)
    assert row["tokens"]["ttft_ms"]["mean"] == 180.0 and row["tokens"]["tokens_per_second"] == round(85 / 3.6, 2)
    callers = {c["caller"]: (c["calls"], c["tokens_in"], c["tokens_out"]) for c in row["callers"]}
    assert callers == {"token:1": (4, 40, 80), "rag:docs": (1, 100, 5)}
    assert stats.spent("token:1", now=t0 + 10) == 120
    stats.flush(now=t0 + 600)  # the minutes stored: still today's
    assert stats.spent("token:1", now=t0 + 610) == 120
    again = EndpointStats(tmp_path)  # a restarted gateway reads what today's minutes hold
    assert again.spent("token:1", now=t0 + 620) == 120 and again.spent("token:1", now=t0 + 86400) == 0


def test_the_usage_comment_is_taken_out_wherever_the_pieces_are_cut_and_nothing_else_is():
    from mlyard.serving.usage import Scan, stream_comment

    stream = (b'data: {"choices": [{"delta": {"content": "a:"}}]}\n\n' + stream_comment(5, 7, 40.0)
              + b"data: [DONE]\n\n")
    clean = b'data: {"choices": [{"delta": {"content": "a:"}}]}\n\ndata: [DONE]\n\n'
    for cut in range(1, len(stream)):
        for first, second in ((cut, None), (cut, min(len(stream), cut + 9))):
            scan = Scan(None, 0.0, True)
            pieces = [stream[:first], stream[first:second] if second else stream[first:]]
            if second:
                pieces.append(stream[second:])
            sent = b"".join(scan.feed(p, 0.1) for p in pieces) + scan.rest()
            assert sent == clean, (cut, sent)
            assert scan.result().completion == 7, cut
    whole = Scan(None, 0.0, True)
    assert whole.whole(stream, 0.1) == clean and whole.result().prompt == 5  # a short stream, all here at once


def test_a_gateway_killed_mid_minute_loses_none_of_its_counts(tmp_path):
    """A gateway killed with kill -9 lost the minute in progress (its statistics and the tokens that budgets
    count): it writes its minutes in progress to its journal every second, and the next gateway of the
    machine stores what a gone gateway's journal held, once."""
    import os
    import socket
    import subprocess
    import sys

    from mlyard.serving import stats_journal
    from mlyard.serving.usage import Usage

    now = time.time()
    live = tmp_path / "live"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])  # a gateway process that has died since
    gone.wait()
    killed = EndpointStats(tmp_path)
    for ms in (10.0, 20.0, 30.0):
        killed.record(("chat", "default", "m"), ms, False, now=now, caller="token:7",
                      usage=Usage(5, 7, 1.0))
    journal = live / f"{socket.gethostname()}-{gone.pid}-{int(now)}.json"
    stats_journal.write(killed, journal)
    running = live / f"{socket.gethostname()}-{os.getpid()}-{int(now)}.json"  # a gateway alive: left alone
    stats_journal.write(killed, running)

    fresh = EndpointStats(tmp_path)
    assert fresh.query(now - 60, now + 60)["stats"] == [], "nothing was stored before the kill"
    assert stats_journal.recover(fresh, live, live / "mine.json") == 1
    row = fresh.query(now - 60, now + 60)["stats"][0]
    assert row["calls"] == 3 and fresh.spent("token:7", now) == 36
    assert not journal.exists() and running.exists()
    assert stats_journal.recover(EndpointStats(tmp_path), live, live / "mine.json") == 0, "stored once"
    assert EndpointStats(tmp_path).query(now - 60, now + 60)["stats"][0]["calls"] == 3
