import pytest


@pytest.fixture()
def tracking(tmp_path):
    from mlyard.registry import Tracking

    return Tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts")


@pytest.fixture()
def catalog(tmp_path):
    from mlyard.registry import Catalog

    c = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    yield c
    c.dispose()


@pytest.fixture(scope="session")
def sklearn_model_dir(tmp_path_factory):
    """A tiny real model: logistic regression on iris, saved as an MLflow model."""
    import mlflow.sklearn
    import sklearn
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=200).fit(X, y)
    path = tmp_path_factory.mktemp("model") / "iris"
    mlflow.sklearn.save_model(model, path, pip_requirements=[f"scikit-learn=={sklearn.__version__}"])
    return path
