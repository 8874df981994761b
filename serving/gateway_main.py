"""The gateway's command line (`python -m mlyard.serving.gateway_main`, as `mlyard up` and the cluster's
manifests start it): settings, the internal credential, and the HTTP server (serving/fastserver.py)
around serving/gateway.py's app."""

from __future__ import annotations

import argparse
import logging
import sys

from mlyard.serving.gateway import Gateway
from mlyard.serving.modelfolder import HealthCheck


def main(argv: list[str] | None = None) -> None:
    from mlyard.core.errors import StackError
    from mlyard.core.settings import Settings, require_shared_stores
    from mlyard.serving import listener

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-in-flight", type=int, default=1024)
    parser.add_argument("--health-interval", type=float, default=1.0)
    parser.add_argument("--health-max-retries", type=int, default=2)
    parser.add_argument("--autoscale-interval", type=float, default=None,
                        help="Seconds between autoscaling passes (default: MLYARD_AUTOSCALE_INTERVAL, 5).")
    args = parser.parse_args(argv)
    from mlyard.tasks.processes import not_dumpable

    not_dumpable()  # it holds the internal token and the replicas' credential
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    settings = Settings()
    try:
        require_shared_stores(settings)
    except StackError as exc:
        raise SystemExit(f"mlyard gateway: {exc}") from None
    check = HealthCheck(path="/v2/health/ready", interval=args.health_interval, max_retries=args.health_max_retries,
                        max_wait_time=2.0, expected_status_code=200, initial_delay=0.0)
    from mlyard.core.connection import internal_token

    token = internal_token(settings)
    if token is None:
        raise SystemExit("mlyard gateway: no internal credential: set MLYARD_INTERNAL_TOKEN (on Kubernetes, "
                         "mlyard_internal_token in the mlyard-settings Secret) or start it with `mlyard up`")
    gw = Gateway(settings.home_dir, settings.catalog_db_url, check, max_in_flight=args.max_in_flight,
                 autoscale_seconds=args.autoscale_interval or settings.autoscale_interval,
                 internal_token=token, max_body=settings.max_request_bytes,
                 replica=settings.replica_token.get_secret_value() if settings.replica_token else None)
    # The replicas' own date and server headers are passed on.
    listener.run(gw, args.host, args.port, on_ready=lambda url: print(f"the mlyard gateway listens on {url}",
                                                                         flush=True))


if __name__ == "__main__":
    main()
