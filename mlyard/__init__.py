"""mlyard: an open ML lifecycle platform on Prefect 3 and MLflow.

`mlyard.settings`, `mlyard.errors` and `mlyard.specs` are leaf modules that import nothing else of
ours, so every package may use them; the rest of `mlyard/` is the command line and stays thin.
"""

__version__ = "0.1.0"
