"""Azure ML entry scripts served as Azure's inference server serves them, started with azmlinfsrv's
flags (`python -m mlyard.serving.azure`) and with `mlyard serve --entry-script`, called over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from serving_http import MLYARD, call, free_port, probe_wheel, start, stop

HELLO = """
import time

def init():
    time.sleep(0.1)

def run(input_data):
    return {"message": "Hello, World!"}
"""

MODEL = """
import json, os, time

def init():
    global factor
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "factor.json")) as fh:
        factor = json.load(fh)["factor"]

def run(raw):
    if raw == "slow":
        time.sleep(1.0)
        return {"slow": True}
    if raw == "die":
        os._exit(3)
    print("noise from run()", flush=True)  # to the log, never into an answer
    os.write(1, b"noise from C")
    data = json.loads(raw)["data"]
    if data == "boom":
        raise ValueError("cannot score 'boom'")
    return {"result": [v * factor for v in data]}
"""

BROKEN_INIT = """
def init():
    raise RuntimeError("the model file is missing")

def run(raw):
    return raw
"""


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("azure")
    (root / "score.py").write_text(MODEL)
    (root / "model").mkdir()
    (root / "model" / "factor.json").write_text('{"factor": 3}')
    port = free_port()
    proc, _ = start([sys.executable, "-m", "mlyard.serving.azure", "--entry_script", str(root / "score.py"),
                      "--model_dir", str(root / "model"), "--port", str(port), "--worker_count", "2",
                      "--host", "127.0.0.1"])
    yield f"http://127.0.0.1:{port}"
    stop(proc)


def test_the_seeds_hello_world_with_mlyard_serve(tmp_path):
    (tmp_path / "score.py").write_text(HELLO)
    port = free_port()
    proc, _ = start([MLYARD, "serve", "--entry-script", str(tmp_path / "score.py"), "--port", str(port)])
    try:
        url = f"http://127.0.0.1:{port}"
        assert call(url + "/") == (200, b"Healthy")
        assert call(url + "/score") == (200, {"message": "Hello, World!"})
        assert call(url + "/score", {"anything": 1}) == (200, {"message": "Hello, World!"})
    finally:
        stop(proc)


def test_init_reads_the_model_dir_and_run_gets_the_raw_body(scored):
    assert call(scored + "/score", {"data": [1, 2]}) == (200, {"result": [3, 6]})


def test_a_script_error_answers_500_with_where_and_the_server_goes_on(scored):
    status, body = call(scored + "/score", {"data": "boom"})
    assert status == 500
    assert "ValueError: cannot score 'boom' (score.py, line" in body["error"] and "in run)" in body["error"]
    assert call(scored + "/score", {"data": [1]}) == (200, {"result": [3]})
    assert call(scored + "/nope")[0] == 404 and call(scored + "/score", method="PUT", body=b"x")[0] == 405


def test_a_script_process_that_dies_is_started_again(scored):
    """The script runs in processes of its own: one that ends in the middle of run() answers 500 saying so,
    and a fresh one (its init() run again) answers the next request."""
    status, body = call(scored + "/score", b"die")
    assert status == 500 and "ended in run() (exit code 3); it is started again" in body["error"], body
    for _ in range(3):
        assert call(scored + "/score", {"data": [2]}) == (200, {"result": [6]})


def test_worker_count_runs_requests_side_by_side(scored):
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: call(scored + "/score", b"slow"), range(2)))
    assert answers == [(200, {"slow": True})] * 2 and time.monotonic() - started < 1.9


def test_a_failing_init_leaves_the_server_up_saying_why(tmp_path):
    (tmp_path / "score.py").write_text(BROKEN_INIT)
    port = free_port()
    proc, printed = start([sys.executable, "-m", "mlyard.serving.azure", "--entry_script", str(tmp_path / "score.py"),
                            "--port", str(port), "--host", "127.0.0.1"])
    try:
        assert "init() failed: RuntimeError: the model file is missing (score.py, line 3, in init)" in printed
        url = f"http://127.0.0.1:{port}"
        for route in ("/", "/score"):
            status, body = call(url + route)
            assert status == 503 and "the model file is missing (score.py, line 3, in init)" in body["error"]
    finally:
        stop(proc)


def test_a_missing_entry_script_is_refused_before_anything_starts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mlyard.serving.azure", "--entry_script", str(tmp_path / "nope.py")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: entry_script:")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_model_server_cli_refuses_a_port_in_use(tmp_path):
    import socket

    (tmp_path / "score.py").write_text(HELLO)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run([MLYARD, "serve", "--entry-script", str(tmp_path / "score.py"), "--port", str(port),
                               "--host", "127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and str(port) in proc.stdout + proc.stderr
    assert Path(tmp_path / "score.py").exists()


SCHEMA = """
import numpy as np
from inference_schema.schema_decorators import input_schema, output_schema
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType

def init():
    pass

@input_schema("data", NumpyParameterType(np.array([[1.0, 2.0, 3.0]])))
@input_schema("scale", StandardPythonParameterType(2.0))
@output_schema(StandardPythonParameterType({"sums": [6.0]}))
def run(data, scale):
    assert isinstance(data, np.ndarray)  # the decorator made the array
    return {"sums": (data.sum(axis=1) * scale).tolist()}
"""


def test_an_inference_schema_script_gets_its_fields_and_serves_swagger(tmp_path):
    pytest.importorskip("inference_schema")
    script = tmp_path / "score.py"
    script.write_text(SCHEMA)
    port = free_port()
    proc, _ = start([sys.executable, "-m", "mlyard.serving.azure", "--entry_script", str(script), "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        status, body = call(f"{url}/score", {"data": [[1, 2, 3], [4, 5, 6]], "scale": 0.5})
        assert (status, body) == (200, {"sums": [3.0, 7.5]})
        status, doc = call(f"{url}/swagger.json")
        assert status == 200 and doc["swagger"] == "2.0"
        assert set(doc["definitions"]["ServiceInput"]["properties"]) == {"data", "scale"}
        assert doc["paths"]["/score"]["post"]["parameters"][0]["schema"] == {"$ref": "#/definitions/ServiceInput"}
        status, doc = call(f"{url}/swagger.json?version=3")
        assert status == 200 and doc["openapi"].startswith("3.")
        assert "ServiceOutput" in doc["components"]["schemas"]
        status, body = call(f"{url}/score", b"[1, 2]")
        assert status == 400 and "JSON object" in body["error"]
        status, body = call(f"{url}/score", b"{oops")
        assert status == 400 and "not valid JSON" in body["error"]
        assert call(f"{url}/swagger.json?version=9")[0] == 400
        status, body = call(f"{url}/score", {"data": [[1, 2, 3]]})
        assert status == 400 and "lacks 'scale'" in body["error"]
        status, body = call(f"{url}/score", {"data": [[1, 2, 3]], "scale": 1, "other": 2})
        assert status == 400 and "no 'other'" in body["error"]
        status, body = call(f"{url}/score", {"data": "x", "scale": 1})
        assert status == 400 and "declared inputs" in body["error"]
        assert call(f"{url}/score", {"data": [[1, 1, 1]], "scale": 1})[1] == {"sums": [3.0]}  # and it goes on
    finally:
        stop(proc)


def test_a_plain_script_has_no_swagger(tmp_path):
    script = tmp_path / "score.py"
    script.write_text(HELLO)
    port = free_port()
    proc, _ = start([sys.executable, "-m", "mlyard.serving.azure", "--entry_script", str(script), "--port", str(port)])
    try:
        status, body = call(f"http://127.0.0.1:{port}/swagger.json")
        assert status == 404 and "inference-schema" in body["error"]
    finally:
        stop(proc)


NEEDS_ITS_PACKAGE = """
import sys
import mlyardprobe  # only in the environment the deployment names

def init():
    global value
    value = mlyardprobe.VALUE

def run(raw):
    return {"value": value, "python": sys.executable}
"""


def test_an_entry_script_runs_in_the_environment_its_conda_file_names(tmp_path):
    """The conda file beside the script was ignored, so init() failed on a package only it names. Its
    pip: list is built into a cached environment and the script runs there; a Python version that
    cannot be honoured and conda-only packages are each reported in one line."""
    (tmp_path / "app").mkdir()
    wheel = probe_wheel(tmp_path / "app")  # beside the script: pip's sandbox sees the deployment's folder alone
    (tmp_path / "app" / "score.py").write_text(NEEDS_ITS_PACKAGE)
    (tmp_path / "app" / "conda.yaml").write_text(
        f"name: scoring\ndependencies:\n  - python=3.8\n  - numpy=1.21\n  - pip\n  - pip:\n    - {wheel}\n")
    port = free_port()
    proc, printed = start([MLYARD, "serve", "--entry-script", str(tmp_path / "app" / "score.py"), "--port", str(port)],
                          env={"MLYARD_HOME": str(tmp_path / "home")})
    try:
        assert "conda.yaml: python=3.8 cannot be honoured here: the entry script runs on Python 3." in printed
        assert "conda packages are not installed here (numpy=1.21)" in printed
        status, body = call(f"http://127.0.0.1:{port}/score", b"{}")
        assert status == 200 and body["value"] == 42, body
        assert body["python"].startswith(str(tmp_path / "home" / "envs")), "it ran in the built environment"
    finally:
        stop(proc)
    with pytest.raises(ImportError):
        __import__("mlyardprobe")  # the platform's own environment is untouched


OWN_PACKAGES = """
import importlib.metadata, importlib.util, os, sys

def init():
    global seen
    seen = {"pydantic": importlib.metadata.version("pydantic"), "probe": importlib.metadata.version("mlyardprobe"),
            "numpy": importlib.util.find_spec("numpy") is not None, "orjson": importlib.util.find_spec("orjson") is not None,
            "python": sys.executable, "platform": sorted(k for k in os.environ if k.startswith("MLYARD_"))}

def run(raw):
    return seen
"""


def test_a_deployment_gets_exactly_its_own_packages_beside_the_server(tmp_path):
    """An environment that named another pydantic was refused: the script ran over mlyard's own packages.
    It now runs in a process of its own, in an environment of exactly the packages its file names (an
    old pydantic, nothing of the platform's: no numpy, no orjson), while the server keeps its own."""
    import importlib.metadata

    (tmp_path / "app" / "wheels").mkdir(parents=True)
    old = probe_wheel(tmp_path / "app" / "wheels", "pydantic", "1.0")  # what a model's pin of an old pydantic brings
    probe = probe_wheel(tmp_path / "app" / "wheels")
    (tmp_path / "app" / "score.py").write_text(OWN_PACKAGES)
    (tmp_path / "app" / "requirements.txt").write_text(f"{old}\n{probe}\n")
    port = free_port()
    proc, _ = start([MLYARD, "serve", "--entry-script", str(tmp_path / "app" / "score.py"), "--port", str(port)],
                    env={"MLYARD_HOME": str(tmp_path / "home"), "MLYARD_INTERNAL_TOKEN": "not-for-the-script"})
    try:
        status, body = call(f"http://127.0.0.1:{port}/score", b"{}")
        assert status == 200, body
        assert body["pydantic"] == "1.0" and body["probe"] == "1.0", body
        assert body["numpy"] is False and body["orjson"] is False, "nothing of the platform's packages"
        assert body["python"].startswith(str(tmp_path / "home" / "envs")), body
        assert "MLYARD_INTERNAL_TOKEN" not in body["platform"], "no credential of the platform's reaches the script"
    finally:
        stop(proc)
    assert importlib.metadata.version("pydantic").startswith("2.")


AZURE_SAMPLE = """
import json, sys
import numpy, pydantic, sklearn
from sklearn.linear_model import LogisticRegression

def init():
    global model
    model = LogisticRegression().fit(numpy.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])

def run(raw):
    rows = numpy.array(json.loads(raw)["data"], dtype=float)
    return {"predictions": model.predict(rows), "numpy": numpy.__version__, "sklearn": sklearn.__version__,
            "pydantic": pydantic.VERSION}
"""


def test_azures_own_samples_with_their_pins_are_served(tmp_path):
    """Azure ML's samples pin numpy 1.26.4 with scikit-learn 1.2.2, and list pydantic 2.11 (its server's):
    none could be served, since each would have replaced what mlyard's server runs on. They are served,
    with exactly those versions, from the package index; one that cannot be installed is refused in one
    line naming the requirement, and nothing is left half-built."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "score.py").write_text(AZURE_SAMPLE)
    (tmp_path / "app" / "conda.yaml").write_text(
        "name: sample\nchannels: [conda-forge]\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n"
        "    - numpy==1.26.4\n    - scikit-learn==1.2.2\n    - pydantic==2.11.7\n")
    port = free_port()
    proc, _ = start([MLYARD, "serve", "--entry-script", str(tmp_path / "app" / "score.py"), "--port", str(port)],
                    env={"MLYARD_HOME": str(tmp_path / "home")}, timeout=600)
    try:
        status, body = call(f"http://127.0.0.1:{port}/score", b'{"data": [[0.5], [2.5]]}')
        assert status == 200, body
        assert body == {"predictions": [0, 1], "numpy": "1.26.4", "sklearn": "1.2.2", "pydantic": "2.11.7"}, body
    finally:
        stop(proc)
    (tmp_path / "app" / "conda.yaml").write_text("dependencies:\n  - pip:\n    - numpy==0.0.1\n")
    refused = subprocess.run([MLYARD, "serve", "--entry-script", str(tmp_path / "app" / "score.py"), "--port",
                              str(free_port())], env={**os.environ, "MLYARD_HOME": str(tmp_path / "home")},
                             capture_output=True, text=True, timeout=300)
    lines = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode == 2 and len(lines) == 1 and "numpy==0.0.1" in lines[0], refused.stderr
    assert "Traceback" not in refused.stderr
    assert sorted(p.name for p in (tmp_path / "home" / "envs").iterdir() if p.is_dir()) == \
        [p.name for p in (tmp_path / "home" / "envs").iterdir() if (p / ".ready").exists()], "nothing half-built"
