
from core.specs import KATIB_METRIC_PATTERN
from tasks.metrics import MetricParser, MetricStream, latest


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
