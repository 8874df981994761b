"""A gateway replica reads the catalog every second; a request that finds its stage serving nothing reads it again
first (at most every RECHECK_SECONDS), so what a flow has just routed is served at once by every replica: a RAG
made with `--wait` and then asked at another gateway replica than the one its flow told, a stage just deployed. On
real sockets, the catalog a real SQLite one, the stage's model server a real HTTP server."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import ThreadingHTTPServer

import httpx

from mlyard.serving import fastserver
from mlyard.serving.gateway import RECHECK_SECONDS, Gateway
from tests.serving.test_gateway_abuse import INTERNAL, Running


def test_a_stage_routed_since_the_last_read_is_served_at_once(tmp_path):
    from pod_moves import INFER, Model

    from mlyard.core.specs.endpoint import EndpointSpec, StageResourceSpec, StageSpec
    from mlyard.registry import Catalog
    from mlyard.registry.endpoints import Endpoints

    model = ThreadingHTTPServer(("127.0.0.1", 0), Model)
    threading.Thread(target=model.serve_forever, daemon=True).start()
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    endpoints = Endpoints(catalog)
    view = endpoints.create(EndpointSpec(name="late", public=True, stage=StageSpec(
        instance_type="m2.c4m8", resources=[StageResourceSpec(model="m/1")])), [("m", "1")])
    stage = view["stages"][0]
    gw = Gateway(tmp_path / "home", str(catalog.engine.url), internal_token=INTERNAL, max_body=1024 * 1024,
                 refresh_seconds=3600)  # its periodic read never comes again in this test
    running = Running(gw, fastserver.Limits(max_head_bytes=8 * 1024, head_seconds=2, body_seconds=2, idle_seconds=2,
                                            max_connections=16))
    try:
        asyncio.run_coroutine_threadsafe(gw.refresh(), running.loop).result(10)  # the replica's last read
        url = f"http://127.0.0.1:{running.port}/late/m/v2/models/m/infer"
        made = httpx.post(url, json=INFER, timeout=10)
        assert made.status_code == 503 and "CREATE REQUESTED" in made.text, made.text  # being made: nothing yet
        rid = stage["resources"][0]["id"]  # as the endpoint flow leaves it: its Service routed, then ACTIVE
        endpoints.set_status("late", "ACTIVE", stage["name"], rid)
        endpoints.set_status("late", "ACTIVE", stage["name"])
        endpoints.set_service_urls("late", stage["name"], {rid: f"http://127.0.0.1:{model.server_port}"})
        endpoints.set_status("late", "ACTIVE")
        time.sleep(RECHECK_SECONDS)
        answered = httpx.post(url, json=INFER, timeout=10)
        assert answered.status_code == 200 and answered.json()["outputs"][0]["data"] == [1], answered.text
    finally:
        running.stop()
        model.shutdown()
        catalog.dispose()
