"""The model registry on MLflow (SQLite) and the catalog's rule about served models."""

import pytest

from mlyard.core.errors import ModelInUse, ModelNotFound, SpecError, TrainingNotComplete
from mlyard.registry import ModelRegistry, serving_args, serving_env
from mlyard.registry.tables import Endpoint, EndpointStage, StageResource


@pytest.fixture()
def models(tracking, catalog):
    return ModelRegistry(tracking, catalog)


def test_external_artifact_version(models, sklearn_model_dir):
    import sklearn

    mv = models.create_from_directory("iris", sklearn_model_dir, "s3://bucket/iris",
                                      parameters={"batch-size": "32", "threshold": "0.5"}, description="v1")
    assert (mv.name, mv.version, mv.framework, mv.framework_version) == ("iris", "1", "sklearn", sklearn.__version__)
    assert mv.lineage["origin_uri"] == "s3://bucket/iris" and mv.parameters == {"batch-size": "32", "threshold": "0.5"}
    assert serving_env(mv.parameters) == {"BATCH_SIZE": "32", "THRESHOLD": "0.5"}
    assert serving_args(mv.parameters) == ["--batch-size", "32", "--threshold", "0.5"]
    assert serving_env({"maxLength": 1, "HTTPTimeout": 2, "model_id": "x"}) == {
        "MAX_LENGTH": "1", "HTTP_TIMEOUT": "2", "MODEL_ID": "x"}
    # the version's source is a real MLflow model that loads and predicts
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(mv.source)
    assert len(model.predict([[5.1, 3.5, 1.4, 0.2]])) == 1


def test_aliases_resolve_rename_describe(models, sklearn_model_dir):
    models.create_from_directory("iris", sklearn_model_dir, "x")
    models.create_from_directory("iris", sklearn_model_dir, "y")
    models.set_alias("iris", "champion", "1")
    assert models.resolve("iris@champion").version == "1"
    assert models.resolve("iris/2").version == "2"
    assert models.resolve("iris").version == "2"
    with pytest.raises(SpecError, match="alias"):
        models.set_alias("iris", "v3", "1")
    with pytest.raises(ModelNotFound):
        models.set_alias("iris", "prod", "9")
    models.describe("iris", "flowers")
    models.describe("iris", "second", version="2")
    renamed = models.rename("iris", "flowers")
    assert renamed.description == "flowers" and [v.version for v in renamed.versions] == ["1", "2"]
    assert models.resolve("flowers/2").description == "second"
    with pytest.raises(ModelNotFound, match="mlyard models list"):
        models.get("iris")


def test_served_model_cannot_be_deleted(models, catalog, sklearn_model_dir):
    models.create_from_directory("iris", sklearn_model_dir, "x")
    models.create_from_directory("iris", sklearn_model_dir, "y")
    with catalog.session() as s:
        s.add(Endpoint(name="iris-api", stages=[EndpointStage(name="default", is_default=True, resources=[
            StageResource(model_name="iris", model_version="2")])]))
    with pytest.raises(ModelInUse, match="iris-api/default"):
        models.delete("iris")
    with pytest.raises(ModelInUse):
        models.delete("iris", "2")
    models.delete("iris", "1")  # a version no endpoint serves can go
    assert [v.version for v in models.get("iris").versions] == ["2"]


def test_create_from_training_refused_unless_complete(models):
    with pytest.raises(TrainingNotComplete, match="is FAIL TRAIN, not COMPLETE"):
        models.create_from_training("m", "abc", "FAIL TRAIN", "run")
    with pytest.raises(TrainingNotComplete, match="RUNNING"):
        models.create_from_training("m", "abc", "RUNNING", None)
    assert models.list() == []


def test_bad_names_and_empty_artifacts(models, tmp_path):
    with pytest.raises(SpecError, match="name"):
        models.create_from_directory("bad/name", tmp_path, "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="empty"):
        models.create_from_directory("m", tmp_path / "empty", "file:///empty")
    assert models.list() == []


def test_signature_declared_in_mlmodel_is_recorded(models, tmp_path):
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    X = pd.DataFrame({"rooms": [1.0, 2.0, 3.0], "area": [30.0, 50.0, 80.0]})
    model = LinearRegression().fit(X, [10.0, 20.0, 31.0])
    mlflow.sklearn.save_model(model, tmp_path / "m", signature=infer_signature(X, model.predict(X)),
                              pip_requirements=["scikit-learn"])
    mv = models.create_from_directory("houses", tmp_path / "m", "file:///m")
    assert [c["name"] for c in mv.signature["inputs"]] == ["rooms", "area"]
    assert mv.signature["source"] == "declared in MLmodel"
    assert models.get_version("houses", 1).signature == mv.signature  # read back from MLflow


def test_signature_read_off_the_estimator_when_none_is_declared(tracking, catalog, sklearn_model_dir):
    from mlyard.cli.models import signature_text
    from mlyard.tasks.models import estimator_signature

    bare = ModelRegistry(tracking, catalog).create_from_directory("plain", sklearn_model_dir, "x")
    assert bare.signature is None and signature_text(bare.signature) == "none"
    mv = ModelRegistry(tracking, catalog, infer_signature=estimator_signature).create_from_directory(
        "inferred", sklearn_model_dir, "x")
    assert mv.signature["inputs"] == [{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 4]}}]
    assert mv.signature["outputs"][0]["tensor-spec"]["dtype"] == "int64"
    assert signature_text(mv.signature) == "inputs: 4 x float64 tensor; outputs: int64 tensor"
