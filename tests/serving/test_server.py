"""The model server as users meet it: `mlyard serve` in its own process on a free port, called over
real HTTP by urllib (the seed's curl bodies) and by tritonclient (JSON and binary tensors); answers
compared with the same model's predictions in this process."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
from serving_http import call, serve, stop

# named, so MLflow does not infer them (a subprocess of several CPU-seconds per saved model)
REQ = ["scikit-learn"]


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    import mlflow.sklearn
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    path = tmp_path_factory.mktemp("iris") / "model"
    mlflow.sklearn.save_model(model, path, pip_requirements=REQ)
    proc, url = serve(path, "iris", "--max-body-mb", "1")
    yield url, model, x
    stop(proc)


@pytest.fixture(scope="module")
def forest(tmp_path_factory):
    """EasyMaker's scikit-learn format: a directory holding one .joblib file."""
    import joblib
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    x, y = load_breast_cancer(return_X_y=True)
    model = RandomForestClassifier(n_estimators=20, random_state=0).fit(x, y)
    folder = tmp_path_factory.mktemp("bc_rf")
    joblib.dump(model, folder / "model.joblib")
    log = folder / "inference.jsonl"
    proc, url = serve(folder, "bc_rf", "--max-batch-size", "32", "--inference-log", str(log),
                      env={"MLYARD_ENDPOINT_ID": "ep-1", "MLYARD_ENDPOINT_STAGE_ID": "stage-1"})
    yield url, model, x, log
    stop(proc)


def test_v1_predict_as_the_seed_shows_it(iris):
    url, model, x = iris
    rows = [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]
    for route in ("/v1/models/iris:predict", "/v1/models/iris/predict"):
        status, body = call(url + route, {"instances": rows})
        assert status == 200 and body == {"predictions": model.predict(rows).tolist()}
    status, body = call(url + "/v1/models/iris:predict", {"instances": rows, "parameters": {"probabilities": True}})
    assert status == 200 and np.allclose(body["predictions"], model.predict_proba(rows))
    assert call(url + "/v1/models") == (200, {"models": ["iris"]})
    assert call(url + "/v1/models/iris") == (200, {"name": "iris", "ready": True})


def test_v2_metadata_health_and_json_infer(iris):
    url, model, x = iris
    assert call(url + "/v2/health/live") == (200, {"live": True})
    assert call(url + "/v2/health/ready") == (200, {"ready": True})
    status, server = call(url + "/v2")
    assert status == 200 and server["name"] == "mlyard" and "binary_tensor_data" in server["extensions"]
    for route in ("/v2/models/iris", "/v2/models/iris/versions/1"):
        status, meta = call(url + route)
        assert status == 200 and meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
        assert [o["name"] for o in meta["outputs"]] == ["predict", "predict_proba"]
    assert call(url + "/v2/models/iris/versions/1/ready") == (200, {"name": "iris", "ready": True})
    assert call(url + "/") == (200, {"status": "alive"}), "liveness on /, as KServe answers it"
    assert call(url + "/v2/models") == (200, {"models": ["iris"]})
    status, out = call(url + "/v2/models/iris/infer", {
        "id": "r1", "inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP32", "data": x[:3].tolist()}],
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}]})
    assert status == 200 and out["id"] == "r1" and out["model_version"] == "1"
    pred, proba = out["outputs"]
    assert pred["shape"] == [3] and pred["data"] == model.predict(x[:3].astype(np.float32)).tolist()
    assert proba["shape"] == [3, 3] and np.allclose(np.reshape(proba["data"], (3, 3)),
                                                     model.predict_proba(x[:3].astype(np.float32)))


def test_tritonclient_json_and_binary_tensors(iris):
    import tritonclient.http as httpclient

    url, model, x = iris
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_model_ready("iris")
        assert client.get_model_metadata("iris")["inputs"][0]["shape"] == [-1, 4]
        for binary in (False, True):
            inp = httpclient.InferInput("input-0", [5, 4], "FP64")
            inp.set_data_from_numpy(x[10:15], binary_data=binary)
            outs = [httpclient.InferRequestedOutput("predict", binary_data=binary),
                    httpclient.InferRequestedOutput("predict_proba", binary_data=binary)]
            result = client.infer("iris", [inp], outputs=outs)
            assert result.as_numpy("predict").tolist() == model.predict(x[10:15]).tolist()
            assert np.allclose(result.as_numpy("predict_proba"), model.predict_proba(x[10:15]))
        half = httpclient.InferInput("input-0", [5, 4], "FP16")  # FP16 travels binary (as JSON it is refused)
        half.set_data_from_numpy(x[10:15].astype(np.float16), binary_data=True)
        result = client.infer("iris", [half], outputs=[httpclient.InferRequestedOutput("predict", binary_data=True)])
        assert result.as_numpy("predict").tolist() == model.predict(x[10:15].astype(np.float16)).tolist()
    finally:
        client.close()


@pytest.mark.parametrize("route, body, status, words", [
    ("/v2/models/iris/infer", b"{not json", 400, "valid JSON"),
    ("/v2/models/iris/infer", {"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64",
                                           "data": [1, 2, 3]}]}, 400, "4 features per row"),
    ("/v2/models/iris/infer", {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                                           "data": [1, 2, 3]}]}, 400, "4 values, as its shape says"),
    ("/v2/models/iris/infer", {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FLOAT",
                                           "data": [1, 2, 3, 4]}]}, 400, "FP64"),
    ("/v2/models/iris/infer", {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "INT8",
                                           "data": [1, 2, 3, 999]}]}, 400, "INT8 values"),
    ("/v2/models/iris/infer", {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                                           "data": [1, 2, 3, 4]}], "outputs": [{"name": "nope"}]}, 400, "predict_proba"),
    ("/v2/models/iris/infer", {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP16",
                                           "data": [1, 2, 3, 4]}]}, 400, "FP16 in the binary tensor extension"),
    ("/v2/models/nope/infer", {"inputs": []}, 404, "not served here"),
    ("/v2/models/iris/versions/7/infer", {"inputs": []}, 404, "no version '7'"),
    ("/v1/models/iris:predict", {"instances": [[1, 2], [1, 2, 3]]}, 400, "equal length"),
    ("/v1/models/iris:predict", {"rows": [[1, 2, 3, 4]]}, 400, "instances"),
    ("/v1/models/iris:explain", {"instances": [[1, 2, 3]]}, 400, "4 features"),
    # strings to a numeric model: 400 naming the input and why (it answered 500 "could not convert")
    ("/v1/models/iris:predict", {"instances": [["a", "b", "c", "d"]]}, 400, "instances: "),
    ("/v1/models/iris:predict", {"instances": [["5.1", "3.5", "x", "0.2"]]}, 400, "could not convert string to float"),
    ("/v2/models/iris/infer", {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "BYTES",
                                           "data": ["a", "b", "c", "d"]}]}, 400, "inputs[0] ('input-0')"),
])
def test_bad_requests_get_a_clear_error_and_the_server_goes_on(iris, route, body, status, words):
    url, model, _ = iris
    got, answer = call(url + route, body)
    assert got == status and words in answer["error"], answer
    assert call(url + "/v1/models/iris:predict", {"instances": [[1, 2, 3, 4]]})[0] == 200


def test_strings_for_a_signature_that_declares_numbers_are_refused_naming_it(tmp_path):
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from mlyard.serving.loading import load
    from mlyard.serving.protocol import BadRequest

    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    mlflow.sklearn.save_model(model, tmp_path / "m", signature=infer_signature(x, y), pip_requirements=REQ)
    served = load(tmp_path / "m", "sig")
    served.check_types(np.asarray([[1.0, 2.0, 3.0, 4.0]]), "instances")  # numbers pass
    with pytest.raises(BadRequest, match=r"instances.*strings.*model 'sig' takes input-0 FP64\[-1, 4\] \(its signature\)"):
        served.check_types(np.asarray([["a", "b", "c", "d"]]), "instances")


def test_limits_and_methods(iris):
    url, _, _ = iris
    assert call(url + "/v2/models/iris/infer", method="GET")[0] == 405
    import http.client

    big = b'{"instances": [' + b"[1.0, 2.0, 3.0, 4.0]," * 80_000 + b"[1, 2, 3, 4]]}"  # 1.7 MB, the limit is 1 MB
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    try:
        try:
            conn.request("POST", "/v1/models/iris:predict", body=big, headers={"Content-Type": "application/json"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before reading it all
        resp = conn.getresponse()
        assert resp.status == 413 and "over the limit" in json.loads(resp.read())["error"]
    finally:
        conn.close()


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(forest):
    """Requests from 32 threads at once: each answer equals that request's own rows' predictions."""
    from concurrent.futures import ThreadPoolExecutor

    url, model, x, _ = forest
    _, before = call(url + "/stats")

    def one(i: int):
        rows = x[i:i + 1 + i % 3]
        status, body = call(url + "/v1/models/bc_rf:predict", {"instances": rows.tolist(),
                                                              "parameters": {"probabilities": True}})
        assert status == 200, body
        return np.allclose(body["predictions"], model.predict_proba(rows), rtol=0, atol=1e-6)  # compiled: within 1e-6

    with ThreadPoolExecutor(32) as pool:
        assert all(pool.map(one, range(200)))
    _, after = call(url + "/stats")
    b0, b1 = before["models"][0], after["models"][0]
    assert b1["requests"] - b0["requests"] == 200
    calls = b1["batching"]["model_calls"] - b0["batching"]["model_calls"]
    assert calls < 200, f"{calls} model calls for 200 concurrent requests: nothing was batched"


def test_statistics_and_metrics(forest):
    url, model, x, _ = forest
    call(url + "/v1/models/bc_rf:predict", {"instances": x[:4].tolist()})
    status, stats = call(url + "/v2/models/bc_rf/stats")
    assert status == 200 and stats["requests"] >= 1 and stats["latency_ms"]["p99"] >= stats["latency_ms"]["p50"]
    assert set(stats["classes"]["predictions"]) <= {"0", "1"} and stats["classes"]["total"] >= 4
    status, text = call(url + "/metrics")
    assert status == 200 and b'mlyard_inference_requests_total{model="bc_rf",status="200"}' in text


def test_mlyard_predict_sends_a_file_of_rows(iris, tmp_path):
    import subprocess

    from serving_http import MLYARD

    url, model, x = iris
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": f"r{i}", "features": x[i].tolist()}) + "\n" for i in range(0, 150, 7)))
    expected = model.predict(x[0:150:7]).tolist()
    v1 = subprocess.run([MLYARD, "predict", str(rows), "--url", url + "/v1/models/iris:predict", "--id-field", "id",
                         "--batch-size", "5"], capture_output=True, text=True, timeout=120)
    lines = [json.loads(line) for line in v1.stdout.splitlines()]
    assert v1.returncode == 0 and [line["prediction"] for line in lines] == expected
    assert lines[1] == {"row": 1, "id": "r7", "prediction": expected[1]}
    out = tmp_path / "out.jsonl"
    v2 = subprocess.run([MLYARD, "predict", str(rows), "--url", url + "/v2/models/iris/infer", "--field", "features",
                         "--probabilities", "-o", str(out)], capture_output=True, text=True, timeout=120)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert v2.returncode == 0 and [line["prediction"] for line in lines] == expected
    assert np.allclose([line["probabilities"] for line in lines], model.predict_proba(x[0:150:7]))
    bad = subprocess.run([MLYARD, "predict", str(rows), "--url", url + "/v1/models/nope:predict"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "answered 404: model 'nope' is not served here" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_every_request_leaves_an_inference_log_record(forest):
    url, _, x, log = forest
    req = urllib.request.Request(f"{url}/v1/models/bc_rf:predict", json.dumps({"instances": x[:2].tolist()}).encode(),
                                 {"Content-Type": "application/json", "X-Request-Id": "req-42"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["x-inference-id"] == "req-42"
    assert call(f"{url}/v1/models/bc_rf:predict", {"instances": [[1, 2]]})[0] == 400
    records = [json.loads(line) for line in log.read_text().splitlines()]
    mine = next(r for r in records if r["inferenceId"] == "req-42")
    assert mine["category"] == "mlyard.inference" and mine["logLevel"] == "INFO" and mine["logType"] == "mlyard"
    assert (mine["endpointId"], mine["endpointStageId"], mine["modelName"], mine["action"]) == (
        "ep-1", "stage-1", "bc_rf", "Endpoint.Model")
    assert "200 rows=2" in mine["body"] and mine["time"].endswith("Z")
    bad = [r for r in records if r["logLevel"] == "WARNING"]
    assert bad and "30 features" in bad[-1]["body"]


def test_a_linear_model_is_explained_and_a_forest_says_it_has_no_explainer(iris, forest):
    url, model, x = iris
    status, body = call(f"{url}/v1/models/iris:explain", {"instances": x[[0, 100]].tolist()})
    assert status == 200, body
    for got, row in zip(body["explanations"], x[[0, 100]]):
        k = int(np.flatnonzero(model.classes_ == got["prediction"])[0])
        assert got["prediction"] == model.predict([row])[0] and got["toward_class"] == got["prediction"]
        assert got["score"] == pytest.approx(model.decision_function([row])[0][k])  # intercept + contributions
        assert list(got["contributions"]) == ["x0", "x1", "x2", "x3"]
    furl = forest[0]
    status, body = call(f"{furl}/v1/models/bc_rf:explain", {"instances": [forest[2][0].tolist()]})
    assert status == 501 and "no explainer" in body["error"]


def test_string_labels_answer_on_v1_and_v2(tmp_path):
    """A classifier with string labels (every scikit-learn classifier fitted on names): v1 answered a
    plain-text 500 (its encoder took no strings); both protocols answer the labels."""
    import mlflow.sklearn
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    model = LogisticRegression(max_iter=500).fit(x, names)
    mlflow.sklearn.save_model(model, tmp_path / "named", pip_requirements=REQ)
    proc, url = serve(tmp_path / "named", "named")
    try:
        rows = x[[0, 60, 120]].tolist()
        status, body = call(url + "/v1/models/named:predict", {"instances": rows})
        assert status == 200 and body == {"predictions": model.predict(rows).tolist()}, body
        v2 = {"inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP64", "data": sum(rows, [])}]}
        status, body = call(url + "/v2/models/named/infer", v2)
        assert status == 200 and body["outputs"][0]["datatype"] == "BYTES"
        assert body["outputs"][0]["data"] == model.predict(rows).tolist()
    finally:
        stop(proc)


def test_every_output_numpy_holds_is_encoded_on_both_protocols():
    import datetime

    from mlyard.serving.protocol import v1_response, v2_response

    when = datetime.datetime(2026, 11, 25, 9, 30)
    cases = [(np.array(["a", "b"]), ["a", "b"]), (np.array([b"raw"]), ["raw"]),
             (np.array(["2026-11-25T09:30"], dtype="datetime64[s]"), ["2026-11-25T09:30:00"]),
             (np.array([when, "x", 3, None], dtype=object), [when.isoformat(), "x", 3, None]),
             (np.array([{"k": 1}], dtype=object), [{"k": 1}]), (np.array([[1.5, 2.0]]), [[1.5, 2.0]])]
    for array, expected in cases:
        assert json.loads(v1_response(array)) == {"predictions": expected}
        out = json.loads(v2_response("m", "1", None, [("predict", array, False)])[0])["outputs"][0]
        assert out["shape"] == list(array.shape) and (out["datatype"] == "FP64") == (array.dtype.kind == "f")


SCALED = '''
import mlflow
import pandas as pd


class Scaled(mlflow.pyfunc.PythonModel):
    """Named outputs (a label and a score), and a parameter from the request."""

    def predict(self, context, model_input, params=None):
        scale = (params or {}).get("scale", 1.0)
        score = model_input["x"].astype(float) * scale
        return pd.DataFrame({"label": ["big" if v > 5 else "small" for v in score], "score": score})


mlflow.models.set_model(Scaled())
'''


def test_a_pyfunc_gets_the_requests_parameters_and_answers_each_named_output(tmp_path):
    """Parameters reached no model (accepted, then dropped) and outputs were predict/predict_proba only:
    a pyfunc's params come from the request (checked against its signature) and each of its named
    outputs answers by name, as JSON or binary, on v2; v1 answers a record per row."""
    import mlflow.pyfunc
    import pandas as pd
    import tritonclient.http as httpclient
    from mlflow.models import infer_signature

    code = tmp_path / "scaled.py"
    code.write_text(SCALED)
    signature = infer_signature(pd.DataFrame({"x": [1.0]}), pd.DataFrame({"label": ["a"], "score": [1.0]}),
                                params={"scale": 1.0})
    mlflow.pyfunc.save_model(tmp_path / "scaled", python_model=str(code), signature=signature,
                             pip_requirements=["pandas"])
    proc, url = serve(tmp_path / "scaled", "scaled")
    try:
        status, meta = call(url + "/v2/models/scaled")
        assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [("label", "BYTES"), ("score", "FP64")]
        x = {"name": "x", "shape": [2], "datatype": "FP64", "data": [2.0, 7.0]}
        status, body = call(url + "/v2/models/scaled/infer", {"inputs": [x], "parameters": {"scale": 2.0}})
        assert status == 200 and body["parameters"] == {"scale": 2.0}, body
        got = {o["name"]: o["data"] for o in body["outputs"]}
        assert got == {"label": ["small", "big"], "score": [4.0, 14.0]}
        status, body = call(url + "/v2/models/scaled/infer", {"inputs": [x], "outputs": [{"name": "label"}]})
        assert status == 200 and [o["name"] for o in body["outputs"]] == ["label"]
        assert body["outputs"][0]["data"] == ["small", "big"] and "parameters" not in body, "the default scale"
        status, body = call(url + "/v2/models/scaled/infer", {"inputs": [x], "parameters": {"nope": 1}})
        assert status == 400 and "parameters.nope" in body["error"] and "scale" in body["error"], body
        status, body = call(url + "/v2/models/scaled/infer", {"inputs": [x], "outputs": [{"name": "predict"}]})
        assert status == 400 and "label, score" in body["error"], body
        status, body = call(url + "/v1/models/scaled:predict", {"instances": [{"x": 3.0}], "parameters": {"scale": 3}})
        assert status == 200 and body == {"predictions": [{"label": "big", "score": 9.0}]}, body

        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        try:
            inp = httpclient.InferInput("x", [2], "FP64")
            inp.set_data_from_numpy(np.array([1.0, 6.0]), binary_data=True)
            result = client.infer("scaled", [inp], outputs=[httpclient.InferRequestedOutput("score", binary_data=True)],
                                  parameters={"scale": 10.0})
            assert result.as_numpy("score").tolist() == [10.0, 60.0] and result.as_numpy("label") is None
        finally:
            client.close()
    finally:
        stop(proc)


SLOW_TO_LOAD = '''
import time

import mlflow
import numpy as np


class SlowToLoad(mlflow.pyfunc.PythonModel):
    """A model that takes seconds to load (weights to read, a runtime to compile)."""

    def load_context(self, context):
        time.sleep(4)

    def predict(self, context, model_input, params=None):
        return (np.asarray(model_input, dtype=float)[:, 0] > 0).astype(int)


mlflow.models.set_model(SlowToLoad())
'''


def test_a_model_still_loading_answers_not_ready_rather_than_not_existing(tmp_path):
    """The server listened only once its model had loaded (a refused connection meanwhile, on every
    start that compiles): now it listens first, lists the model, answers its ready routes ready false with
    503 and its infer 503 while it loads, and then serves it."""
    import socket
    import subprocess
    import time

    import mlflow.pyfunc
    from serving_http import MLYARD, free_port

    code = tmp_path / "slow_to_load.py"
    code.write_text(SLOW_TO_LOAD)
    mlflow.pyfunc.save_model(tmp_path / "slowload", python_model=str(code), pip_requirements=["numpy"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([MLYARD, "serve", str(tmp_path / "slowload"), "--port", str(port), "--name", "late"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        assert call(url + "/v2/health/live")[0] == 200
        assert call(url + "/v2/health/ready")[0] == 503
        assert call(url + "/v2/models") == (200, {"models": ["late"]})
        assert call(url + "/v2/models/late/ready") == (503, {"name": "late", "ready": False})
        assert call(url + "/v2/models/late/versions/1/ready") == (503, {"name": "late", "ready": False})
        assert call(url + "/v1/models/late") == (503, {"name": "late", "ready": False})
        body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]}]}
        status, answer = call(url + "/v2/models/late/infer", body)
        assert status == 503 and "still loading" in answer["error"]
        assert call(url + "/v2/models/other/ready")[0] == 404
        while call(url + "/v2/health/ready")[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert call(url + "/v2/models/late/ready") == (200, {"name": "late", "ready": True})
        status, answer = call(url + "/v2/models/late/infer", body)
        assert status == 200 and answer["outputs"][0]["data"] == [1]
    finally:
        stop(proc)
    out = proc.stdout.read()
    assert "loading late (version 1)" in out and "serving late (version 1)" in out


def test_a_model_that_fails_to_load_stops_the_server_with_one_line(tmp_path):
    """A model that fails while loading (after the server listens) ends the server: one line, exit 2."""
    import subprocess

    from serving_http import MLYARD, free_port

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: no_such_module_here\n")
    result = subprocess.run([MLYARD, "serve", str(broken), "--port", str(free_port())], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "error:" in result.stderr


@pytest.mark.parametrize("route, body, named", [
    ("/v2/models/iris/infer", {"inputs": [{"name": "x", "shape": [0, 4], "datatype": "FP32", "data": []}]}, "shape"),
    ("/v2/models/iris/infer", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT64",
                                           "data": [0.5, 1, 2, 3]}]}, "whole numbers"),
    ("/v2/models/iris/infer", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                           "data": [1e308, 1, 2, 3]}]}, "FP32"),
    ("/v1/models/iris:predict", {"instances": [[1e308, 1, 2, 3]]}, "finite numbers"),
    ("/v1/models/iris:predict", {"instances": [[1e39, 1, 2, 3]]}, "finite numbers"),
    # two input tensors for a model of one (ONNX Runtime's 500 rolled a public endpoint's promotion back)
    ("/v2/models/iris/infer", {"inputs": [{"name": "a", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
                                          {"name": "b", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
     "one input"),
    ("/v2/models/iris/infer", {"inputs": [{"name": "a", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]},
                                          {"name": "b", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
     "one input"),
])
def test_a_callers_malformed_numbers_are_400_never_500(iris, route, body, named):
    """A caller's mistake is the caller's (4xx): a gate judging a stage counts only the stage's own
    failures (5xx), so malformed requests from anyone must never answer 500."""
    url, _, _ = iris
    status, answer = call(url + route, body)
    assert status == 400 and named in json.dumps(answer), (status, answer)


def test_an_fp16_output_travels_binary_or_is_refused(tmp_path):
    """An FP16 output asked for as JSON is 400 naming the output (as KServe answers), not 200 with
    numbers that cannot say which half-precision value they mean; asked for binary, it is answered."""
    import mlflow.pyfunc
    import tritonclient.http as httpclient

    code = tmp_path / "half.py"
    code.write_text("import numpy as np\nimport mlflow.pyfunc\n"
                    "class Half(mlflow.pyfunc.PythonModel):\n"
                    "    def predict(self, context, model_input, params=None):\n"
                    "        return np.asarray(model_input, dtype=float).sum(axis=1).astype(np.float16)\n"
                    "mlflow.models.set_model(Half())\n")
    mlflow.pyfunc.save_model(tmp_path / "model", python_model=str(code), pip_requirements=["numpy"])
    proc, url = serve(tmp_path / "model", "half")
    try:
        body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, 2.0]}]}
        status, answer = call(url + "/v2/models/half/infer", body)
        assert status == 400 and "FP16" in answer["error"] and "binary" in answer["error"], (status, answer)
        with httpclient.InferenceServerClient(url.split("//")[1]) as client:
            given = httpclient.InferInput("x", [1, 2], "FP32")
            given.set_data_from_numpy(np.array([[1.5, 2.0]], dtype=np.float32), binary_data=True)
            result = client.infer("half", [given], outputs=[httpclient.InferRequestedOutput("predict", binary_data=True)])
            assert result.as_numpy("predict").dtype == np.float16 and result.as_numpy("predict").tolist() == [3.5]
    finally:
        stop(proc)


TENSORS = '''
import mlflow
import numpy as np


class Tensors(mlflow.pyfunc.PythonModel):
    """Two named tensors of different shapes and types (Triton's `simple` style): per row, the sum of
    input0's 2x2 values plus how many of input1's 3 flags are set."""

    def predict(self, context, model_input, params=None):
        return model_input["input0"].astype(np.int64).sum(axis=(1, 2)) + model_input["input1"].sum(axis=1)


mlflow.models.set_model(Tensors())
'''

ONE_TENSOR = '''
import mlflow
import numpy as np


class Rowsum(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return np.asarray(model_input).sum(axis=1)


mlflow.models.set_model(Rowsum())
'''


def test_named_tensors_of_different_shapes_reach_the_model_as_tensors(tmp_path):
    """A signature of several named tensors (input0 UINT32 [-1,2,2], input1 BOOL [-1,3]) was turned into
    table columns and refused: each reaches the model as a tensor of its shape, from tritonclient too
    (binary, and without the batch axis as Triton's `simple` example sends it). A single tensor named as
    the server named it in its metadata (`input-0`) keeps its shape."""
    import mlflow.pyfunc
    import tritonclient.http as httpclient
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    (tmp_path / "tensors.py").write_text(TENSORS)
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint32), (-1, 2, 2), "input0"),
                                              TensorSpec(np.dtype(bool), (-1, 3), "input1")]),
                               outputs=Schema([TensorSpec(np.dtype(np.int64), (-1,))]))
    mlflow.pyfunc.save_model(tmp_path / "tensors", python_model=str(tmp_path / "tensors.py"), signature=signature,
                             pip_requirements=["numpy"])
    (tmp_path / "rowsum.py").write_text(ONE_TENSOR)
    mlflow.pyfunc.save_model(tmp_path / "rowsum", python_model=str(tmp_path / "rowsum.py"), pip_requirements=["numpy"],
                             signature=ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float64), (-1, 4))])))
    proc, url = serve(tmp_path / "tensors", "tensors")
    try:
        status, meta = call(url + "/v2/models/tensors")
        assert meta["inputs"] == [{"name": "input0", "datatype": "UINT32", "shape": [-1, 2, 2]},
                                  {"name": "input1", "datatype": "BOOL", "shape": [-1, 3]}], meta
        two_rows = {"inputs": [{"name": "input0", "shape": [2, 2, 2], "datatype": "UINT32", "data": [1, 2, 3, 4, 5, 6, 7, 8]},
                               {"name": "input1", "shape": [2, 3], "datatype": "BOOL",
                                "data": [True, False, True, False, False, False]}]}
        status, body = call(url + "/v2/models/tensors/infer", two_rows)
        assert status == 200 and body["outputs"][0]["data"] == [12, 26], body
        status, body = call(url + "/v2/models/tensors/infer", {"inputs": two_rows["inputs"][:1]})
        assert status == 400 and "input1" in body["error"] and "UINT32[-1, 2, 2]" in body["error"], body
        wrong = {"inputs": [two_rows["inputs"][0], {**two_rows["inputs"][1], "shape": [3, 2]}]}
        status, body = call(url + "/v2/models/tensors/infer", wrong)
        assert status == 400 and "inputs.input1" in body["error"] and "[-1, 3]" in body["error"], body

        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        try:
            a, b = httpclient.InferInput("input0", [2, 2], "UINT32"), httpclient.InferInput("input1", [3], "BOOL")
            a.set_data_from_numpy(np.array([[1, 1], [1, 1]], dtype=np.uint32), binary_data=True)
            b.set_data_from_numpy(np.array([True, True, True]), binary_data=True)
            assert client.infer("tensors", [a, b]).as_numpy("predict").tolist() == [7]
        finally:
            client.close()
    finally:
        stop(proc)
    proc, url = serve(tmp_path / "rowsum", "rowsum")
    try:
        status, meta = call(url + "/v2/models/rowsum")
        assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}], meta
        status, body = call(url + "/v2/models/rowsum/infer", {"inputs": [
            {"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 6, 7, 8]}]})
        assert status == 200 and body["outputs"][0]["data"] == [10.0, 26.0], body
    finally:
        stop(proc)
