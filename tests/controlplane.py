"""Kubernetes' own control plane for the cluster tests: etcd (Debian's etcd-server), kube-apiserver,
kube-controller-manager and kube-scheduler (built by tests/controlplane/build.sh), started on free ports of
127.0.0.1 (etcd on Unix sockets in the control plane's 0700 folder) with certificates made here, as
controller-runtime's envtest starts one. The API server runs
its default admission chain (PodSecurity, ServiceAccount, ResourceQuota, LimitRanger, the webhooks) with
NodeRestriction, authorizes with `Node,RBAC`, and signs service-account tokens with its own key; the
controller-manager runs every default controller, each with its own service account's credentials.

What no process here can be is a node's kubelet: tests/kubelet_node.py plays one (registers a Node with the
capacity a test names, renews its Lease, runs the pods the scheduler binds to it as local processes).

`python tests/controlplane.py DIR` starts one and prints its admin kubeconfig, until Ctrl-C."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "controlplane"
SERVICE_RANGE = "10.96.0.0/16"
ISSUER = "https://kubernetes.default.svc.cluster.local"


def binaries_missing(bin_dir: Path = BIN) -> list[str]:
    """What the control plane needs that this machine lacks (the Makefile's `controlplane` target makes it)."""
    wanted = {name: bin_dir / name for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")}
    missing = [name for name, path in wanted.items() if not os.access(path, os.X_OK)]
    return missing + ([] if shutil.which("etcd") else ["etcd (Debian's etcd-server)"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- certificates -----------------------------------------------------------------------------------------


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(key, subject: dict[str, str], issuer_key=None, issuer=None, ca: bool = False,
          hosts: tuple[str, ...] = (), client: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    oids = {"CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME}
    name = x509.Name([x509.NameAttribute(oids[k], v) for k, v in subject.items()])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if hosts:
        sans = [x509.IPAddress(ipaddress.ip_address(h)) if h[0].isdigit() else x509.DNSName(h) for h in hosts]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _pem_cert(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@dataclass
class ControlPlane:
    """A running control plane: its API's URL, its CA, and a kubeconfig per identity made so far."""

    home: Path
    url: str
    ca: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _ca_key: object = None
    _ca_cert: object = None

    def client_cert(self, name: str, groups: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """A client certificate and its key for user `name` in `groups` (CN and O, as the API reads them)."""
        key = _key()
        subject = {"CN": name, **({"O": groups[0]} if groups else {})}
        cert = _cert(key, subject, self._ca_key, self._ca_cert, client=True)
        stem = name.replace(":", "-")
        return (_write(self.home / f"{stem}.crt", _pem_cert(cert)), _write(self.home / f"{stem}.key", _pem_key(key)))

    def server_cert(self, name: str, hosts: tuple[str, ...]) -> tuple[Path, Path]:
        """A serving certificate and its key, signed by this cluster's CA, for `hosts` (a kubelet's, say)."""
        key = _key()
        cert = _cert(key, {"CN": name}, self._ca_key, self._ca_cert, hosts=hosts)
        stem = name.replace(":", "-")
        return (_write(self.home / f"{stem}-serving.crt", _pem_cert(cert)),
                _write(self.home / f"{stem}-serving.key", _pem_key(key)))

    def kubeconfig(self, name: str = "admin", groups: tuple[str, ...] = ("system:masters",),
                   namespace: str = "default", path: Path | None = None) -> Path:
        """A kubeconfig of user `name` (the cluster's admin by default) reaching this API."""
        import yaml

        cert, key = self.client_cert(name, groups)
        doc = {"apiVersion": "v1", "kind": "Config", "current-context": "test",
               "clusters": [{"name": "test", "cluster": {"server": self.url, "certificate-authority": str(self.ca)}}],
               "users": [{"name": name, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
               "contexts": [{"name": "test", "context": {"cluster": "test", "user": name, "namespace": namespace}}]}
        target = path or self.home / f"{name.replace(':', '-')}.kubeconfig"
        return _write(target, yaml.safe_dump(doc).encode())

    def ssl_context(self, name: str = "admin", groups: tuple[str, ...] = ("system:masters",)) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(*self.client_cert(name, groups))
        return context

    def api_client(self):
        """The `kubernetes` package's client as the cluster's admin (what mlyard's code is handed)."""
        import kubernetes.client

        config = kubernetes.client.Configuration()
        config.host = self.url
        config.ssl_ca_cert = str(self.ca)
        config.cert_file, config.key_file = (str(f) for f in self.client_cert("admin", ("system:masters",)))
        return kubernetes.client.ApiClient(config)

    def alive(self) -> dict[str, int | None]:
        return {name: proc.poll() for name, proc in self.procs.items()}

    def close(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(list(self.procs.values())):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _spawn(cp: ControlPlane, name: str, argv: list[str]) -> None:
    log = open(cp.home / f"{name}.log", "ab")  # noqa: SIM115 - the process keeps it
    cp.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      cwd=cp.home, start_new_session=True)
    log.close()


def _wait_ready(cp: ControlPlane, path: str, timeout: float) -> None:
    context = cp.ssl_context()
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        dead = {n: rc for n, rc in cp.alive().items() if rc is not None}
        if dead:
            name = next(iter(dead))
            tail = (cp.home / f"{name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} exited ({dead[name]}) while the control plane started:\n{tail}")
        try:
            with urllib.request.urlopen(cp.url + path, context=context, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"the control plane was not ready ({path}) within {timeout:.0f} s: {last}")


def start(home: Path, bin_dir: Path = BIN, timeout: float = 90.0) -> ControlPlane:
    """etcd, the API server, the controller-manager and the scheduler, in `home` (certificates, data, logs)."""
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    ca_key = _key()
    ca_cert = _cert(ca_key, {"CN": "mlyard-test-ca"}, ca=True)
    ca = _write(home / "ca.crt", _pem_cert(ca_cert))
    ca_key_file = _write(home / "ca.key", _pem_key(ca_key))
    port = free_port()
    cp = ControlPlane(home, f"https://127.0.0.1:{port}", ca, _ca_key=ca_key, _ca_cert=ca_cert)
    serving_key = _key()
    serving = _cert(serving_key, {"CN": "kube-apiserver"}, ca_key, ca_cert,
                    hosts=("127.0.0.1", "10.96.0.1", "localhost", "kubernetes", "kubernetes.default",
                           "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"))
    serving_crt, serving_key_file = _write(home / "apiserver.crt", _pem_cert(serving)), _write(home / "apiserver.key", _pem_key(serving_key))
    sa_key = _write(home / "sa.key", _pem_key(_key()))
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    sa_pub = _write(home / "sa.pub", load_pem_private_key(sa_key.read_bytes(), None).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    kubelet_client = cp.client_cert("kube-apiserver-kubelet-client", ("kubeadm:cluster-admins",))
    # etcd on Unix sockets in the 0700 home (etcd's form host:port names a file in its working directory,
    # the home): no port on 127.0.0.1 where another user could read or write the cluster's state unasked
    client, peer = "unix://etcd-client:0", "unix://etcd-peer:0"
    try:
        _spawn(cp, "etcd", ["etcd", "--name", "test", "--data-dir", str(home / "etcd"),
                            "--listen-client-urls", client, "--advertise-client-urls", client,
                            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                            "--initial-cluster", f"test={peer}", "--log-level", "warn", "--logger", "zap"])
        _spawn(cp, "kube-apiserver", [
            str(bin_dir / "kube-apiserver"), f"--etcd-servers={client}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
            f"--tls-cert-file={serving_crt}", f"--tls-private-key-file={serving_key_file}", f"--client-ca-file={ca}",
            f"--service-account-key-file={sa_pub}", f"--service-account-signing-key-file={sa_key}",
            f"--service-account-issuer={ISSUER}", f"--api-audiences={ISSUER}",
            f"--service-cluster-ip-range={SERVICE_RANGE}", "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction", "--allow-privileged=false", "--profiling=false",
            "--enable-priority-and-fairness=false", "--event-ttl=10m", "-v=1",
            # webhooks called at their Service's endpoint (a pod's address), not at a cluster IP no proxy serves here
            "--enable-aggregator-routing=true",
            # pods' logs: from the node's kubelet (tests/kubelet_node.py), as the API server asks one
            f"--kubelet-client-certificate={kubelet_client[0]}", f"--kubelet-client-key={kubelet_client[1]}",
            "--kubelet-preferred-address-types=InternalIP"])
        _wait_ready(cp, "/readyz", timeout)
        for name in ("kube-controller-manager", "kube-scheduler"):
            config = cp.kubeconfig(f"system:{name}", groups=())
            extra = ([f"--service-account-private-key-file={sa_key}", f"--root-ca-file={ca}",
                      "--use-service-account-credentials=true", f"--cluster-signing-cert-file={ca}",
                      f"--cluster-signing-key-file={ca_key_file}", f"--service-cluster-ip-range={SERVICE_RANGE}"]
                     if name == "kube-controller-manager" else [])
            _spawn(cp, name, [str(bin_dir / name), f"--kubeconfig={config}", f"--authentication-kubeconfig={config}",
                              f"--authorization-kubeconfig={config}", "--leader-elect=false",
                              "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "-v=1", *extra])
        _wait_ready(cp, "/api/v1/namespaces/default/serviceaccounts/default", timeout)  # the controllers work
    except BaseException:
        cp.close()
        raise
    return cp


def install_crd(api, crd: dict, timeout: float = 60) -> None:
    """A CustomResourceDefinition applied (server-side, as `kubectl apply --server-side`) through `api` (a
    kubelet_node.ClusterApi as the cluster's admin), once the API server serves it (Established)."""
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"
    code, doc = api.request("PATCH", path + "?fieldManager=mlyard-tests&force=true", crd, "application/apply-patch+yaml")
    assert code in (200, 201), f"applying CRD {crd['metadata']['name']}: {code} {(doc or {}).get('message')}"
    deadline = time.monotonic() + timeout
    while not any(c["type"] == "Established" and c["status"] == "True"
                  for c in (doc.get("status") or {}).get("conditions") or []):
        assert time.monotonic() < deadline, f"CRD {crd['metadata']['name']} not established"
        time.sleep(0.2)
        code, doc = api.request("GET", path)


if __name__ == "__main__":
    import sys
    import tempfile

    plane = start(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="mlyard-cp-")))
    print(plane.kubeconfig())
    try:
        signal.pause()
    finally:
        plane.close()
