"""tasks/kfp.py on pipelines compiled here with the KFP SDK: what is refused and why, the graph with its
sub-DAGs, run parameters, what can run here, and the file kfp.local is given."""


import json
from pathlib import Path

import pytest
import yaml

from mlyard.core.errors import SpecError
from mlyard.tasks import kfp

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples" / "pipelines"
EXAMPLE = (EXAMPLES / "example.yaml").read_text()


def test_the_example_reads_with_its_inputs_and_sub_dags():
    p = kfp.load(EXAMPLE)
    assert p.name == "mlyard-example"
    assert {i.name: (i.type, i.default) for i in p.inputs} == {
        "epochs": ("int", 3), "fail": ("bool", False), "rows": ("int", 200), "seed": ("int", 7),
        "thresholds": ("list", [0.5, 0.9])}
    g = kfp.graph(p)
    kinds = {n.name: (n.kind, n.parent) for n in g.nodes}
    assert kinds["exit-handler-1"] == ("exit-handler", "")
    assert kinds["for-loop-2"] == ("loop", "exit-handler-1")
    assert kinds["check"] == ("task", "exit-handler-1/for-loop-2")
    assert kinds["publish"] == ("task", "exit-handler-1/condition-3")
    assert [n for n in g.nodes if n.exit_task][0].name == "report"
    edges = set(g.edges)
    assert ("exit-handler-1/make-data", "exit-handler-1/fit") in edges
    assert ("exit-handler-1", "report") in edges and ("exit-handler-1/fit", "exit-handler-1/for-loop-2") in edges
    as_json = json.loads(json.dumps(g.as_dict()))
    assert {"id", "name", "parent", "kind"} <= set(as_json["nodes"][0]) and {"from", "to"} == set(as_json["edges"][0])
    text = kfp.graph_text(g)
    assert "for-loop-2 (thresholds) [loop]  <- fit" in text and "report [exit]  <- exit-handler-1" in text


@pytest.mark.parametrize("text,field,words", [
    ("a: [1, 2", "file", "YAML"),
    ("- just\n- a list\n", "file", "compiled KFP pipeline"),
    ("name: comp\nimplementation: {}\n", "file", "pipelineInfo and root missing"),
])
def test_not_a_pipeline(text, field, words):
    with pytest.raises(SpecError) as err:
        kfp.load(text)
    assert err.value.field == field and words in str(err.value)


def _edited(edit) -> str:
    doc = yaml.safe_load(EXAMPLE)
    edit(doc)
    return yaml.safe_dump(doc)


def test_an_unknown_field_is_refused_by_kfps_own_types():
    with pytest.raises(SpecError, match="bogusField"):
        kfp.load(_edited(lambda d: d["root"].update({"bogusField": 1})))


def test_a_missing_name_is_refused():
    with pytest.raises(SpecError, match="pipelineInfo.name"):
        kfp.load(_edited(lambda d: d["pipelineInfo"].update({"name": ""})))


@pytest.mark.parametrize("edit,where", [
    (lambda d: d["components"]["comp-exit-handler-1"]["dag"]["tasks"]["fit"]["dependentTasks"].__setitem__(0, "ghost"),
     "dependentTasks"),
    (lambda d: d["root"]["dag"]["tasks"]["report"]["componentRef"].update({"name": "comp-nope"}), "componentRef"),
    (lambda d: d["components"]["comp-fit"].update({"executorLabel": "exec-nope"}), "executorLabel"),
    (lambda d: d["components"]["comp-exit-handler-1"]["dag"]["tasks"]["fit"]["inputs"]["artifacts"]["data"]
     ["taskOutputArtifact"].update({"producerTask": "ghost"}), "inputs.artifacts.data"),
])
def test_dangling_references_are_refused(edit, where):
    with pytest.raises(SpecError) as err:
        kfp.load(_edited(edit))
    assert where in err.value.field


def test_run_parameters_against_the_inputs():
    p = kfp.load(EXAMPLE)
    assert kfp.check_arguments(p, {"epochs": 2, "thresholds": [0.1]}) == {"epochs": 2, "thresholds": [0.1]}
    with pytest.raises(SpecError, match=r"parameters.epochs.*a int"):
        kfp.check_arguments(p, {"epochs": "two"})
    with pytest.raises(SpecError, match=r"parameters.speed.*an input of pipeline mlyard-example: epochs, fail"):
        kfp.check_arguments(p, {"speed": 1})
    with pytest.raises(SpecError, match="a bool"):
        kfp.check_arguments(p, {"fail": 1})


def test_what_runs_here_and_the_file_kfp_local_gets():
    p = kfp.load(EXAMPLE)
    assert kfp.local_blockers(p) == []
    local = yaml.safe_load(kfp.for_local(p, "2026-11-23T09:00:00Z", "2026-11-23T09:00:01Z"))
    for ex in local["deploymentSpec"]["executors"].values():
        assert "pip install" not in " ".join(ex["container"]["command"])
        assert ex["container"]["command"][:2] == ["sh", "-ec"]
    container = kfp.load((EXAMPLES / "container.yaml").read_text())
    assert "needs a container runtime" in kfp.local_blockers(container)[0]


def test_missing_packages_are_named_and_kfps_own_pin_is_not():
    doc = yaml.safe_load(EXAMPLE)
    cmd = doc["deploymentSpec"]["executors"]["exec-fit"]["container"]["command"]
    cmd[2] = cmd[2].replace("'kfp==2.17.0'", "'kfp==2.7.0' 'surely-not-installed-pkg==1.0'")
    blockers = kfp.local_blockers(kfp.load(yaml.safe_dump(doc)))
    assert len(blockers) == 1 and "fit installs surely-not-installed-pkg==1.0" in blockers[0]


def test_the_schedule_time_placeholder_is_set():
    from kfp import compiler, dsl

    @dsl.component(base_image="python:3.11")
    def show(when: str) -> str:
        return when

    @dsl.pipeline(name="when")
    def when():
        show(when=dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER)

    import tempfile

    out = Path(tempfile.mkdtemp()) / "when.yaml"
    compiler.Compiler().compile(when, str(out))
    text = kfp.for_local(kfp.load(out.read_text()), "2026-11-23T09:00:00Z", "2026-11-23T09:00:05Z")
    assert "2026-11-23T09:00:00Z" in text and kfp.SCHEDULE_TIME not in text


def test_graph_image(tmp_path):
    g = kfp.graph(kfp.load(EXAMPLE))
    png = kfp.graph_image(g, tmp_path / "g.png", "example", {"fit": "SUCCEEDED", "explode": "FAILED"})
    svg = kfp.graph_image(g, tmp_path / "g.svg", "example")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in svg.read_bytes()[:400]


def test_expired_pipeline_outputs_are_swept(tmp_path):
    import os
    import time

    from mlyard.tasks.pipelines import sweep

    old, new = tmp_path / "old-run", tmp_path / "new-run"
    for d in (old, new):
        (d / "outputs").mkdir(parents=True)
    os.utime(old, (time.time() - 121 * 86400,) * 2)
    assert sweep(tmp_path, 120) == ["old-run"] and not old.exists() and new.exists()


def test_a_run_on_a_kfp_server_is_submitted_followed_and_terminated(tmp_path):
    """The Kubeflow Pipelines server path, with the real kfp.Client over HTTP against a fake of the KFP
    REST API (tests/tasks/kfp_rest_fake.py): no KFP server can run here (it needs a Kubernetes cluster)."""
    from kfp_rest_fake import KfpRestFake

    from mlyard.core.errors import TrainingStopped
    from mlyard.core.specs.pipeline import PipelineRunSpec
    from mlyard.tasks.kfp_remote import run_remote

    fake = KfpRestFake(reads_to_finish=3)
    try:
        (tmp_path / "pipeline.yaml").write_text(EXAMPLE)
        spec = PipelineRunSpec(name="remote", pipeline="example", experiment="nightly", parameters={"epochs": 2})
        assert run_remote(fake.url, tmp_path, spec, lambda: None, print, poll_seconds=0) == 0
        (run,) = fake.runs.values()
        assert run["display_name"] == "remote" and run["runtime_config"]["parameters"] == {"epochs": 2}
        assert run["pipeline_spec"]["pipelineInfo"]["name"] == "mlyard-example"
        assert [e["display_name"] for e in fake.experiments.values()] == ["nightly"]
        assert (tmp_path / "kfp_run_id").read_text() == run["run_id"]
        nodes = json.loads((tmp_path / "nodes.json").read_text())
        assert nodes and all(n["state"] == "SUCCEEDED" for n in nodes.values()) and "root-driver" not in nodes

        failing = PipelineRunSpec(name="remote-2", pipeline="example", experiment="nightly",
                                  parameters={"epochs": 2, "fail": True})
        assert run_remote(fake.url, tmp_path, failing, lambda: None, print, poll_seconds=0) == 1
        assert len(fake.experiments) == 1, "the experiment is found again by its name, not created twice"
        assert "FAILED" in {n["state"] for n in json.loads((tmp_path / "nodes.json").read_text()).values()}

        with pytest.raises(TrainingStopped, match="cancelled from Prefect"):
            run_remote(fake.url, tmp_path, spec, lambda: "cancelled from Prefect", print, poll_seconds=0)
        stopped = fake.runs[(tmp_path / "kfp_run_id").read_text()]
        assert ("POST", f"/apis/v2beta1/runs/{stopped['run_id']}:terminate") in fake.calls
        assert stopped["state"] == "CANCELING"

        bad = PipelineRunSpec(name="remote-3", pipeline="example", parameters={"speed": 3})
        with pytest.raises(Exception, match="not inputs of the pipeline"):
            run_remote(fake.url, tmp_path, bad, lambda: None, print, poll_seconds=0)
    finally:
        fake.close()
