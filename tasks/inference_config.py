"""AI Toolkit's inference.config.json, which a push of a folder to an endpoint (`mlyard endpoints deploy
--sync`) fills with the endpoint's URL: where it lies in the folder, and how it is written (its other keys
are kept). Pure: a member's command writes it where they are without importing any engine."""

from __future__ import annotations

import json
from pathlib import Path

CONFIG = Path("infra") / "inference.config.json"


def folder_kind(folder: Path) -> str:
    """A pushed folder's kind when the push names none: a model folder when it has a model-definition."""
    return "model-folder" if any(folder.glob("model-definition.y*ml")) else "entry-script"


def write_config(path: Path, endpoint: str, base_url: str, model: str, version: str | None, kind: str) -> dict[str, str]:
    """The endpoint's URL in AI Toolkit's inference.config.json (its other keys are kept). `version` None:
    not known yet (a member's push is queued), and no stale one is kept."""
    data = json.loads(path.read_text()) if path.is_file() else {}  # (check_code found it readable)
    app = f"{base_url}/{endpoint}/{model}"
    data.update({"ACA_APP_NAME": endpoint, "ACA_APP_ENDPOINT": app,
                 "MLYARD_SCORE_URL": app + ("/score" if kind == "entry-script" else "")})
    if version is None:
        data.pop("MLYARD_MODEL_VERSION", None)
    else:
        data["MLYARD_MODEL_VERSION"] = f"{model}/{version}"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return data
