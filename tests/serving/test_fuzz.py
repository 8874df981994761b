"""Random bodies and headers (hypothesis) against the protocol decoders and a running model server:
the decoders raise nothing but BadRequest, and the server never crashes and never answers 500 for a
reason the model did not cause (a model that is handed NaN may refuse it: that 500 names the model)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_http import call, serve, stop

from mlyard.serving import protocol
from mlyard.serving.protocol import BadRequest

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner,
                                                                                             max_size=4), max_leaves=30)
datatypes = st.sampled_from([*protocol.DATATYPES, "FLOAT", "", "fp64"])
shapes = st.lists(st.one_of(st.integers(-2, 6), st.just(True), st.text(max_size=2)), max_size=3)
tensors = st.fixed_dictionaries({"name": st.one_of(st.just("input-0"), st.text(max_size=5), st.integers()),
                                 "shape": st.one_of(shapes, values), "datatype": st.one_of(datatypes, values),
                                 "data": values},
                                optional={"parameters": st.one_of(values, st.fixed_dictionaries(
                                    {"binary_data_size": st.integers(-3, 40)}))})
v2_bodies = st.one_of(values, st.fixed_dictionaries({"inputs": st.one_of(st.lists(tensors, max_size=3), values)},
                                                    optional={"outputs": values, "parameters": values, "id": values}))
v1_bodies = st.one_of(values, st.fixed_dictionaries({"instances": values}, optional={"parameters": values}))


def _encode(doc) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


@settings(max_examples=400, deadline=None)
@given(body=v2_bodies, tail=st.binary(max_size=40), header=st.one_of(st.none(), st.integers(-5, 400)))
def test_v2_decoder_raises_only_bad_request(body, tail, header):
    raw = _encode(body)
    try:
        protocol.v2_request(raw + tail if header is not None else raw, header)
    except BadRequest:
        pass


@settings(max_examples=300, deadline=None)
@given(body=v1_bodies)
def test_v1_decoder_raises_only_bad_request(body):
    try:
        protocol.v1_instances(_encode(body))
    except BadRequest:
        pass


@pytest.fixture(scope="module")
def iris_url(tmp_path_factory):
    import mlflow.sklearn
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    path = tmp_path_factory.mktemp("fuzz") / "model"
    mlflow.sklearn.save_model(LogisticRegression(max_iter=300).fit(x, y), path, pip_requirements=["scikit-learn"])
    proc, url = serve(path, "iris")
    yield url
    stop(proc)


def _acceptable(status: int, answer) -> bool:
    if status in (200, 400, 404, 405, 413):
        return True
    return status == 500 and isinstance(answer, dict) and answer.get("error", "").startswith("model 'iris' failed")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=v2_bodies, tail=st.binary(max_size=40), header=st.one_of(st.none(), st.integers(-5, 400), st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=4)))
def test_the_server_survives_random_v2_requests(iris_url, body, tail, header):
    headers = {} if header is None else {"Inference-Header-Content-Length": str(header)}
    status, answer = call(iris_url + "/v2/models/iris/infer", _encode(body) + (tail if header is not None else b""),
                          headers=headers)
    assert _acceptable(status, answer), (status, answer)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=v1_bodies, route=st.sampled_from(["/v1/models/iris:predict", "/v1/models/iris/predict",
                                              "/v1/models/iris:explain", "/v1/models/x:predict"]))
def test_the_server_survives_random_v1_requests(iris_url, body, route):
    status, answer = call(iris_url + route, _encode(body))
    assert _acceptable(status, answer) or status == 501, (status, answer)


def test_after_the_fuzzing_it_still_predicts(iris_url):
    status, answer = call(iris_url + "/v1/models/iris:predict", {"instances": [[5.1, 3.5, 1.4, 0.2]]})
    assert status == 200 and answer == {"predictions": [0]}
