"""One leader among replicas, through a Kubernetes Lease (`coordination.k8s.io/v1`): on a cluster
(infra/k8s) a control loop runs only in the replica that holds its Lease, so that exactly one writes, and
another takes over within 30 s of the holder's death. The scheduler's replicas (Lease mlyard-scheduler:
schedules, promotions, housekeeping) wait to lead and end when they lose it (`wait_to_lead`); the API's
replicas (Lease mlyard-api) answer all the same and run only their crash follower while leading
(`while_leading`).

kubernetes_asyncio's own LeaderElection and LeaseLock do the election (the `kubernetes` client of this
version has no Lease lock), on a loop in a thread of their own: a candidate holds the Lease for
LEASE_SECONDS and renews it every RETRY_SECONDS; a follower takes an expired Lease over. A holder that
cannot renew within RENEW_SECONDS has lost it: `Leadership.lost` is set and the process should end
(the Deployment starts it again, as a follower).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Callable

from mlyard.core.environment import pod_name

LEASE_SECONDS = 15
RENEW_SECONDS = 10
RETRY_SECONDS = 2

log = logging.getLogger("mlyard.leader")


class Leadership:
    """The election for `lease` in `namespace`, run in a background thread once `start` is called."""

    def __init__(self, lease: str, namespace: str, identity: str | None = None, kubeconfig: str | None = None) -> None:
        self.lease, self.namespace, self.kubeconfig = lease, namespace, kubeconfig
        self.identity = identity or pod_name() or f"{socket.gethostname()}-{os.getpid()}"
        self.leading = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlyard-leader-election", daemon=True)

    def start(self) -> "Leadership":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._elect())
        except Exception:  # noqa: BLE001 - an election that cannot run is a lost one
            log.exception("the leader election of Lease %s/%s failed", self.namespace, self.lease)
        self.leading.clear()
        self.lost.set()

    async def _elect(self) -> None:
        from kubernetes_asyncio import client, config
        from kubernetes_asyncio.config.config_exception import ConfigException
        from kubernetes_asyncio.leaderelection import electionconfig, leaderelection
        from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            await config.load_kube_config(config_file=self.kubeconfig, client_configuration=configuration)
        async with client.ApiClient(configuration) as api:
            lock = LeaseLock(self.lease, self.namespace, self.identity, api)

            async def started() -> None:
                log.info("%s holds Lease %s/%s: leading", self.identity, self.namespace, self.lease)
                self.leading.set()

            async def stopped() -> None:
                log.warning("%s lost Lease %s/%s", self.identity, self.namespace, self.lease)
                self.leading.clear()
                self.lost.set()

            election = leaderelection.LeaderElection(electionconfig.Config(
                lock, lease_duration=LEASE_SECONDS, renew_deadline=RENEW_SECONDS, retry_period=RETRY_SECONDS,
                onstarted_leading=started, onstopped_leading=stopped))
            log.info("%s waits for Lease %s/%s", self.identity, self.namespace, self.lease)
            await election.run()


def wait_to_lead(lease: str, namespace: str, stop: threading.Event, alive: Path | None = None) -> Leadership:
    """Wait until this process holds `lease` (touching `alive` every second: a follower is alive too),
    or until `stop` is set; from then on, losing the Lease sets `stop`. SystemExit if the election
    itself ends without a lead."""
    leadership = Leadership(lease, namespace).start()
    while not leadership.leading.wait(1.0) and not stop.is_set():
        if alive is not None:
            alive.touch()
        if leadership.lost.is_set():
            raise SystemExit(f"the election for Lease {namespace}/{lease} ended; see the log above")

    def stop_when_lost() -> None:
        leadership.lost.wait()
        stop.set()

    threading.Thread(target=stop_when_lost, name="mlyard-lease-watch", daemon=True).start()
    return leadership


def while_leading(lease: str, namespace: str, work: Callable[[threading.Event], object],
                  stop: threading.Event | None = None) -> None:
    """Run `work(lost)` whenever this process holds `lease`, and elect again once it has lost it: for ever
    (a daemon thread's target) or until `stop` is set. `work` must return soon after `lost` is set: a holder
    that could not renew for RENEW_SECONDS has lost it, LEASE_SECONDS - RENEW_SECONDS before another replica
    may take it over, and that is the time it has to stop writing. An election that cannot run (the API
    unreachable, no Role) is tried again every LEASE_SECONDS."""
    stop = stop or threading.Event()
    while not stop.is_set():
        leadership = Leadership(lease, namespace).start()
        while not leadership.leading.wait(1.0) and not leadership.lost.is_set() and not stop.is_set():
            pass
        while leadership.leading.is_set() and not stop.is_set():
            try:
                work(leadership.lost)
            except Exception:  # noqa: BLE001 - the loop's own failure: logged, and run again while leading
                log.exception("the control loop under Lease %s/%s failed", namespace, lease)
            leadership.lost.wait(RETRY_SECONDS)
        stop.wait(LEASE_SECONDS)
