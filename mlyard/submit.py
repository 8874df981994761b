"""Queueing work: a flow run of a deployment, the run that Run in the Prefect UI makes.

The commands that queue work (`mlyard rags create|sync`, `--submit`, endpoint changes) ask the stack's
warm mlyard API (mlyard/service.py) to make the run: Prefect's client is imported and connected there
already, which saves a fresh command 2-3 s of importing Prefect. Without that API (a production Prefect
server, or the API stopped) the run is made here. Either way Prefect's own `run_deployment` makes it,
so it is the same flow run with the same parameters, tags and job variables.

    from mlyard.submit import submit
    submit("rag-sync/local", {"spec": {"rag": "handbook"}}, tags=["mlyard.rag:handbook"])
    # {"id": "6f1c...", "name": "curious-heron"}
"""

from __future__ import annotations

from typing import Any


def submit(deployment: str, parameters: dict[str, Any], *, tags: list[str] | None = None,
           job_variables: dict[str, Any] | None = None) -> dict[str, str]:
    """A new flow run of `deployment` ("FLOW/DEPLOYMENT"), queued for its work pool: {"id", "name"}.
    `parameters` must be JSON (a spec's `model_dump(mode="json")`)."""
    from mlyard import queries

    body: dict[str, Any] = {"deployment": deployment, "parameters": parameters, "tags": tags or [],
            "job_variables": job_variables or {}}
    url = queries.api_url()
    if url is not None:
        try:
            return queries.post(url, "/v1/runs", body)
        except queries.Unreachable:
            pass  # stopped since `up`: the same run, made here
    return create_run(**body)


def create_run(deployment: str, parameters: dict[str, Any], tags: list[str],
               job_variables: dict[str, Any]) -> dict[str, str]:
    """Make the flow run in this process (the mlyard API runs this too), with the platform's one helper."""
    from tasks.orchestration import submit as make_run

    fr: Any = make_run(deployment, parameters, job_variables, tags)
    return {"id": str(fr.id), "name": fr.name}
