"""The `baseline` and `restricted` levels of the Pod Security Standards
(kubernetes.io/docs/concepts/security/pod-security-standards, version `latest`), checked on a pod spec as
the API server's PodSecurity plugin checks it, with its messages: the tests hold every pod spec mlyard
renders to them without a cluster (tests/infra/test_pod_security.py checks the rules on the documentation's
cases, and the same pods admitted by Kubernetes' own API server)."""

from __future__ import annotations

from typing import Iterator

LEVELS = ("privileged", "baseline", "restricted")
ENFORCE = "pod-security.kubernetes.io/enforce"
# the capabilities a container runtime grants by default: baseline lets a container add these and no others
DEFAULT_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                        "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                      "secret"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
VOLUME_SOURCES = RESTRICTED_VOLUMES | {
    "hostPath", "gcePersistentDisk", "awsElasticBlockStore", "gitRepo", "nfs", "iscsi", "glusterfs", "rbd", "flexVolume",
    "cinder", "cephfs", "flocker", "fc", "azureFile", "vsphereVolume", "quobyte", "azureDisk", "portworxVolume",
    "photonPersistentDisk", "scaleIO", "storageos", "image"}


def containers(spec: dict) -> Iterator[dict]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(key) or []


def _names(items: list[str]) -> str:
    quoted = ", ".join(f'"{n}"' for n in items)
    return f"container {quoted}" if len(items) == 1 else f"containers {quoted}"


def violations(spec: dict, level: str) -> list[str]:
    """What `spec` (a PodSpec) breaks at `level`, each as the API server words it; empty if it is allowed."""
    if level == "privileged":
        return []
    found = _baseline(spec)
    if level == "restricted":
        found += _restricted(spec)
    return found


def _baseline(spec: dict) -> list[str]:
    found: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    host = [f"{k}=true" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    if host:
        found.append(f"host namespaces ({', '.join(host)})")
    privileged = [c["name"] for c in containers(spec) if (c.get("securityContext") or {}).get("privileged")]
    if privileged:
        found.append(f"privileged ({_names(privileged)} must not set securityContext.privileged=true)")
    added = {c["name"]: [a for a in ((c.get("securityContext") or {}).get("capabilities") or {}).get("add") or []
                         if a not in DEFAULT_CAPABILITIES] for c in containers(spec)}
    if any(added.values()):
        caps = sorted({a for v in added.values() for a in v})
        found.append(f"non-default capabilities ({_names([n for n, v in added.items() if v])} must not include "
                     f"{', '.join(repr(c).replace(chr(39), chr(34)) for c in caps)} in securityContext.capabilities.add)")
    host_path = [v["name"] for v in spec.get("volumes") or [] if "hostPath" in v]
    if host_path:
        found.append(f"hostPath volumes ({'volume' if len(host_path) == 1 else 'volumes'} "
                     f"{', '.join(repr(n).replace(chr(39), chr(34)) for n in host_path)})")
    ports = [c["name"] for c in containers(spec) if any(p.get("hostPort") for p in c.get("ports") or [])]
    if ports:
        found.append(f"hostPort ({_names(ports)} uses hostPort)")
    profiles = [("pod", pod_sc)] + [(c["name"], c.get("securityContext") or {}) for c in containers(spec)]
    if any(((sc.get("appArmorProfile") or {}).get("type")) == "Unconfined" for _, sc in profiles):
        found.append("forbidden AppArmor profile (appArmorProfile.type=\"Unconfined\")")
    for who, sc in profiles:
        se = sc.get("seLinuxOptions") or {}
        if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
            found.append(f"seLinuxOptions ({who} set forbidden securityContext.seLinuxOptions)")
    proc = [c["name"] for c in containers(spec) if (c.get("securityContext") or {}).get("procMount", "Default")
            != "Default"]
    if proc:
        found.append(f"procMount ({_names(proc)} must not set securityContext.procMount)")
    if any((sc.get("seccompProfile") or {}).get("type") == "Unconfined" for _, sc in profiles):
        found.append("seccompProfile (securityContext.seccompProfile.type must not be \"Unconfined\")")
    unsafe = [s["name"] for s in pod_sc.get("sysctls") or [] if s.get("name") not in SAFE_SYSCTLS]
    if unsafe:
        found.append(f"forbidden sysctls ({', '.join(unsafe)})")
    return found


def _restricted(spec: dict) -> list[str]:
    found: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    bad_volumes = {v["name"]: next((k for k in v if k in VOLUME_SOURCES), "unknown")
                   for v in spec.get("volumes") or []}
    bad_volumes = {n: t for n, t in bad_volumes.items() if t not in RESTRICTED_VOLUMES}
    if bad_volumes:
        found.append("restricted volume types (" + ", ".join(f'volume "{n}" uses restricted volume type "{t}"'
                                                              for n, t in bad_volumes.items()) + ")")
    escalation = [c["name"] for c in containers(spec)
                  if (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is not False]
    if escalation:
        found.append(f"allowPrivilegeEscalation != false ({_names(escalation)} must set "
                     "securityContext.allowPrivilegeEscalation=false)")
    caps = [c["name"] for c in containers(spec)
            if "ALL" not in (((c.get("securityContext") or {}).get("capabilities") or {}).get("drop") or [])
            or set(((c.get("securityContext") or {}).get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}]
    if caps:
        found.append(f"unrestricted capabilities ({_names(caps)} must set securityContext.capabilities.drop=[\"ALL\"]"
                     "; and may only add \"NET_BIND_SERVICE\")")
    found += _non_root(spec, pod_sc)
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    unset = [c["name"] for c in containers(spec) if (((c.get("securityContext") or {}).get("seccompProfile") or {})
                                                      .get("type") or pod_seccomp) not in ("RuntimeDefault", "Localhost")]
    if unset:
        found.append(f"seccompProfile (pod or {_names(unset)} must set securityContext.seccompProfile.type to "
                     "\"RuntimeDefault\" or \"Localhost\")")
    return found


def _non_root(spec: dict, pod_sc: dict) -> list[str]:
    found = []
    pod_non_root = pod_sc.get("runAsNonRoot")
    explicit_false = [c["name"] for c in containers(spec) if (c.get("securityContext") or {}).get("runAsNonRoot") is False]
    unset = [c["name"] for c in containers(spec) if (c.get("securityContext") or {}).get("runAsNonRoot") is None]
    if pod_non_root is False or explicit_false or (pod_non_root is None and unset):
        who = "pod" if pod_non_root is False else f"pod or {_names(explicit_false or unset)}"
        found.append(f"runAsNonRoot != true ({who} must set securityContext.runAsNonRoot=true)")
    root = [c["name"] for c in containers(spec) if (c.get("securityContext") or {}).get("runAsUser") == 0]
    if pod_sc.get("runAsUser") == 0 or root:
        found.append(f"runAsUser=0 ({'pod' if pod_sc.get('runAsUser') == 0 else _names(root)} must not set "
                     "runAsUser=0)")
    return found
