"""An endpoint's traffic shares as a Gateway API HTTPRoute (issue 29 §4, tasks/http_route.py): rendered from
the catalog's view, checked by the Gateway API's own validators (@kubernetes-models/gateway-api, generated
from its CRDs' schemas; `make test` installs them with npm), and applied with server-side apply to
Kubernetes' own API server serving the Gateway API's HTTPRoute CRD (its release's schema and validation
rules: tests/controlplane/build.sh copies it), with no Gateway controller acting on it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from controlplane import BIN, install_crd

from mlyard.tasks.http_route import apply_http_route, render_http_route

VALIDATOR = Path(__file__).resolve().parents[2] / ".venv" / "gateway-api" / "validate.mjs"


def gateway_api_check(objects: list[dict]) -> list[str]:
    """What the Gateway API's validators say of each object ("ok" or "invalid: why"), strictly: those
    validators check types, ranges, enums and required fields but, as an API server prunes them, let
    unknown fields pass; `unknown_fields` refuses those, from the same package's types."""
    assert VALIDATOR.exists(), f"{VALIDATOR} is missing: `make test` installs it (nodejs, npm)"
    proc = subprocess.run(["node", VALIDATOR.name], cwd=VALIDATOR.parent, input=json.dumps(objects), text=True,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    said = proc.stdout.splitlines()
    return [why if why != "ok" or not (extra := unknown_fields(obj)) else f"invalid: unknown fields {extra}"
            for why, obj in zip(said, objects)]


def _types() -> dict[str, dict[str, str]]:
    """Each type of the package's gateway.networking.k8s.io/v1 declarations: exported name -> {field: type}."""
    import re

    out: dict[str, dict[str, str]] = {}
    for dts in (VALIDATOR.parent / "node_modules/@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1").glob("*.d.ts"):
        text = dts.read_text()
        cls = re.search(r"export declare class (\w+) extends Model<\w+> implements \w+ \{(.*?)\n\}", text, re.S)
        alias = re.search(r"(\w+) as (IoK8s\w+) \}", text)
        if cls and alias:
            fields = dict(re.findall(r'^\s+"(\w+)"\??: (.+);$', cls.group(2), re.M))
            out["I" + alias.group(2)] = fields
            out[f"I{cls.group(1)}"] = fields
    return out


def unknown_fields(obj: dict, kind: str = "IHTTPRoute", where: str = "", types: dict | None = None) -> list[str]:
    """The paths of fields the Gateway API's types do not declare (metadata and free-form types aside)."""
    types = types if types is not None else _types()
    fields = types.get(kind)
    if fields is None or not isinstance(obj, dict):
        return []
    found = []
    for key, value in obj.items():
        if key not in fields:
            found.append(f"{where}.{key}".lstrip("."))
            continue
        declared = fields[key]
        inner = declared[6:-1] if declared.startswith("Array<") else declared
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            found += unknown_fields(item, inner, f"{where}.{key}" + (f"[{i}]" if isinstance(value, list) else ""), types)
    return found


@pytest.fixture
def api(real_api):
    """The API server as the cluster's admin, serving HTTPRoutes (a Gateway API install's CRD)."""
    install_crd(real_api, yaml.safe_load((BIN / "gateway-api" / "gateway.networking.k8s.io_httproutes.yaml").read_text()))
    return real_api


def _view(weights: dict[str, int], shadows: dict[str, int]) -> dict:
    def stage(name: str, rid: int, model: str, default: bool = False) -> dict:
        return {"name": name, "default": default, "weight": weights.get(name, 0), "shadow": shadows.get(name, 0),
                "resources": [{"id": rid, "model": model}]}

    return {"name": "shop", "stages": [stage("default", 1, "iris/1", True), stage("canary", 2, "iris/2"),
                                       stage("mirror", 3, "iris/3"), stage("other", 4, "digits/1")]}


def test_the_route_carries_the_shares_passes_the_gateway_apis_validators_and_is_applied(api):
    from mlyard.tasks.kubernetes import cluster_client

    route = render_http_route(_view({"canary": 10}, {"mirror": 20}), "public", "mlyard", "gateways")
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateways"}]
    rules = {r["matches"][0]["path"]["value"]: r for r in route["spec"]["rules"]}
    default = rules["/shop/iris/"]
    assert [(b["name"], b["weight"]) for b in default["backendRefs"]] == [("shop-default-r1", 90), ("shop-canary-r2", 10)]
    mirror = [f["requestMirror"] for f in default["filters"] if f["type"] == "RequestMirror"]
    assert mirror == [{"backendRef": {"name": "shop-mirror-r3", "port": 8080}, "percent": 20}]
    assert {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"} in [
        f["urlRewrite"]["path"] for f in default["filters"] if f["type"] == "URLRewrite"]
    assert "/shop/digits/" not in rules  # the default stage does not serve digits: no default route for it
    assert [b["name"] for b in rules["/shop/stages/canary/iris/"]["backendRefs"]] == ["shop-canary-r2"]

    broken = json.loads(json.dumps(route))
    broken["spec"]["rules"][0]["backendRefs"][0]["weight"] = -1
    del broken["spec"]["rules"][1]["matches"][0]["path"]["type"]
    broken["spec"]["rules"][1]["matches"][0]["path"]["type"] = "Prefixish"
    assert gateway_api_check([route, broken])[0] == "ok"
    assert gateway_api_check([broken])[0].startswith("invalid:") and "weight" in gateway_api_check([broken])[0]
    stray = json.loads(json.dumps(route))
    stray["spec"]["rules"][0]["filters"][0]["urlRewrite"]["path"]["prefix"] = "/"  # a field HTTPRoute has not
    assert gateway_api_check([stray]) == ["invalid: unknown fields ['spec.rules[0].filters[0].urlRewrite.path.prefix']"]

    client = cluster_client("http_route_gateway", "gateways/public")
    held = apply_http_route(client, route)
    assert held["metadata"]["name"] == "mlyard-shop" and held["spec"]["rules"] == _defaulted(route["spec"]["rules"])
    moved = render_http_route(_view({"canary": 50}, {}), "public", "mlyard", "gateways")  # the next step
    held = apply_http_route(client, moved)
    stored = _routes(api)[0]
    weights = [(b["name"], b["weight"]) for b in stored["spec"]["rules"][0]["backendRefs"]]
    assert weights == [("shop-default-r1", 50), ("shop-canary-r2", 50)] and gateway_api_check([stored])[0] == "ok"
    # the API server holds the route to its release's rules too: a weight out of range is refused
    code, said = api.request("PATCH", _ROUTES + "/mlyard-shop?fieldManager=mlyard", {"spec": {"rules": [
        {**stored["spec"]["rules"][0], "backendRefs": [{"name": "shop-default-r1", "port": 8080, "weight": -1}]}]}},
        "application/merge-patch+json")
    assert code == 422 and "weight" in said["message"], said


def test_local_stages_have_no_route_and_the_route_goes_with_the_endpoint(api):
    from mlyard.tasks.http_route import delete_http_route
    from mlyard.tasks.kubernetes import cluster_client

    view = _view({"canary": 10}, {})
    view["stages"][1]["instance_type"] = "local"  # a stage on this machine: no Service to route to
    route = render_http_route(view, "public")
    assert [b["name"] for b in route["spec"]["rules"][0]["backendRefs"]] == ["shop-default-r1"]
    view["stages"][0]["instance_type"] = "local"
    assert render_http_route(view, "public") is None  # the default runs here: mlyard's gateway routes it
    client = cluster_client("http_route_gateway", "public")
    apply_http_route(client, render_http_route(_view({}, {}), "public"))
    assert delete_http_route(client, "shop", "mlyard") and _routes(api) == []
    assert not delete_http_route(client, "shop", "mlyard")


_ROUTES = "/apis/gateway.networking.k8s.io/v1/namespaces/mlyard/httproutes"


def _routes(api) -> list[dict]:
    code, doc = api.request("GET", _ROUTES)
    assert code == 200, doc
    return doc["items"]


def _defaulted(rules: list[dict]) -> list[dict]:
    """`rules` with the defaults the API server gives them (the CRD's): a backend reference's group "" and
    kind Service, a route backend's weight 1."""
    rules = json.loads(json.dumps(rules))
    for rule in rules:
        refs = [*rule.get("backendRefs", []), *(f["requestMirror"]["backendRef"] for f in rule.get("filters", [])
                                                 if f["type"] == "RequestMirror")]
        for ref in refs:
            ref.setdefault("group", "")
            ref.setdefault("kind", "Service")
        for ref in rule.get("backendRefs", []):
            ref.setdefault("weight", 1)
    return rules
