"""The gateway's autoscaling loop: each pass reads the routed replicas' metrics and applies the
stages' autoscaling rules (the decision itself is serving/autoscale.py, pure). It runs in a worker
thread of the gateway (serving/gateway.py) every `autoscale_interval` seconds, on the state the gateway
shares (serving/gateway_state.py).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

from mlyard.serving.gateway_state import Shared, Tracked
from mlyard.tasks import replicas as files

log = logging.getLogger("mlyard.gateway")


class Autoscaler:
    """The loop that applies the stages' autoscaling rules (serving/autoscale.py decides). Each pass,
    per stage resource: the metrics averaged over its routed replicas (inference_framework:
    requests_per_second, outstanding; kernel: cpu_percent, memory_mb), then the decision. Scaling up
    wants one more replica (the supervisor starts it, the gateway routes it once a probe passes);
    scaling down takes the newest replica out of routing and stops it once its requests are answered."""

    def __init__(self, shared: Shared):
        self.gw = shared
        self.events = shared.scaling  # its decisions, as /mlyard/routes shows them
        self._fired: dict[tuple[str, str, int], dict[int, float]] = {}
        self._last: dict[str, tuple[float, int, float]] = {}  # key -> (when, requests, cpu seconds)
        self._leaving: dict[str, Tracked | None] = {}  # taken out of routing, stopped once idle

    def step(self) -> None:
        from mlyard.core.specs.endpoint import AutoscalingRule
        from mlyard.serving.autoscale import decide

        home = self.gw.home
        wanted, states = files.wanted(home), files.states(home)
        by_key = {t.key: t for t in list(self.gw.replicas.values())}  # (this runs in a worker thread)
        for key, t in list(self._leaving.items()):  # stop a replica taken out once nothing is in flight on it
            if t is None or t.active == 0:
                files.unwant(home, key)
                del self._leaving[key]
        now, wall = time.monotonic(), time.time()
        groups: dict[tuple[str, str, int], list[files.Wanted]] = {}
        for w in wanted:
            if w.routed and w.key not in self._leaving:
                groups.setdefault((w.endpoint, w.stage, w.resource_id), []).append(w)
        for (endpoint, stage, rid), members in groups.items():
            info = self.gw.endpoints.get(endpoint, {}).get("stages", {}).get(stage)
            if not info or not info.get("rules") or info.get("status") != "ACTIVE":
                continue
            rules = [AutoscalingRule(**r) for r in info["rules"]]
            metrics = self._metrics(members, states, by_key, now)
            fired = self._fired.setdefault((endpoint, stage, rid), {})
            decision = decide(rules, len(members), metrics, wall, fired, info.get("max_replicas"))
            if decision.rule is None or decision.replicas == len(members):
                continue
            fired[decision.rule] = wall
            members.sort(key=lambda w: w.index)
            if decision.replicas > len(members):
                top = max(w.index for w in wanted if (w.endpoint, w.stage, w.resource_id) == (endpoint, stage, rid))
                for i in range(decision.replicas - len(members)):
                    clone = files.Wanted(**{**asdict(members[-1]), "index": top + 1 + i, "created_at": wall,
                                            "key": files.key_of(endpoint, stage, rid, top + 1 + i)})
                    files.want(home, clone)
            else:
                leaving = members[decision.replicas:]
                files.route(home, [w.key for w in leaving], False)
                self._leaving.update({w.key: by_key.get(w.key) for w in leaving})
            event = {"at": wall, "endpoint": endpoint, "stage": stage, "resource": rid, "from": len(members),
                     "to": decision.replicas, "reason": decision.reason}
            self.events.append(event)
            log.info("autoscaling %s/%s resource %s: %s", endpoint, stage, rid, decision.reason)

    def _metrics(self, members: list[files.Wanted], states: dict[str, files.State], by_key: dict[str, Tracked],
                 now: float) -> dict[str, dict[str, float]]:
        rps, outstanding, cpu, mem = [], [], [], []
        for w in members:
            t, st = by_key.get(w.key), states.get(w.key)
            if t is None or st is None:
                continue
            used = _cpu_seconds(st.pid)
            when, count, cpu_before = self._last.get(w.key, (now, t.requests, used))
            self._last[w.key] = (now, t.requests, used)
            if now > when:
                rps.append((t.requests - count) / (now - when))
                cpu.append(100.0 * (used - cpu_before) / (now - when))
            outstanding.append(t.active)
            mem.append(_rss_mb(st.pid))
        out: dict[str, dict[str, float]] = {"inference_framework": {}, "kernel": {}}
        for source, name, values in (("inference_framework", "requests_per_second", rps),
                                     ("inference_framework", "outstanding", outstanding),
                                     ("kernel", "cpu_percent", cpu), ("kernel", "memory_mb", mem)):
            if values:
                out[source][name] = sum(values) / len(values)
        return out


def _cpu_seconds(pid: int | None) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _rss_mb(pid: int | None) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0
