"""The gateway's routing: paths to endpoint, stage and model; least outstanding requests across healthy
replicas; a default-stage switch moving the next request at once."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from mlyard.serving.routing import NoReplica, NoRoute, Replica, Route, Router, parse


def test_paths_name_the_endpoint_stage_and_model():
    assert parse("/iris-api/iris/v1/models/iris:predict") == Route("iris-api", None, "iris", "/v1/models/iris:predict")
    assert parse("/iris-api/stages/canary/iris/v2/models/iris/infer") == Route(
        "iris-api", "canary", "iris", "/v2/models/iris/infer")
    assert parse("/chat/smollm2/openai/v1/chat/completions").rest == "/openai/v1/chat/completions"
    for bad in ("/", "/iris-api", "/iris-api/iris", "/iris-api/iris/v9/x"):
        with pytest.raises(NoRoute):
            parse(bad)


def test_least_outstanding_among_healthy_replicas():
    router = Router()
    a, b, c = Replica("http://a", "iris"), Replica("http://b", "iris"), Replica("http://c", "bert")
    router.set_stage("ep", "default", [a, b, c], default=True)
    route = parse("/ep/iris/v1/models/iris:predict")
    first = router.acquire(route)
    second = router.acquire(route)
    assert {first.url, second.url} == {"http://a", "http://b"}  # the busy one is passed over
    router.release(first)
    assert router.acquire(route) is first
    router.set_health("http://a", False)
    assert all(router.acquire(route) is b for _ in range(3))  # an unhealthy replica takes nothing
    router.set_health("http://b", False)
    with pytest.raises(NoReplica):
        router.acquire(route)
    with pytest.raises(NoRoute, match="serves no model 'gpt'"):
        router.acquire(parse("/ep/gpt/v1/models/gpt:predict"))
    with pytest.raises(NoRoute, match="no endpoint 'other'"):
        router.acquire(parse("/other/iris/v1/models/iris:predict"))
    with pytest.raises(NoRoute, match="no stage 'canary'"):
        router.acquire(parse("/ep/stages/canary/iris/v1/models/iris:predict"))


def test_counts_hold_under_threads_and_a_default_switch_moves_the_next_request():
    router = Router()
    old, new = Replica("http://old", "iris"), Replica("http://new", "iris")
    router.set_stage("ep", "default", [old], default=True)
    router.set_stage("ep", "next", [new])
    route = parse("/ep/iris/v1/models/iris:predict")

    def one(_):
        r = router.acquire(route)
        router.release(r)
        return r.url

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(200))) == {"http://old"}
    assert old.outstanding == 0
    router.set_stage("ep", "next", [new], default=True)
    assert router.acquire(route) is new
    assert router.acquire(parse("/ep/stages/default/iris/v1/models/iris:predict")) is old  # still reachable by name
    router.remove_stage("ep", "default")
    with pytest.raises(NoRoute):
        router.acquire(parse("/ep/stages/default/iris/v1/models/iris:predict"))


def test_a_refresh_keeps_counts_of_requests_in_flight():
    """The gateway re-reads its table every second: a request acquired before a refresh releases the
    same replica the table holds after it, so counts neither leak nor drain early."""
    r = Router()
    r.set_stage("e", "s", [Replica("http://a", "m")], default=True)
    held = r.acquire(parse("/e/m/v1/models/m:predict"))
    r.set_stage("e", "s", [Replica("http://a", "m")], default=True)
    assert r.view()["e"]["stages"]["s"][0]["outstanding"] == 1
    r.release(held)
    assert r.view()["e"]["stages"]["s"][0]["outstanding"] == 0


def test_the_default_url_keeps_answering_after_a_promotion_to_a_stage_serving_another_model():
    """The demo promoted `tuned` (serving digits-tuned) over `default` (serving digits): a client that kept
    /digits/digits/v1/models/digits:predict is answered by the model the default stage serves now."""
    r = Router()
    r.set_stage("digits", "default", [Replica("http://a", "digits")], default=True)
    kept = parse("/digits/digits/v1/models/digits:predict")
    served = {"digits", "digits-tuned"}  # what the endpoint has served (the catalog's serving history)
    assert r.for_default(kept, served) == kept  # served as it is, before the promotion
    r.set_stage("digits", "tuned", [Replica("http://b", "digits-tuned")], default=True)
    moved = r.for_default(kept, served)
    assert moved == Route("digits", None, "digits-tuned", "/v1/models/digits-tuned:predict")
    assert r.acquire(moved).url == "http://b"
    v2 = r.for_default(parse("/digits/digits/v2/models/digits/infer"), served)
    assert v2.rest == "/v2/models/digits-tuned/infer"
    # a stage named in the URL, or a default stage serving several models, is taken as named
    named = parse("/digits/stages/default/digits/v1/models/digits:predict")
    assert r.for_default(named, served) == named
    typo = parse("/digits/digts/v1/models/digts:predict")  # a name the endpoint never served: unknown
    assert r.for_default(typo, served) == typo
    r.set_stage("digits", "tuned", [Replica("http://b", "digits-tuned"), Replica("http://c", "other")], default=True)
    assert r.for_default(kept, served) == kept
    with pytest.raises(NoRoute, match="serves no model 'digits'"):
        r.acquire(kept)
