"""mlyard: an open ML lifecycle platform on Prefect 3 and MLflow.

From Python (mlyard/api.py): `mlyard.train(spec)`, `mlyard.tune(spec)`, `mlyard.batch_infer(spec)`
and `mlyard.evaluate(spec)` run on the platform `mlyard up` started (or the production servers named
in settings), exactly as the CLI and the Prefect UI do.

`mlyard.settings`, `mlyard.errors`, `mlyard.specs`, `mlyard.uris` and `mlyard.connection` are the
shared vocabulary at the bottom: every package may import them and they import none of ours. The
front door (`mlyard.cli`, `mlyard.api`, the stack, the demo) is on top; nothing imports it.
"""

__version__ = "0.1.0"
__all__ = ["train", "tune", "batch_infer", "evaluate"]


def __getattr__(name: str):  # the API is imported on first use: `import mlyard` stays instant
    if name in __all__:
        from mlyard import api

        return getattr(api, name)
    raise AttributeError(f"module 'mlyard' has no attribute {name!r}")
