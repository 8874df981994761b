"""mlyard.core.connection: Prefect's settings are made again when, and only when, the environment changed."""

from __future__ import annotations

import os


def test_prefect_settings_are_made_again_only_when_the_environment_changed(monkeypatch):
    import prefect.context
    from prefect.settings import get_current_settings

    from mlyard.core import connection

    made = []
    real = prefect.context.refresh_global_settings_context
    monkeypatch.setattr(prefect.context, "refresh_global_settings_context", lambda: made.append(1) or real())
    level = get_current_settings().logging.level
    monkeypatch.setattr(connection, "_PREFECT_ENV_READ", {})  # as in a process that never read them here
    connection.reread_prefect_settings()
    connection.reread_prefect_settings()
    assert len(made) == 1, "the same environment: the settings are kept"

    before = os.environ.get("PREFECT_LOGGING_LEVEL")
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "CRITICAL" if level != "CRITICAL" else "ERROR")
    connection.reread_prefect_settings()
    assert len(made) == 2 and get_current_settings().logging.level != level
    if before is None:
        monkeypatch.delenv("PREFECT_LOGGING_LEVEL")
    else:
        monkeypatch.setenv("PREFECT_LOGGING_LEVEL", before)
    connection.reread_prefect_settings()
    assert len(made) == 3 and get_current_settings().logging.level == level


def test_the_doors_links_point_where_people_reach_it():
    """A cluster's door is reached at its ingress: the links members are given say so (a notebook's URL);
    unset, the door of this machine's stack, whose port the API listens on either way."""
    from mlyard.core.settings import Settings

    assert Settings(prefect_port=4200, door_port=None, door_public_url=None).door_url == "http://127.0.0.1:4203"
    public = Settings(prefect_port=4200, door_port=8081, door_public_url="https://mlyard.example/")
    assert public.door_url == "https://mlyard.example" and public.door_port == 8081


def test_the_gateway_is_where_the_settings_name_it(tmp_path, monkeypatch):
    """A cluster's flow runs and services reach the gateway at its Service, as the install's ConfigMap names it
    (MLYARD_GATEWAY_URL): never this machine's port, which nothing listens on in a pod. Unset: where `mlyard up`
    starts it."""
    from mlyard.core.connection import gateway_url
    from mlyard.core.settings import Settings

    monkeypatch.setenv("MLYARD_HOME", str(tmp_path))
    monkeypatch.setenv("MLYARD_GATEWAY_URL", "http://gateway:8080/")
    assert gateway_url(Settings()) == "http://gateway:8080"
    monkeypatch.delenv("MLYARD_GATEWAY_URL")
    assert gateway_url(Settings(prefect_port=4200, gateway_port=None)) == "http://127.0.0.1:4202"
