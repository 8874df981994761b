"""What a network plugin that enforces NetworkPolicies decides (none runs here: the control plane's API server
validates the policies, and this answers whether a connection passes them), as the Kubernetes API defines it
(networking.k8s.io/v1): a pod that some policy selects for Egress sends only what one of those policies'
egress rules allows, and a pod selected for Ingress takes only what one of its ingress rules allows; a pod no
policy selects for a direction is open in it. A rule's peers are pods (podSelector, in the policy's namespace
unless a namespaceSelector says which), namespaces, or ipBlocks (a CIDR less its exceptions, matched against
any address, a pod's too, as Calico and most plugins match it); its ports are numbers or a container port's
name, TCP unless it says. Traffic between a pod and its own node (kubelet's probes) is always allowed, as the
API says, and is not asked here."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


@dataclass
class Pod:
    name: str
    namespace: str
    labels: dict[str, str]
    ip: str
    ports: dict[str, int] = field(default_factory=dict)  # its containers' named ports


@dataclass
class Network:
    policies: list[dict]  # NetworkPolicy objects, each with metadata.namespace
    namespaces: dict[str, dict[str, str]]  # name -> labels (kubernetes.io/metadata.name is added)

    def allows(self, source: Pod, to: Pod | str, port: int | str, protocol: str = "TCP") -> bool:
        """Whether `source` reaches `to` (a pod, or an address outside the cluster's pods) on `port`."""
        ip = to.ip if isinstance(to, Pod) else to
        out = self._of(source, "Egress")
        if out and not any(self._rule(rule.get("to"), rule.get("ports"), policy, ip, to, port, protocol)
                           for policy in out for rule in policy["spec"].get("egress") or []):
            return False
        if isinstance(to, Pod):
            into = self._of(to, "Ingress")
            if into and not any(self._rule(rule.get("from"), rule.get("ports"), policy, source.ip, source, port, protocol,
                                           to) for policy in into for rule in policy["spec"].get("ingress") or []):
                return False
        return True

    def _of(self, pod: Pod, direction: str) -> list[dict]:
        """The policies of the pod's namespace that select it for `direction` (policyTypes as the API defaults it)."""
        found = []
        for policy in self.policies:
            spec = policy["spec"]
            types = spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))
            if policy["metadata"]["namespace"] == pod.namespace and direction in types and \
                    selects(spec.get("podSelector") or {}, pod.labels):
                found.append(policy)
        return found

    def _rule(self, peers, ports, policy: dict, ip: str, pod: Pod | str, port: int | str, protocol: str,
              target: Pod | None = None) -> bool:
        """A rule's peers and ports match (`target`: the pod whose named ports an ingress rule names)."""
        named = (target or pod).ports if isinstance(target or pod, Pod) else {}
        number = named.get(port, port) if isinstance(port, str) else port
        if ports and not any(p.get("protocol", "TCP") == protocol and (
                "port" not in p or named.get(p["port"], p["port"]) == number) for p in ports):
            return False
        return not peers or any(self._peer(peer, policy, ip, pod) for peer in peers)

    def _peer(self, peer: dict, policy: dict, ip: str, pod: Pod | str) -> bool:
        if "ipBlock" in peer:
            block = peer["ipBlock"]
            address = ipaddress.ip_address(ip)
            inside = lambda cidr: address.version == ipaddress.ip_network(cidr).version and \
                address in ipaddress.ip_network(cidr)  # noqa: E731
            return inside(block["cidr"]) and not any(inside(c) for c in block.get("except") or [])
        if not isinstance(pod, Pod):
            return False
        if "namespaceSelector" in peer:
            labels = {**self.namespaces.get(pod.namespace, {}), "kubernetes.io/metadata.name": pod.namespace}
            if not selects(peer["namespaceSelector"], labels):
                return False
        elif pod.namespace != policy["metadata"]["namespace"]:
            return False
        return selects(peer.get("podSelector") or {}, pod.labels)


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions) matches `labels`; the empty one matches all."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        has, value = e["key"] in labels, labels.get(e["key"])
        if not {"In": has and value in e.get("values", []), "NotIn": not has or value not in e.get("values", []),
                "Exists": has, "DoesNotExist": not has}[e["operator"]]:
            return False
    return True
