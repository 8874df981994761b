"""The dashboard's parts without a stack: the busiest endpoints from the statistics the gateway's
replicas recorded in the catalog, and the page (HTML with SVG bars, every name escaped)."""

from __future__ import annotations

import socket
import time

from mlyard.core.settings import Settings


def test_the_top_three_endpoints_by_calls_with_each_stages_successes_and_failures(tmp_path):

    from mlyard import dashboard
    from mlyard.registry.catalog import Catalog
    from mlyard.registry.tables import EndpointStatMinute

    with socket.socket() as sock:  # a port nothing listens on: no gateway answers there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(home=tmp_path / "home", gateway_port=port)
    catalog = Catalog(settings.catalog_db_url)
    now = int(time.time() // 60)
    rows = [("iris", "default", 50, 2), ("iris", "canary", 10, 5), ("bert", "default", 30, 0), ("small", "default", 5, 0),
            ("tiny", "default", 1, 1), ("rag:docs", "query", 500, 0), ("old", "default", 900, 0)]
    with catalog.session() as s:
        for i, (endpoint, stage, calls, failures) in enumerate(rows):
            minute = now - 2 if endpoint != "old" else now - 3 * 24 * 60  # `old`: outside the period
            s.add(EndpointStatMinute(minute=minute - i % 2, endpoint=endpoint, stage=stage, model=f"{endpoint}/1",
                                     counts={"calls": calls, "failures": failures, "latency_sum": 1.0 * calls,
                                             "hist": {}, "classes": {}}))
    mon = dashboard._monitoring(settings, time.time() - 86400, None)  # an admin: every endpoint
    assert [(t["endpoint"], t["calls"], t["failures"]) for t in mon["top_endpoints"]] == [
        ("iris", 60, 7), ("bert", 30, 0), ("small", 5, 0)]  # a RAG's route is not an endpoint
    assert mon["top_endpoints"][0]["stages"] == [{"stage": "canary", "successes": 5, "failures": 5},
                                                 {"stage": "default", "successes": 48, "failures": 2}]
    catalog.dispose()


def test_the_page_is_html_with_svg_bars_and_escapes_every_name():
    from mlyard import dashboard

    data = {"generated_at": "2026-11-25T00:00:00+00:00",
            "usage": {"notebooks_healthy": 2, "trainings_complete": 1000, "tunings_complete": 7, "endpoints_active": 50},
            "monitoring": {"since": "a", "until": "b", "top_endpoints": [
                {"endpoint": "iris", "calls": 60, "failures": 7, "stages": [{"stage": "default", "successes": 53,
                                                                             "failures": 7}]}]},
            "resources": {"CPU": [{"resource": "notebook <b>x</b>", "instance_type": "cpu-2", "cpu": 2.0, "gpu": 0}],
                          "GPU": [], "totals": {"CPU": 2.0, "GPU": 0}},
            "projects": [{"project": "vision<1>", "members": 3, "gpus": 2, "max_runs": None, "running": 1,
                          "gpus_in_use": 1, "endpoints_active": 2}],
            "line": {"places": 4, "holding": 3, "waiting": 130,
                     "projects": [{"project": "vision<1>", "holding": 3, "waiting": 128}]},
            "audit": [{"at": "2026-11-25T00:00:00+00:00", "user": "bob", "project": "vision<1>", "action":
                       "template.delete", "resource": "template <i>t</i>", "result": "refused", "source": "10.0.0.7"}]}
    html = dashboard.page(data)
    assert "<td>vision&lt;1&gt;</td><td>3</td><td>1 (-)</td><td>1 (2)</td><td>2</td>" in html  # per project
    assert "3 of the local pool's 4 places" in html and "130 run(s) waiting in line" in html  # the line
    assert "<td>vision&lt;1&gt;</td><td>3</td><td>128</td>" in html
    assert 'class="bad">refused<' in html and "template &lt;i&gt;t&lt;/i&gt;" in html  # the audit trail
    assert html.startswith("<!doctype html>") and "<script" not in html
    assert ">1000<" in html and ">50<" in html and html.count("<svg") == 2  # endpoints and CPU; no GPU in use
    assert "notebook &lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    assert "iris: 60 calls, 7 failed" in html  # each bar's tooltip
    md = dashboard.markdown(data)
    assert "| iris | default | 53 | 7 |" in md and "| (none) | | | |" in md
