"""MkDocs hooks (mkdocs.yml): the mlyard API's OpenAPI document, written where reference/http.md reads it,
from the FastAPI app the API serves (nothing is started); the settings' table of reference/settings.md, from
the pydantic-settings model (griffe-pydantic reads BaseModel's fields, not BaseSettings')."""

from __future__ import annotations

import json
from pathlib import Path

OPENAPI = Path(__file__).parent / "reference" / "mlyard-api.openapi.json"


def on_pre_build(config, **kwargs) -> None:
    from mlyard.service import create_app

    OPENAPI.write_text(json.dumps(create_app("docs").openapi(), indent=1) + "\n")


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if "<!-- the settings' table -->" not in markdown:
        return markdown
    from mlyard.core.settings import Settings

    rows = ["| Setting | Default | What it is |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "" if field.is_required() else repr(field.get_default(call_default_factory=False))
        about = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `MLYARD_{name.upper()}` | `{default}` | {about} |")
    return markdown.replace("<!-- the settings' table -->", "\n".join(rows))
