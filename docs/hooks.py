"""MkDocs hooks (mkdocs.yml): the mlyard API's OpenAPI document, written where reference/http.md reads it,
from the FastAPI app the API serves (nothing is started)."""

from __future__ import annotations

import json
from pathlib import Path

OPENAPI = Path(__file__).parent / "reference" / "mlyard-api.openapi.json"


def on_pre_build(config, **kwargs) -> None:
    from mlyard.service import create_app

    OPENAPI.write_text(json.dumps(create_app("docs").openapi(), indent=1) + "\n")
