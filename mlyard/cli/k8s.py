"""`mlyard k8s ...`: the platform on a Kubernetes cluster (infra/k8s; tasks/cluster.py renders it,
tasks/cluster_apply.py applies, prunes and removes it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from mlyard.cli.common import JSON, emit, guard, out, typer_app

app = typer_app("Install mlyard on a Kubernetes cluster: render the manifests of a values file, diff, apply or "
                "uninstall them; back the installed platform up and restore it.")

VALUES = typer.Option(None, "-f", "--values", help="Values file (YAML; fields in core/specs/cluster.py). "
                      "Without it: the dev overlay in namespace mlyard with the mlyard:0.1.0 image.")


def values_of(path: Optional[Path]):
    from mlyard.core.specs import load_spec_file
    from mlyard.core.specs.cluster import ClusterValues

    return load_spec_file(ClusterValues, path) if path else ClusterValues()


@app.command("render")
def render(values: Optional[Path] = VALUES,
           output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the YAML here (default: stdout)."),
           as_json: bool = JSON) -> None:
    """Print (or write) every object of the install as YAML, ready for `kubectl apply --server-side`. It asks no
    cluster: unless the values name them (network.api_server_cidrs), the runs that apply objects may reach the API
    server's ports anywhere, and the cluster API's addresses are kept from a member's code only where they are
    internal (`mlyard k8s apply` reads them)."""
    from mlyard.tasks import cluster

    objs = guard(lambda: cluster.render(values_of(values)))
    if as_json:
        emit(objs, True)
        return
    text = cluster.to_yaml(objs)
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text)
    output.chmod(0o600)
    out.print(f"wrote {len(objs)} objects to {output}", highlight=False)


def _on_cluster(values: Optional[Path], kubeconfig: Optional[Path], context: Optional[str], say) -> tuple:
    """The values (said wrong before the cluster is asked anything) with the API server's addresses the cluster
    gives when they name none, and the cluster's client."""
    from mlyard.tasks import cluster

    given = values_of(values)
    dyn = cluster.dynamic_client(str(kubeconfig) if kubeconfig else None, context)
    vals, read = cluster.with_api_server(given, dyn)
    if read:
        say(read)
    return vals, dyn


@app.command("diff")
def diff(values: Optional[Path] = VALUES,
         kubeconfig: Optional[Path] = typer.Option(None, "--kubeconfig", help="Default: KUBECONFIG, ~/.kube/config."),
         context: Optional[str] = typer.Option(None, "--context", help="kubeconfig context."),
         as_json: bool = JSON) -> None:
    """What `mlyard k8s apply` of these values would do, without doing it: each object applied as a server-side
    dry run and compared with the cluster's (created, changed and which fields, replaced, unchanged)."""
    from mlyard.tasks import cluster
    from mlyard.tasks.cluster_diff import diff as diffed

    def go() -> list[dict]:
        vals, dyn = _on_cluster(values, kubeconfig, context, lambda line: None)
        return [d.__dict__ for d in diffed(cluster.render(vals), dyn)]

    rows = guard(go)
    if as_json:
        emit(rows, True)
        return
    emit([{**r, "fields": ", ".join(r["fields"])} for r in rows if r["outcome"] != "unchanged"], False,
         ["kind", "name", "outcome", "fields"], empty="nothing would change")
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("created", "changed", "replaced", "unchanged")}
    out.print(", ".join(f"{n} {k}" for k, n in counts.items()), highlight=False)


@app.command("apply")
def apply(values: Optional[Path] = VALUES,
          kubeconfig: Optional[Path] = typer.Option(None, "--kubeconfig", help="Default: KUBECONFIG, ~/.kube/config, "
                                                    "or the pod's own account inside a cluster."),
          context: Optional[str] = typer.Option(None, "--context", help="kubeconfig context."),
          prefect_api_url: Optional[str] = typer.Option(
              None, "--prefect-api-url", help="The installed Prefect server's API (e.g. through `kubectl -n mlyard "
              "port-forward svc/prefect-server 4200`: http://127.0.0.1:4200/api): then also register the gpu and "
              "cpu pools, their deployments and the crash automation there (auth: PREFECT_API_AUTH_STRING)."),
          wait_seconds: float = typer.Option(600, "--wait-seconds", min=1, help="How long to wait for the "
                                             "migration Job (the databases' schemas), and then for the rollouts, "
                                             "before giving up."),
          wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the Deployments it created or changed "
                                    "to roll out (every replica updated and available), as `kubectl rollout "
                                    "status` does."),
          prune: bool = typer.Option(False, "--prune", help="Also delete what an earlier apply made that these values "
                                     "no longer render (listed in the ConfigMap mlyard-install)."),
          as_json: bool = JSON) -> None:
    """Apply the install with server-side apply (field manager `mlyard`); a second apply changes nothing.
    The Secrets it names must exist first (infra/README.md lists their keys). A Job per image checks that each
    carries this mlyard's release; one that does not (or cannot be pulled) stops the apply, naming it. The migration Job runs (again
    when the image changed) and is waited for before the Deployments; what it did is printed. With
    --prefect-api-url, register the pools, deployments and crash automation on that Prefect too. A replica count
    another manager set (an HPA, `kubectl scale`) is left as it is, and said. Then it waits for the rollouts:
    exit 2 if one has not finished within --wait-seconds, naming it and what its pods wait for."""
    from mlyard.core.errors import StackError
    from mlyard.tasks import cluster, cluster_release
    from mlyard.tasks.cluster_apply import apply as applied
    from mlyard.tasks.cluster_apply import delete as deleted
    from mlyard.tasks.cluster_apply import inventory, left_over, record, ref_of, rollouts, wait_for_job

    late: list[str] = []

    def go() -> list[dict]:
        vals, dyn = _on_cluster(values, kubeconfig, context,
                                lambda line: None if as_json else out.print(line, highlight=False))
        objs = cluster.render(vals)
        namespaces = [o for o in objs if o["kind"] == "Namespace"]
        done = [a.__dict__ for a in applied(namespaces, dyn)]
        problems = cluster.secret_problems(objs, dyn, vals.namespace, vals.secrets.settings)
        if problems:
            raise StackError(f"namespace {vals.namespace} lacks what the pods need: {'; '.join(problems)}: create "
                             "them first (infra/README.md lists their keys); nothing else was applied")
        # every image's release first (nothing else moves if one is another release's), then the schemas (the
        # migration Job, after the databases' own objects), then the Deployments that use them: a failed
        # migration leaves the running release as it was
        checks, rows, released = cluster_release.checked(objs, dyn, vals.namespace, wait_seconds)
        done += rows
        if not as_json:
            out.print(released, highlight=False)
        rest = [o for o in objs if o["kind"] != "Namespace" and o not in checks]
        if vals.monitoring.enabled:  # the ServiceMonitors' scrape-only credential, derived from the internal one
            from mlyard.tasks.cluster_monitoring import metrics_secret

            rest.insert(0, metrics_secret(dyn, vals))
        done += [a.__dict__ for a in applied([o for o in rest if o["kind"] != "Deployment"], dyn)]
        if any(o["kind"] == "Job" and o["metadata"]["name"] == cluster.MIGRATION_JOB for o in rest):
            ok, log = wait_for_job(dyn, vals.namespace, cluster.MIGRATION_JOB, wait_seconds)
            said = [line for line in log.splitlines() if line.startswith(("catalog:", "mlflow:", "prefect:"))]
            if not ok:
                raise StackError(f"the migration Job failed ({(log.strip().splitlines() or ['no log'])[-1]}): the "
                                 f"Deployments were left as they were; kubectl -n {vals.namespace} logs job/"
                                 f"{cluster.MIGRATION_JOB}")
            next(r for r in done if r["name"] == cluster.MIGRATION_JOB)["said"] = said
            if not as_json:
                for line in said:
                    out.print(f"migrations: {line}", highlight=False)
        done += [a.__dict__ for a in applied([o for o in rest if o["kind"] == "Deployment"], dyn)]
        stale = left_over(namespaces + checks + rest, inventory(dyn, vals.namespace))
        if prune:
            done += [a.__dict__ for a in deleted(dyn, stale)]
        elif stale and not as_json:
            out.print(f"{len(stale)} object(s) an earlier apply made are no longer in the values' install: "
                      f"{', '.join(r['kind'] + ' ' + r['name'] for r in stale)}; `--prune` deletes them", highlight=False)
        record(dyn, vals.namespace, [ref_of(o) for o in namespaces + checks + rest] + ([] if prune else stale))
        if prefect_api_url:
            from mlyard.prefect_cluster import register_on_cluster

            register_on_cluster(prefect_api_url, vals,
                                echo=lambda line: None if as_json else out.print(line, highlight=False))
        moved = {r["name"]: r for r in done if r["kind"] == "Deployment" and r["outcome"] in ("created", "changed")}
        if wait and moved:
            late.extend(rollouts(dyn, vals.namespace, list(moved), wait_seconds,
                                 lambda name, how: moved[name].update(rolled_out=how)))
        return done

    rows = guard(go)
    if as_json:
        emit(rows, True)
    else:
        emit([{**r, "fields": ", ".join(r.get("fields") or []), "rolled out": r.get("rolled_out", "")} for r in rows],
             False, ["kind", "name", "outcome", "fields", "rolled out"])
        for row in rows:
            for kept in row.get("kept") or []:
                out.print(f"{row['kind']} {row['name']}: kept {kept}", highlight=False)
        counts = {k: sum(r["outcome"] == k for r in rows) for k in ("created", "changed", "replaced", "unchanged", "pruned")}
        out.print(", ".join(f"{n} {k}" for k, n in counts.items() if n or k != "pruned"), highlight=False)
    if late:
        print(f"error: applied, but not rolled out within {wait_seconds:.0f} s: {'; '.join(late)} (kubectl -n "
              f"{values_of(values).namespace} rollout status deployment/NAME)", file=sys.stderr)
        raise typer.Exit(2)


@app.command("uninstall")
def uninstall(values: Optional[Path] = VALUES,
              kubeconfig: Optional[Path] = typer.Option(None, "--kubeconfig", help="Default: KUBECONFIG, ~/.kube/config."),
              context: Optional[str] = typer.Option(None, "--context", help="kubeconfig context."),
              delete_data: bool = typer.Option(False, "--delete-data", help="Delete the namespace too: its Secrets, "
                                               "volume claims, notebooks and endpoints. Without it they stay."),
              yes: bool = typer.Option(False, "--yes", help="Do not ask first."),
              as_json: bool = JSON) -> None:
    """Remove the install: everything `mlyard k8s apply` made (its ConfigMap mlyard-install lists it), the
    cluster-scoped Kueue objects and every project's ClusterQueue among them. The namespace's Secrets, volume
    claims, notebooks and endpoints stay unless --delete-data; back up first (`mlyard k8s backup`)."""
    from mlyard.core.errors import StackError
    from mlyard.tasks import cluster
    from mlyard.tasks.cluster_apply import INVENTORY, delete, inventory, left_in, project_cluster_queues

    kept: dict[str, int] = {}

    def go() -> list[dict]:
        vals = values_of(values)
        dyn = cluster.dynamic_client(str(kubeconfig) if kubeconfig else None, context)
        refs = inventory(dyn, vals.namespace)
        if not refs:
            raise StackError(f"namespace {vals.namespace} holds no mlyard install (no ConfigMap {INVENTORY}): "
                             "nothing was deleted")
        if not yes and not sys.stdin.isatty():
            raise StackError("removing the install asks first; add --yes where no one can answer: nothing was deleted")
        what = f"namespace {vals.namespace} as well, with its data" if delete_data else "its data kept"
        if not yes and not typer.confirm(f"Remove mlyard's {len(refs)} objects from the cluster ({what})?"):
            raise StackError("not confirmed: nothing was deleted")
        made = [r for r in refs if r["kind"] != "Namespace"]
        inv = {"apiVersion": "v1", "kind": "ConfigMap", "namespace": vals.namespace, "name": INVENTORY}
        done = [a.__dict__ for a in delete(dyn, made + project_cluster_queues(dyn) + [inv], "deleted")]
        if delete_data:
            done += [a.__dict__ for a in delete(dyn, [r for r in refs if r["kind"] == "Namespace"], "deleted")]
        else:
            kept.update(left_in(dyn, vals.namespace))
        return done

    rows = guard(go)
    emit(rows, as_json, None if as_json else ["kind", "name", "outcome"])
    if kept and not as_json:
        out.print(f"kept in namespace {values_of(values).namespace}: "
                  f"{', '.join(f'{n} {kind}' + ('s' if n != 1 else '') for kind, n in kept.items())} (data, and what flows made there: "
                  "endpoint stages, notebooks, runs); --delete-data deletes the namespace with them", highlight=False)


URI_HELP = "The backup's prefix of the platform's object storage (s3://BUCKET/backups/NAME): private, as it holds Secrets."


def _backup_or_restore(action: str, values: Optional[Path], uri: str, kubeconfig: Optional[Path], context: Optional[str],
                       wait_seconds: float, as_json: bool) -> None:
    from mlyard.tasks import cluster
    from mlyard.tasks.cluster_backup import run

    echo = (lambda line: None) if as_json else (lambda line: out.print(line, highlight=False))
    manifest = guard(lambda: run(values_of(values), cluster.dynamic_client(str(kubeconfig) if kubeconfig else None,
                                                                           context), action, uri, wait_seconds, echo))
    if as_json:
        emit(manifest, True)
        return
    counted = manifest.get("restored_inventory") or manifest["inventory"]
    for store, tables in counted.items():
        out.print(f"{store}: " + ", ".join(f"{n} {t}" for t, n in tables.items() if n), highlight=False)
    if action == "restore":
        out.print(f"restored the backup of {manifest['taken_at']}: now `mlyard k8s apply -f VALUES` starts the platform",
                  highlight=False)


@app.command("backup")
def backup(to: str = typer.Option(..., "--to", help=URI_HELP), values: Optional[Path] = VALUES,
           kubeconfig: Optional[Path] = typer.Option(None, "--kubeconfig", help="Default: KUBECONFIG, ~/.kube/config."),
           context: Optional[str] = typer.Option(None, "--context", help="kubeconfig context."),
           wait_seconds: float = typer.Option(3600, "--wait-seconds", min=1, help="How long to wait for the Job."),
           as_json: bool = JSON) -> None:
    """Back up the installed platform while it runs, by a Job in its namespace: each database its Secrets name
    (pg_dump), the projects', uploads' and MLflow's storage, the Secrets mlyard made, and the volume claims' list;
    the inventory counted in the dumps' snapshot (tasks/cluster_backup.py says what the prefix holds)."""
    _backup_or_restore("backup", values, to.rstrip("/"), kubeconfig, context, wait_seconds, as_json)


@app.command("restore")
def restore(source: str = typer.Option(..., "--from", help="A prefix `mlyard k8s backup` wrote."),
            values: Optional[Path] = VALUES,
            kubeconfig: Optional[Path] = typer.Option(None, "--kubeconfig", help="Default: KUBECONFIG, ~/.kube/config."),
            context: Optional[str] = typer.Option(None, "--context", help="kubeconfig context."),
            wait_seconds: float = typer.Option(3600, "--wait-seconds", min=1, help="How long to wait for the Job."),
            yes: bool = typer.Option(False, "--yes", help="Do not ask first."),
            as_json: bool = JSON) -> None:
    """Put a backup back: the platform's Deployments scaled to none, then a Job restores each database
    (pg_restore --clean: what is there now is replaced), copies the storage back and makes the Secrets again.
    `mlyard k8s apply` then starts the platform; volume claims' data comes from their snapshots."""
    from mlyard.cli.common import say_error

    if not yes and (not sys.stdin.isatty() or not typer.confirm(
            "Replace the platform's databases, storage and Secrets with the backup's (the platform stops)?")):
        say_error("error: a restore replaces the platform's data and asks first; add --yes where no one can answer: "
                  "nothing was changed")
        raise typer.Exit(2)
    _backup_or_restore("restore", values, source.rstrip("/"), kubeconfig, context, wait_seconds, as_json)
