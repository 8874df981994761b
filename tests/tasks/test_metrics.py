
import pytest

from mlyard.core.specs import KATIB_METRIC_PATTERN
from mlyard.tasks.metrics import MetricParser, MetricStream, latest


def test_katib_format_with_epoch_as_step():
    p = MetricParser([KATIB_METRIC_PATTERN])
    got = p.parse("epoch=3 loss=0.25 accuracy=0.9", now_ms=1)
    assert {(m.name, m.value, m.step) for m in got} == {("loss", 0.25, 3), ("accuracy", 0.9, 3), ("epoch", 3, 3)}
    got = p.parse("step=7 loss=0.2", now_ms=1)
    assert {(m.name, m.value, m.step) for m in got} == {("loss", 0.2, 7)}, "step is a counter, not a metric"


def test_steps_count_occurrences_without_a_step_field():
    p = MetricParser([KATIB_METRIC_PATTERN])
    steps = [m.step for line in ("loss=1", "noise", "loss=0.5", "loss=1e-3") for m in p.parse(line)]
    assert steps == [0, 1, 2]
    assert p.parse("nothing here") == []


def test_custom_pattern_and_non_numbers_ignored():
    p = MetricParser([r"(val_loss): ([\d.]+)", KATIB_METRIC_PATTERN])
    got = latest(p.parse("val_loss: 0.75 name=abc"))
    assert got == {"val_loss": 0.75}


def test_stream_batches_and_flushes_on_exit():
    batches = []
    with MetricStream(batches.append, flush_seconds=0.05) as s:
        p = MetricParser([KATIB_METRIC_PATTERN])
        for i in range(50):
            s.put(p.parse(f"loss={i}"))
    flat = [m.value for b in batches for m in b]
    assert flat == [float(i) for i in range(50)] and len(batches) < 50


def test_stream_survives_a_failing_sink():
    def sink(batch):
        raise RuntimeError("tracking store down")

    with MetricStream(sink, flush_seconds=0.01) as s:
        s.put(MetricParser([KATIB_METRIC_PATTERN]).parse("loss=1"))
    assert s.errors and isinstance(s.errors[0], RuntimeError)


def test_named_patterns_read_their_metric_by_name():
    import re

    p = MetricParser([KATIB_METRIC_PATTERN, ("accuracy", re.compile(r"ACC: ([\d.]+)"))])
    assert latest(p.parse("epoch=2 ACC: 0.91")) == {"epoch": 2, "accuracy": 0.91}


def test_katib_json_lines_carry_their_own_timestamps():
    p = MetricParser([], json_format=True)
    got = p.parse('{"epoch": 1, "loss": "0.25", "checkpoint": "", "timestamp": 1700000000.5}', now_ms=1)
    assert {(m.name, m.value, m.step, m.timestamp_ms) for m in got} == {
        ("loss", 0.25, 1, 1700000000500), ("epoch", 1.0, 1, 1700000000500)}
    got = p.parse('{"loss": 0.2, "timestamp": "2023-11-14T22:13:20Z"}')
    assert [(m.name, m.timestamp_ms) for m in got] == [("loss", 1700000000000)]
    assert p.parse("plain output is not metrics") == [] and p.error is None


@pytest.mark.parametrize("line, words", [
    ('{"loss": 0.2', "not a JSON object (Expecting"),
    ("[1, 2]", None),  # not an object line: output, not metrics
])
def test_a_malformed_json_metrics_line_fails_the_collection(line, words):
    p = MetricParser([], json_format=True)
    assert p.parse(line) == []
    if words is None:
        assert p.error is None
    else:
        assert words in p.error
        assert p.parse('{"loss": 0.1}') == [], "nothing after the failure counts"


def test_a_timestamp_that_cannot_be_read_leaves_the_metrics_without_a_time():
    """As Katib records the metric and goes on: the training does not fail, and the line is said once."""
    p = MetricParser([], json_format=True)
    got = p.parse('{"loss": 0.2, "timestamp": "yesterday"}', now_ms=5)
    assert [(m.name, m.value, m.timestamp_ms) for m in got] == [("loss", 0.2, 5)] and p.error is None
    p.parse('{"loss": 0.1, "timestamp": "today"}', now_ms=6)
    assert len(p.notes) == 1 and "timestamp 'yesterday'" in p.notes[0]
    assert [m.value for m in p.parse('{"loss": 0.05}')] == [0.05]


def test_json_names_must_be_numbers():
    from mlyard.core.metrics import MetricLineError, json_metric_values

    assert json_metric_values('{"accuracy": "0.9", "note": "x"}', ["accuracy"]) == ({"accuracy": 0.9}, None)
    with pytest.raises(MetricLineError, match="'accuracy' has the value 'high'"):
        json_metric_values('{"accuracy": "high"}', ["accuracy"])
