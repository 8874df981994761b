"""Bad input, given as users give it (a fresh shell, the Prefect API), never reaches a place it can
break: refused in one line naming the field, before anything is made, and the listings keep working."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

from tests.browser.browsing import deployment_id
from tests.test_user_paths import EXAMPLES, _ok, _one_line_error, mlyard, project


def test_an_integer_past_64_bits_is_refused_by_the_cli_and_by_prefect(stack):
    folder = project("big-numbers")
    spec = {"name": "too-big", "experiment": "bad-input", "source_uri": str(EXAMPLES / "sklearn_digits"),
            "entry_point": "train.py"}
    (folder / "big.yaml").write_text(json.dumps({**spec, "max_run_time_seconds": 10**20}))
    _one_line_error(mlyard("train", "-f", "big.yaml", cwd=folder), "max_run_time_seconds")
    (folder / "hp.yaml").write_text(json.dumps({**spec, "hyperparameters": {"lr": 10**20}}))
    _one_line_error(mlyard("train", "-f", "hp.yaml", cwd=folder), "hyperparameters.lr")

    # the Run form's path: Prefect's own parameter check refuses it before a run is stored
    token = base64.b64encode(stack.prefect_auth_string.encode()).decode()
    for bad in ({**spec, "max_run_time_seconds": 10**20}, {**spec, "resources": {"gpu_count": 10**20}},
                {**spec, "hyperparameters": {"lr": 10**20}}):
        request = urllib.request.Request(
            f"{stack.api_url}/deployments/{deployment_id(stack, 'train/train-local')}/create_flow_run", method="POST",
            data=json.dumps({"parameters": {"spec": bad}}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                raise AssertionError(f"Prefect made a run with {bad}: {resp.status} {resp.read()[:300]!r}")
        except urllib.error.HTTPError as exc:
            assert exc.code in (409, 422), exc.read()
    listed = json.loads(_ok(mlyard("trainings", "list", "--json")))
    assert not any(t["name"] == "too-big" for t in listed)


def test_a_bad_name_from_the_run_form_is_refused_in_words_not_a_regular_expression(stack):
    """The Run form's toast showed the name's pattern itself; Prefect's check (the form's field messages
    and a run's creation alike) now says what a name may hold, and no run is made."""
    token = base64.b64encode(stack.prefect_auth_string.encode()).decode()
    headers = {"Content-Type": "application/json", "Authorization": f"Basic {token}"}
    spec = {"name": "Bad Name", "source_uri": str(EXAMPLES / "sklearn_digits"), "entry_point": "train.py"}
    request = urllib.request.Request(
        f"{stack.api_url}/deployments/{deployment_id(stack, 'train/train-local')}/create_flow_run", method="POST",
        data=json.dumps({"parameters": {"spec": spec}}).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            raise AssertionError(f"Prefect made a run named 'Bad Name': {resp.status}")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode()
        assert exc.code in (409, 422) and "lowercase letters, digits and '-'" in detail, detail
        assert "^(" not in detail and "[a-z0-9]" not in detail, detail
    # what the form asks as a person types: the same words under the field
    deployment = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{stack.api_url}/deployments/{deployment_id(stack, 'train/train-local')}", headers=headers), timeout=30).read())
    checked = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{stack.api_url}/ui/schemas/validate", method="POST", headers=headers, data=json.dumps(
            {"schema": deployment["parameter_openapi_schema"], "values": {"spec": spec}}).encode()), timeout=30).read())
    assert "lowercase letters, digits and '-'" in json.dumps(checked) and "^(" not in json.dumps(checked), checked


def test_a_token_for_ninety_nine_million_days_is_one_line_naming_days(stack):
    _one_line_error(mlyard("endpoints", "tokens", "issue", "any-endpoint", "--days", "99999999"), "days", "36500")
    _one_line_error(mlyard("endpoints", "tokens", "issue", "any-endpoint", "--days", "nan"), "days")


def test_an_endpoint_named_after_a_gateway_route_is_refused_at_create(stack):
    """/mlyard/... and /rag/... are the gateway's own paths: an endpoint of such a name was made ACTIVE and
    could never be reached."""
    from mlyard.core.names import GATEWAY_PREFIXES
    from mlyard.serving.gateway_rag import RAG_ROUTES

    assert {route.split("/")[1] for route in RAG_ROUTES} | {"mlyard"} <= set(GATEWAY_PREFIXES)
    folder = project("reserved-endpoint")
    for name in GATEWAY_PREFIXES:
        (folder / f"{name}.yaml").write_text(json.dumps({"name": name, "stage": {
            "name": "default", "resources": [{"model": "digits@champion"}]}}))
        _one_line_error(mlyard("endpoints", "create", "-f", f"{name}.yaml", cwd=folder), "name", "gateway")
    listed = json.loads(_ok(mlyard("endpoints", "list", "--json")))
    assert not {e["name"] for e in listed} & set(GATEWAY_PREFIXES)


def test_a_platform_that_does_not_answer_is_not_a_run_that_is_missing(tmp_path):
    """With the stack's Prefect server away (stopped, restarting), `trainings show ID` said "not found"
    about a training that was alive: it says the platform does not answer, and what to run."""
    import httpx
    from prefect.exceptions import ObjectNotFound

    from mlyard.core.errors import PlatformUnreachable, TrainingNotFound
    from mlyard.runs import not_found_or_away
    from tests.conftest import free_port

    missing = TrainingNotFound("x")
    refused = httpx.ConnectError("All connection attempts failed")
    assert isinstance(not_found_or_away(refused, missing, "http://127.0.0.1:1/api"), PlatformUnreachable)
    assert not_found_or_away(ObjectNotFound(http_exc=Exception()), missing, "u") is missing

    # a fresh shell in a project whose stack record names a server that does not answer
    home = tmp_path / "project" / ".mlyard"
    home.mkdir(parents=True, mode=0o700)
    (home / "stack.json").write_text(json.dumps({"api_url": f"http://127.0.0.1:{free_port()}/api", "ui_url": ""}))
    said = _one_line_error(mlyard("trainings", "show", "0b7a2c1e-1111-4222-8333-444455556666", cwd=tmp_path / "project"),
                           "does not answer", "mlyard up")
    assert "not found" not in said


def test_team_commands_refuse_numbers_out_of_range_in_one_line(stack):
    """Quotas of 2^70 (a traceback), inf and 1e400 (stored, then answered as invalid JSON), a rate limit of
    nan (taken as no limit), a key for 99999999 days (a traceback), an audit since 99999999999 days ago (a
    500): each is one line naming its field, exit 2, and nothing is made; the audit reads from the start."""
    for args, field in ((("projects", "create", "q-big", "--gpus", str(2**70)), "gpus"),
                        (("projects", "create", "q-inf", "--cpus", "inf"), "cpus"),
                        (("projects", "create", "q-huge", "--cpus", "1e400"), "cpus"),
                        (("projects", "create", "q-runs", "--max-runs", str(2**63)), "max_runs"),
                        (("projects", "set-quota", "default", "--rate-limit", "nan"), "rate_limit"),
                        (("projects", "set-quota", "default", "--key-rate-limit", "inf"), "key_rate_limit"),
                        (("users", "create", "q-user", "--expires-days", "99999999"), "expires_days")):
        _one_line_error(mlyard(*args), field)
    listed = json.loads(_ok(mlyard("projects", "list", "--json")))
    assert not {p["name"] for p in listed} & {"q-big", "q-inf", "q-huge", "q-runs"}
    assert [p.get("rate_limit") for p in listed if p["name"] == "default"] == [None]
    assert not any(u["name"] == "q-user" for u in json.loads(_ok(mlyard("users", "list", "--json"))))
    assert isinstance(json.loads(_ok(mlyard("audit", "--since", "99999999999d", "--json"))), list)
