"""mlyard: an open ML lifecycle platform on Prefect 3 and MLflow.

From Python (mlyard/api.py): `mlyard.train(spec)`, `mlyard.tune(spec)`, `mlyard.batch_infer(spec)`
and `mlyard.evaluate(spec)` run on the platform `mlyard up` started (or the production servers named
in settings), exactly as the CLI and the Prefect UI do; with a team member's key (MLYARD_API_KEY, or what
`mlyard login` kept) they act as that user, through the platform's mlyard API.

The shared vocabulary (settings, errors, specs, URIs, names, the connection) is the `core` package at
the bottom; this package is the front door on top (the CLI, this API, the stack, the demo), and
nothing but tests imports it.
"""

__version__ = "0.1.0"
__all__ = ["train", "tune", "batch_infer", "evaluate"]


def __getattr__(name: str):  # the API is imported on first use: `import mlyard` stays instant
    if name in __all__:
        from mlyard.core.environment import apply_login

        apply_login()  # `mlyard login`'s key and address, where the environment does not say them (as the CLI)
        from mlyard import api

        return getattr(api, name)
    raise AttributeError(f"module 'mlyard' has no attribute {name!r}")
