"""Framework models as EasyMaker serves them: PyTorch weights with model.py and a TorchServe-style
handler.py (the seed's example handler, receiving the `instances` rows), and the Hugging Face runtime's
five tasks on local directories. The models are tiny and random, made offline by tiny_models.py; the
servers are `mlyard serve` processes on free ports, called over real HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib.util import find_spec
from pathlib import Path

import pytest
from serving_http import MLYARD, call, serve, stop

# torch runs in the servers and the model builder only: found, not imported (2 s of every worker's collection)
pytestmark = pytest.mark.skipif(find_spec("torch") is None, reason="torch is not installed")
HERE = Path(__file__).parent


def _make(kind: str, dest: Path) -> Path:
    subprocess.run([sys.executable, str(HERE / "tiny_models.py"), kind, str(dest)], check=True, capture_output=True)
    return dest


def test_a_pytorch_handler_gets_the_instances_rows_and_the_version_parameters(tmp_path):
    model = _make("torch", tmp_path / "net")
    expected = json.loads((model / "expected.json").read_text())
    proc, url = serve(model, "net", "--param", "scale=2", "--param", "scaleFactor=3")
    try:
        status, body = call(f"{url}/v1/models/net/predict", {"instances": expected["rows"]})
        assert status == 200, body
        preds = body["predictions"]
        assert [p["label"] for p in preds] == expected["labels"]
        assert [p["logits"] for p in preds] == [[round(v * 2, 5) for v in r] for r in expected["logits"]]
        assert {p["env"] for p in preds} == {"3"}  # scaleFactor reached the process as SCALE_FACTOR

        status, body = call(f"{url}/v2/models/net/infer", {"inputs": [
            {"name": "instances", "shape": [3, 2], "datatype": "FP32", "data": sum(expected["rows"], [])}]})
        assert status == 200, body
        out = body["outputs"][0]
        assert out["name"] == "predictions" and out["datatype"] == "BYTES" and out["shape"] == [3]
        assert [json.loads(v)["label"] for v in out["data"]] == expected["labels"]

        def one(i: int):  # concurrent requests are batched into one handler call; each gets its own row
            row = expected["rows"][i % 3]
            return i % 3, call(f"{url}/v1/models/net:predict", {"instances": [row]})[1]["predictions"][0]["label"]

        with ThreadPoolExecutor(8) as pool:
            for i, label in pool.map(one, range(24)):
                assert label == expected["labels"][i]

        status, body = call(f"{url}/v1/models/net:predict", {"instances": [[1.0, 2.0, 3.0]]})
        assert status == 500 and "mat1 and mat2" in body["error"]  # the model's own error, and the server goes on
        assert call(f"{url}/v1/models/net:predict", {"instances": [[1.0, 2.0]]})[0] == 200
    finally:
        stop(proc)


def test_a_bad_pytorch_folder_is_refused_before_serving(tmp_path):
    model = _make("torch", tmp_path / "net")
    (model / "extra.pth").write_bytes(b"x")
    out = subprocess.run([MLYARD, "serve", str(model), "--port", "1"], capture_output=True, text=True)
    assert out.returncode == 2 and "one weight file" in out.stderr and "extra.pth" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


HF_PROBE = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import tiny_models
from mlyard.serving import custom
from mlyard.core.errors import SpecError
root = Path(sys.argv[1])
tiny_models.hf_dirs(root)
rows = {"sequence_classification": ["the model is good", "bad"], "token_classification": ["hello world"],
        "fill_mask": ["the capital of france is [MASK]"], "text_generation": ["the model is"],
        "text2text_generation": [{"text": "hello world"}, "one two"]}
out = {}
for task, given in rows.items():
    m = custom.load_hf(root / task, task, "1", {"max_new_tokens": "3"})  # the task from the architecture
    out[task] = {"platform": m.platform, "predictions": m.predict(given)[0]}
try:
    custom.load_hf(root / "fill_mask", "x", "1", {"task": "translation"})
except SpecError as exc:
    out["bad_task"] = str(exc)
print(json.dumps(out))
"""


def test_the_hugging_face_runtime_serves_the_five_tasks(tmp_path):
    # one process builds the five tiny models and loads each as the runtime does: torch and transformers are
    # imported once for both (5 CPU-seconds), the server below loads its model in a process of its own
    root = tmp_path / "hf"
    probe = subprocess.run([sys.executable, "-c", HF_PROBE, str(root), str(HERE)], capture_output=True, text=True,
                           check=True)
    got = json.loads(probe.stdout.strip().splitlines()[-1])
    assert got["sequence_classification"]["platform"] == "huggingface:sequence_classification"
    assert [p["label"] in ("NEGATIVE", "POSITIVE") for p in got["sequence_classification"]["predictions"]] == [True] * 2
    assert {"entity", "score", "word", "start", "end"} <= set(got["token_classification"]["predictions"][0][0])
    assert all("sequence" in c for c in got["fill_mask"]["predictions"][0])
    assert got["text_generation"]["predictions"][0].startswith("the model is")
    assert len(got["text2text_generation"]["predictions"]) == 2
    assert all(isinstance(t, str) for t in got["text2text_generation"]["predictions"])
    assert "parameters.task" in got["bad_task"] and "translation" in got["bad_task"]

    proc, url = serve(root / "fill_mask", "bert", "--param", "task=fill_mask", "--param", "top_k=2")
    try:
        status, body = call(f"{url}/v1/models/bert:predict", {"instances": ["the model is [MASK]", "hello [MASK]"]})
        assert status == 200, body
        assert [len(p) for p in body["predictions"]] == [2, 2]  # top_k from the version's parameters
        status, body = call(f"{url}/v2/models/bert/infer", {"inputs": [
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["the [MASK] is good"]}]})
        assert status == 200 and len(json.loads(body["outputs"][0]["data"][0])) == 2
        status, body = call(f"{url}/v1/models/bert:predict", {"instances": ["no mask here"]})
        assert status == 400 and "mask" in body["error"].lower()
        status, body = call(f"{url}/v1/models/bert:predict", {"instances": [[1, 2]]})
        assert status == 400 and "text rows" in body["error"]
    finally:
        stop(proc)
