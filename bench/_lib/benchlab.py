"""A private lab for the benchmarks, and the processes the benchmarks run in its pods.

`BenchLab.build()` creates a lab under its own root (a fresh directory in /run) with one node
(or ``nodes``) named after a random prefix, adds the pods (default: the in-pod benchmark's four,
all on the first node) and waits until the agent and ztunnel agree that the mesh pods are
enrolled. `close()` stops every process the benchmark started, then
tears the lab down; it is safe to call twice and after a failed or interrupted build.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _lib.procstat import listening_ports
from inmesh.constants import LABEL_DATAPLANE_MODE
from inmesh.lab.evidence import metric_samples, workload_total
from inmesh.lab.lab import Lab
from inmesh.lab.observe import ztunnel_config_dump, ztunnel_metrics
from inmesh.lab.pods import PodSpec
from inmesh.netns import nsenter_argv

Report = Callable[[str], None]

ENROLL_TIMEOUT_S = 30.0
"""How long the agent gets to enroll the mesh pods (it reacts to the store within ~100 ms; a
loaded 2-core machine can stretch Python start-up to seconds)."""
LISTEN_TIMEOUT_S = 10.0
"""How long a server started in a pod gets to listen."""
POLL_S = 0.05
STOP_GRACE_S = 3.0
"""SIGTERM to SIGKILL for the benchmark's own processes (iperf3, echo servers)."""
OPENED_METRIC = "istio_tcp_connections_opened_total"


@dataclass(frozen=True)
class PodDef:
    name: str
    mesh: bool
    node: int = 1
    """Index of the lab node (1 = first) the pod is scheduled on."""
    service_account: str = "default"


PODS = (
    PodDef("client-plain", mesh=False),
    PodDef("server-plain", mesh=False),
    PodDef("client-mesh", mesh=True),
    PodDef("server-mesh", mesh=True),
)
NAMESPACE = "default"


@dataclass(frozen=True)
class Pod:
    name: str
    uid: str
    ip: str
    netns: str
    """Path of the pod's network namespace (/run/netns/inmesh-pod-...)."""
    mesh: bool
    node: str = ""
    service_account: str = "default"


class BenchError(Exception):
    """The benchmark could not set up or run a measurement (not a slow result: a broken one)."""


class BenchLab:
    def __init__(self, report: Report, nodes: int = 1, pods: Sequence[PodDef] = PODS,
                 mtls: bool = True) -> None:
        self.report = report
        self.mtls = mtls
        """False: a plaintext lab (no control plane): mesh pods relay in plaintext."""
        self.root = Path(tempfile.mkdtemp(prefix="inmesh-bench-", dir="/run"))
        self.node_prefix = f"bench{secrets.token_hex(3)}n"
        self.lab = Lab(self.root, report=lambda m: report(f"  lab: {m}"))
        self.logs = self.root / "bench-logs"
        self.pods: dict[str, Pod] = {}
        self.node_count = nodes
        self.pod_defs = tuple(pods)
        self.nodes: list[str] = []
        """Node names in index order (``nodes[0]`` is node 1)."""
        self.node = ""
        """The first node."""
        self._procs: list[subprocess.Popen[bytes]] = []
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------

    def build(self) -> None:
        state = self.lab.up(nodes=self.node_count, node_prefix=self.node_prefix,
                            mtls=self.mtls)
        self.nodes = sorted(state.nodes, key=lambda n: state.nodes[n].index)
        self.node = self.nodes[0]
        self.logs.mkdir(parents=True, exist_ok=True)
        ambient = {LABEL_DATAPLANE_MODE: "ambient"}
        for p in self.pod_defs:
            node = self.nodes[p.node - 1]
            spec = PodSpec(p.name, NAMESPACE, p.service_account,
                           labels=ambient if p.mesh else {}, node=node)  # fmt: skip
            meta = self.lab.add_pod(spec)
            netns = meta.netns or ""
            self.pods[p.name] = Pod(
                p.name, meta.uid, meta.ips[0], netns, p.mesh, node, p.service_account
            )
            kind = "ambient" if p.mesh else "plain"
            self.report(f"pod {p.name} ({kind}) on {node}: {meta.ips[0]}")
        self._wait_enrolled()

    def _wait_enrolled(self) -> None:
        deadline = time.monotonic() + ENROLL_TIMEOUT_S
        while True:
            status = {p.name: p for p in self.lab.status().pods}
            pending = [
                f"{name} (agent: {status[name].enrollment}, proxy: {status[name].proxy})"
                for name, pod in self.pods.items()
                if pod.mesh
                and (status[name].enrollment != "enrolled" or status[name].proxy != "Up")
            ]
            plain_enrolled = [
                n for n, p in self.pods.items() if not p.mesh and status[n].enrollment != "no"
            ]
            if plain_enrolled:
                raise BenchError(f"plain pods are not plain: {plain_enrolled}")
            if not pending:
                mesh = ", ".join(n for n, p in self.pods.items() if p.mesh)
                self.report(f"agents and ztunnels report {mesh} enrolled")
                return
            if time.monotonic() > deadline:
                raise BenchError(f"not enrolled after {ENROLL_TIMEOUT_S:g}s: {pending}")
            time.sleep(POLL_S * 4)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for proc in reversed(self._procs):
            self.stop(proc)
        result = self.lab.down()
        for problem in result.problems:
            self.report(f"WARNING teardown: {problem}")
        if self.root.exists():
            self.report(f"WARNING: {self.root} still exists")

    # -- processes in pods ----------------------------------------------------------------

    def spawn(self, pod: str, argv: Sequence[str], log: str) -> subprocess.Popen[bytes]:
        """Start ``argv`` in ``pod``'s netns, detached from the terminal's Ctrl-C (we stop it)."""
        with open(self.logs / log, "ab") as out:
            proc = subprocess.Popen(
                [*nsenter_argv(self.pods[pod].netns), *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self._procs.append(proc)
        return proc

    def wait_listening(self, proc: subprocess.Popen[bytes], port: int, log: str) -> None:
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while port not in listening_ports(proc.pid):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"server on :{port} did not listen; log:\n{self.log_tail(log)}")
            time.sleep(POLL_S)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)

    def run(self, pod: str, argv: Sequence[str], timeout_s: float) -> str:
        """Run ``argv`` in ``pod``'s netns to completion; its stdout, or `BenchError`."""
        try:
            done = subprocess.run(
                [*nsenter_argv(self.pods[pod].netns), *argv],
                capture_output=True, timeout=timeout_s, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{argv[0]} in {pod} timed out after {timeout_s:g}s") from exc
        if done.returncode != 0:
            msg = (done.stderr or done.stdout).decode(errors="replace").strip()[-800:]
            raise BenchError(f"{' '.join(argv[:2])} in {pod} exited {done.returncode}: {msg}")
        return done.stdout.decode()

    def log_tail(self, log: str, lines: int = 15) -> str:
        try:
            text = (self.logs / log).read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- the proxy ----------------------------------------------------------------------------

    def ztunnel_pid(self, node: str | None = None) -> int | None:
        rec = self.lab.state.load().nodes[node or self.node].processes.get("ztunnel")
        return rec.pid if rec else None

    def metrics(self, node: str) -> str:
        """ztunnel's Prometheus page on ``node``."""
        return ztunnel_metrics(self.lab.layout, node, self.lab.settings)

    def config_dump(self, node: str) -> dict[str, Any]:
        """ztunnel's /config_dump on ``node``."""
        return ztunnel_config_dump(self.lab.layout, node, self.lab.settings)

    def proxy_connections(self, security_policy: str | None = None) -> tuple[float, float]:
        """(client-mesh outbound, server-mesh inbound) connections ztunnel has opened so far;
        only those with ``security_policy`` (``unknown`` = plaintext) if given."""
        text = ztunnel_metrics(self.lab.layout, self.node, self.lab.settings)
        samples = metric_samples(text, OPENED_METRIC)
        return (
            workload_total(samples, "source", "client-mesh", NAMESPACE, security_policy),
            workload_total(samples, "destination", "server-mesh", NAMESPACE, security_policy),
        )
