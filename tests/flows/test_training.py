"""The training flow on the real embedded stack: Prefect server, MLflow on SQLite, S3 on loopback."""

import threading
import time
from importlib.util import find_spec
from pathlib import Path

import pytest

from mlyard.core.errors import SpecError, StorageNotFound
from mlyard.core.specs import TrainingSpec
from tests.conftest import all_gone, marked

TRAIN = """
import json, os, sys, time
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
rows = open(os.path.join(os.environ["EM_DATASET_TRAIN"], "rows.csv")).read().splitlines()
for epoch in range(1, int(args["--epochs"]) + 1):
    print(f"epoch={epoch} loss={1.0 / epoch:.4f} rows={len(rows)}", flush=True)
open(os.path.join(os.environ["EM_MODEL_DIR"], "model.json"), "w").write(json.dumps({"w": 1}))
open(os.path.join(os.environ["EM_CHECKPOINT_DIR"], "ckpt-1"), "w").write("state")
"""

SLOW = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", os.environ["EM_HP_MARKER"]])
print("loss=1.0", flush=True)
time.sleep(float(os.environ["EM_HP_SLEEP"]))
print("loss=0.5", flush=True)
"""


def _spec(src: Path, **kw) -> TrainingSpec:
    return TrainingSpec(name=kw.pop("name", "t"), experiment=kw.pop("experiment", "flow-tests"),
                        source_uri=str(src), entry_point="main.py", **kw)


def _marker() -> str:
    """A word the script's child carries in its command line, to be looked for from outside its sandbox."""
    import uuid

    return f"mark-{uuid.uuid4().hex}"


def test_training_end_to_end(platform, s3_env, s3_settings, bucket, algorithm, tmp_path):
    from mlyard.flows.training import train
    from mlyard.tasks.storage import Storage
    from mlyard.trainings import get_training

    storage = Storage(s3_settings)
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.csv").write_text("a\nb\nc\n")
    storage.upload(data, f"s3://{bucket}/datasets/train")
    src = algorithm(TRAIN)
    spec = _spec(src, name="e2e", hyperparameters={"epochs": 3}, datasets={"train": f"s3://{bucket}/datasets/train"},
                 output_uri=f"s3://{bucket}/out/model", checkpoint_output_uri=f"s3://{bucket}/out/ckpt")
    result = train(spec)

    assert result.metrics == {"loss": pytest.approx(1 / 3, abs=1e-3), "rows": 3.0, "epoch": 3.0}  # epoch= is a metric too
    history = platform.tracking.metric_history(result.run_id, "loss")
    assert [(m.step, round(m.value, 3)) for m in history] == [(1, 1.0), (2, 0.5), (3, 0.333)]
    run = platform.tracking.get_run(result.run_id)
    assert run.status == "FINISHED" and run.params == {"epochs": "3"}
    assert run.tags["mlyard.training_id"] == result.training_id
    assert run.tags["mlyard.prefect_url"].endswith(f"/runs/flow-run/{result.training_id}")  # MLflow -> Prefect
    log = platform.tracking.download(result.run_id, "logs/output.log", tmp_path / "a").read_text()
    assert "epoch=3 loss=0.3333 rows=3" in log
    assert "model.json" in [Path(f.path).name for f in platform.tracking.client.list_artifacts(result.run_id, "model")]
    assert storage.list(f"s3://{bucket}/out/model") == ["model.json"]
    assert storage.list(f"s3://{bucket}/out/ckpt") == ["ckpt-1"]

    info = get_training(result.training_id)
    assert (info.status, info.name, info.experiment) == ("COMPLETE", "e2e", "flow-tests") and info.run_seconds > 0


READS_FOLDERS = """
import os
for name in ("LOCAL_FILE", "FILE_URI", "LOCAL_DIR", "S3_PREFIX", "S3_OBJECT"):
    folder = os.environ["EM_DATASET_" + name]
    assert os.path.isdir(folder), (name, folder)
    print(name, open(os.path.join(folder, "train.csv")).read().strip(), flush=True)
"""


def test_every_dataset_is_a_folder_whatever_its_source(platform, s3_env, s3_settings, bucket, algorithm, tmp_path):
    """EM_DATASET_<NAME> is a folder: a script joins its file name to it, for a single file too."""
    from mlyard.flows.training import train
    from mlyard.tasks.storage import Storage

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("x,y")
    storage = Storage(s3_settings)
    storage.upload(data, f"s3://{bucket}/ds/prefix")
    storage.upload(data / "train.csv", f"s3://{bucket}/ds/object/train.csv")
    datasets = {"local_file": str(data / "train.csv"), "file_uri": f"file://{data}/train.csv", "local_dir": str(data),
                "s3_prefix": f"s3://{bucket}/ds/prefix", "s3_object": f"s3://{bucket}/ds/object/train.csv"}
    result = train(_spec(algorithm(READS_FOLDERS), name="folders", datasets=datasets))
    log = platform.tracking.download(result.run_id, "logs/output.log", tmp_path / "a").read_text()
    for name in ("LOCAL_FILE", "FILE_URI", "LOCAL_DIR", "S3_PREFIX", "S3_OBJECT"):
        assert f"{name} x,y" in log
    assert (data / "train.csv").read_text() == "x,y" and sorted(p.name for p in data.iterdir()) == ["train.csv"]


def test_failing_script_is_fail_train_with_cause_and_leaves_nothing(platform, s3_env, s3_settings, bucket, algorithm):
    from mlyard.flows.training import train
    from mlyard.tasks.storage import Storage
    from mlyard.trainings import get_training

    src = algorithm("import os\nopen(os.environ['EM_MODEL_DIR'] + '/half', 'w').write('x')\n"
                    "print('step one ok')\nraise RuntimeError('CUDA out of memory')\n")
    state = train(_spec(src, name="fails", output_uri=f"s3://{bucket}/never"), return_state=True)
    assert state.is_failed()
    info = get_training(str(state.state_details.flow_run_id))
    assert info.status == "FAIL TRAIN"  # read at once: from the label the entry point's start wrote
    from prefect.client.orchestration import get_client

    from mlyard.core.names import STARTED_LABEL, TASK_RUN_ENTRY_POINT

    with get_client(sync_client=True) as client:
        assert client.read_flow_run(info.id).labels.get(STARTED_LABEL + TASK_RUN_ENTRY_POINT) is True
    assert "exit code 1" in info.cause and "CUDA out of memory" in info.cause and "step one ok" in info.cause
    run = platform.tracking.find_training_run(info.id)
    assert run.status == "FAILED" and "CUDA out of memory" in run.tags["mlyard.status_reason"]
    assert not platform.tracking.client.list_artifacts(run.run_id, "model")
    with pytest.raises(StorageNotFound):
        Storage(s3_settings).list(f"s3://{bucket}/never")


def test_missing_entry_point_fails_before_anything_is_made(platform, algorithm):
    from mlyard.flows.training import train
    from mlyard.trainings import get_training

    src = algorithm("print(1)", entry="other.py")
    state = train(_spec(src, name="no-entry"), return_state=True)
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, SpecError) and exc.field == "entry_point" and "other.py" in str(exc)
    info = get_training(str(state.state_details.flow_run_id))
    assert info.status == "CREATE FAILED"
    assert platform.tracking.find_training_run(info.id) is None


def test_missing_dataset_is_named(platform, algorithm, tmp_path):
    from mlyard.flows.training import train

    state = train(_spec(algorithm("print(1)"), name="no-data", datasets={"train": str(tmp_path / "nope")}),
                  return_state=True)
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, SpecError) and exc.field == "datasets.train" and "nothing is stored there" in str(exc)


def test_max_run_time_ends_failed_with_reason(platform, algorithm, tmp_path):
    from mlyard.flows.training import train
    from mlyard.trainings import get_training

    marker = _marker()
    spec = _spec(algorithm(SLOW), name="too-long", max_run_time_seconds=3,
                 hyperparameters={"marker": marker, "sleep": 120})
    t0 = time.monotonic()
    state = train(spec, return_state=True)
    assert state.is_failed() and time.monotonic() - t0 < 30
    info = get_training(str(state.state_details.flow_run_id))
    assert info.status == "FAIL TRAIN" and "max run time of 3 s" in info.cause
    assert all_gone(marker)


def test_stop_while_running_in_process(platform, algorithm, tmp_path):
    """`mlyard trainings stop` on a training that runs in-process (no worker): the flow ends itself STOPPED."""
    from mlyard.flows.training import train
    from mlyard.trainings import list_trainings, stop_training

    marker = _marker()
    spec = _spec(algorithm(SLOW), name="to-stop", hyperparameters={"marker": marker, "sleep": 300})
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("state", train(spec, return_state=True)))
    thread.start()
    deadline = time.monotonic() + 60
    training = None
    while time.monotonic() < deadline and training is None:
        training = next((t for t in list_trainings(20) if t.name == "to-stop" and t.status == "RUNNING"), None)
        time.sleep(0.3)
    assert training is not None, "the training never reached RUNNING"
    assert stop_training(training.id).status in ("STOP IN PROGRESS", "STOPPED")
    thread.join(60)
    assert box["state"].is_cancelled()
    assert [t.status for t in list_trainings(20) if t.id == training.id] == ["STOPPED"]
    assert all_gone(marker)
    run = platform.tracking.find_training_run(training.id)
    assert run.status == "KILLED"


def test_metric_visible_while_running(platform, algorithm, tmp_path):
    from mlyard.flows.training import train

    marker = _marker()
    spec = _spec(algorithm(SLOW), name="latency", hyperparameters={"marker": marker, "sleep": 6})
    thread = threading.Thread(target=lambda: train(spec))
    thread.start()
    try:
        seen = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and seen is None:
            if marked(marker):  # the script runs (its child does)
                run = platform.tracking.client.search_runs(
                    [platform.tracking.experiment_id("flow-tests")],
                    filter_string="tags.`mlyard.training_name` = 'latency' and attributes.status = 'RUNNING'")
                if run and run[0].data.metrics.get("loss") == 1.0:
                    seen = time.monotonic()
            time.sleep(0.1)
        assert seen is not None and thread.is_alive(), "loss=1.0 did not reach MLflow while the script ran"
    finally:
        thread.join(60)


# torch runs in the training's processes: found here, not imported into the tests' own process
_TORCH = pytest.mark.skipif(find_spec("torch") is None, reason="torch is installed by `make test` (the torch extra)")

TORCH_SCRIPT = """
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
print(f"rank={rank} world={world} total={t.item()}", flush=True)
if rank == 0:
    torch.save({"total": t.item()}, os.path.join(os.environ["EM_MODEL_DIR"], "model.pt"))
dist.destroy_process_group()
"""


@_TORCH
def test_torchrun_two_cpu_processes_with_gloo(platform, algorithm, tmp_path):
    from mlyard.flows.training import train

    spec = _spec(algorithm(TORCH_SCRIPT), name="ddp", torchrun=True, processes_per_node=2)
    result = train(spec)
    log = platform.tracking.download(result.run_id, "logs/output.log", tmp_path / "l").read_text()
    assert "rank=0 world=2 total=3.0" in log and "rank=1 world=2 total=3.0" in log
    assert result.model_uri is not None


@_TORCH
def test_two_nodes_of_two_processes_meet_on_this_machine(platform, algorithm, tmp_path):
    """nodes: 2 on the local pool: two node processes (torchrun each, two workers each) that meet at a
    c10d rendezvous on 127.0.0.1, as an Indexed Job's pods meet at node 0 on a cluster: a real
    all-reduce over gloo across the four ranks."""
    from mlyard.flows.training import train

    spec = _spec(algorithm(TORCH_SCRIPT), name="ddp2", torchrun=True, nodes=2, processes_per_node=2)
    result = train(spec)
    log = platform.tracking.download(result.run_id, "logs/output.log", tmp_path / "l").read_text()
    for rank in range(4):  # 1 + 2 + 3 + 4 on every rank
        assert f"rank={rank} world=4 total=10.0" in log, log
    assert "[node 1] rank=" in log  # the second node's lines, marked
    assert result.model_uri is not None  # rank 0 saved it


NODE_SCRIPT = """
import json, os, sys
cfg = json.loads(os.environ["TF_CONFIG"])
print(f"node={os.environ['NODE_RANK']} of={os.environ['NNODES']} rank={os.environ['RANK']} "
      f"world={os.environ['WORLD_SIZE']} master={os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} "
      f"index={cfg['task']['index']} workers={','.join(cfg['cluster']['worker'])}", flush=True)
sys.exit(int(os.environ.get("EM_HP_FAIL_NODE", "-1") == os.environ["NODE_RANK"]) * 3)
"""


def test_without_torchrun_each_node_gets_its_rank_and_tf_config(platform, algorithm, tmp_path):
    import re

    from mlyard.flows.training import train

    result = train(_spec(algorithm(NODE_SCRIPT), name="tf3", nodes=3))
    log = platform.tracking.download(result.run_id, "logs/output.log", tmp_path / "l").read_text()
    found = {int(m["node"]): m for m in re.finditer(
        r"node=(?P<node>\d) of=3 rank=(?P<rank>\d) world=3 master=(?P<master>\S+) index=(?P<index>\d) "
        r"workers=(?P<workers>\S+)", log)}
    assert sorted(found) == [0, 1, 2], log
    assert {m["master"] for m in found.values()} == {found[0]["master"]} and found[0]["master"].startswith("127.0.0.1:")
    workers = found[0]["workers"].split(",")
    assert len(set(workers)) == 3 and all(m["workers"].split(",") == workers for m in found.values())
    assert all(m["rank"] == m["index"] == str(n) for n, m in found.items())


def test_one_failed_node_fails_the_training_with_its_last_lines(platform, algorithm):
    from mlyard.core.errors import TrainingFailed
    from mlyard.flows.training import train

    with pytest.raises(TrainingFailed) as failed:
        train(_spec(algorithm(NODE_SCRIPT), name="tf3-fail", nodes=3, hyperparameters={"fail_node": 2}))
    assert "node 2 of 3" in failed.value.reason and "exit code 3" in failed.value.reason
    assert any(line.startswith("[node 2] node=2 ") for line in failed.value.last_lines), failed.value.last_lines
