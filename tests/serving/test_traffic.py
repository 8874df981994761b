"""Traffic shares at the gateway, pure (serving/traffic.py): which stage takes a request, callers pinned
by affinity, answers compared, and the live and shadow gates' arithmetic on gateway counts."""

import orjson
import pytest

from mlyard.serving.traffic import LiveCounts, Split, agree, judge_live, judge_shadow, merged, since, summary

STAGES = {"default": {"weight": 0, "shadow": 0}, "canary": {"weight": 10, "shadow": 0},
          "mirror": {"weight": 0, "shadow": 20}}
MODELS = {"default": {"iris", "digits"}, "canary": {"iris"}, "mirror": {"iris"}}


def test_weights_split_requests_per_model_and_affinity_pins_a_caller():
    split = Split.of(STAGES, MODELS)
    assert split is not None and split.stages() == {"canary", "mirror"}
    picks = [split.choose("iris") for _ in range(20_000)]
    assert 0.085 < picks.count("canary") / len(picks) < 0.115  # 10 %, within 5 standard deviations
    assert set(picks) == {"canary", None}  # None: the default stage
    assert {split.choose("digits") for _ in range(500)} == {None}  # the canary does not serve digits
    callers = [f"user-{i}".encode() for i in range(2000)]
    first = [split.choose("iris", c) for c in callers]
    assert first == [split.choose("iris", c) for c in callers]  # the same caller, the same stage
    assert 0.07 < first.count("canary") / len(first) < 0.13
    mirrored = [split.shadow("iris") for _ in range(20_000)]
    assert 0.18 < mirrored.count("mirror") / len(mirrored) < 0.22 and split.shadow("digits") is None
    assert Split.of({"default": {"weight": 0, "shadow": 0}}, MODELS) is None  # no share: nothing to do per request


def test_answers_agree_on_labels_and_on_numbers_within_the_tolerance():
    v1 = lambda preds: orjson.dumps({"predictions": preds})  # noqa: E731
    assert agree(v1([1, 0, 2]), v1([1, 0, 2])) and not agree(v1([1, 0, 2]), v1([1, 1, 2]))
    assert agree(v1(["cat", "dog"]), v1(["cat", "dog"])) and not agree(v1(["cat"]), v1(["dog"]))
    assert agree(v1([10.0, 2.5]), v1([10.00001, 2.5]), tolerance=1e-5) and not agree(v1([10.0]), v1([10.1]), 1e-5)
    assert not agree(v1([1, 2]), v1([1]))  # a missing row never agrees
    v2 = lambda data: orjson.dumps({"model_name": "m", "id": "x", "outputs": [  # noqa: E731
        {"name": "predict", "datatype": "INT64", "shape": [len(data)], "data": data}]})
    assert agree(v2([1, 2]), v2([1, 2])) and not agree(v2([1, 2]), v2([2, 2]))
    assert not agree(b"not json", v1([1]))


def test_the_live_gate_waits_for_requests_then_judges_the_rate_and_p99_of_one_window():
    counts = LiveCounts()
    for _ in range(50):
        counts.record(("ep", "canary"), 5.0, failed=False)
    first = {"gw-1": counts.changed()[("ep", "canary")]}
    assert counts.changed() == {}  # only what changed is written again
    for i in range(100):
        counts.record(("ep", "canary"), 20.0 if i < 98 else 900.0, failed=i % 5 == 0)
    now = {"gw-1": counts.changed()[("ep", "canary")], "gw-2": {"calls": 10, "failures": 0, "hist": {"10": 10}}}
    window = since(now, first)
    assert window["calls"] == 110 and window["failures"] == 20  # the 50 before the window are not in it
    waiting = judge_live(window, 0.05, None, min_requests=500)
    assert waiting.passed is None and "110 of the 500" in waiting.why  # too few: wait, never fail
    failed = judge_live(window, 0.05, None, min_requests=100)
    assert failed.passed is False and failed.measured["error_rate"] == pytest.approx(20 / 110, abs=1e-3)
    slow = judge_live(window, 0.5, 100.0, min_requests=100)
    assert slow.passed is False and slow.measured["p99_ms"] > 100 and "p99" in slow.why
    assert judge_live(window, 0.5, 5000.0, min_requests=100).passed is True
    restarted = since({"gw-1": {"calls": 3, "failures": 0, "hist": {"1": 3}}}, now)  # a new process, same id
    assert restarted["calls"] == 3


def test_the_shadow_gate_on_compared_pairs():
    counts = LiveCounts()
    for i in range(40):
        counts.record_pair(("ep", "mirror"), agreed=i % 10 != 0, shadow_ms=3.0, failed=False)
    counts.record_pair(("ep", "mirror"), agreed=None, shadow_ms=3.0, failed=False)  # a stream: not compared
    totals = merged({"gw": counts.changed()[("ep", "mirror")]})
    assert totals["pairs"] == 40 and totals["agreed"] == 36
    assert judge_shadow(totals, 0.95, min_pairs=100).passed is None
    assert judge_shadow(totals, 0.95, min_pairs=20).passed is False
    assert judge_shadow(totals, 0.85, min_pairs=20).passed is True
    assert summary(totals)["agreement"] == 0.9
