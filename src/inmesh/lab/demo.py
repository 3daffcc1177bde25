"""`inmesh lab demo`: two nodes, five pods, and the kernel's and proxy's word on what is captured.

Builds a fresh lab, enrolls `client-mesh` (pod label) and `server-mesh` (namespace label),
connects every client to every server, and prints, per connection, only evidence read back
from the system: the client pod's conntrack entry, the REDIRECT rules' packet counters in both
pods, ztunnel's per-workload connection counters (mutual TLS or not) and the peer address the
server saw; mesh to mesh goes over HBONE. Then it un-enrolls and re-enrolls a running pod, and
stops ztunnel to show enrolled pods fail closed. Last, it connects to a mesh pod on the second
node while tcpdump watches the link between the nodes: mesh traffic crosses it as TLS to port
15008 with the application's bytes nowhere in the capture, plain traffic in the clear.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from inmesh.constants import INBOUND_PLAINTEXT_PORT, LABEL_DATAPLANE_MODE, OUTBOUND_PORT
from inmesh.errors import ConfigError, InmeshError, KernelError
from inmesh.lab import procs
from inmesh.lab._poll import poll_until
from inmesh.lab.capture import Capture
from inmesh.lab.evidence import Endpoint, RedirectCounter, Sample, packets_to, workload_total
from inmesh.lab.fabric import FABRIC_BRIDGE, fabric_netns_name
from inmesh.lab.lab import Lab
from inmesh.lab.labels import RemoveLabel, SetLabel
from inmesh.lab.layout import netns_path
from inmesh.lab.meshview import tunnel_of
from inmesh.lab.observe import agent_status, ztunnel_config_dump
from inmesh.lab.pcap import WireEvidence, wire_evidence
from inmesh.lab.pods import PodSpec
from inmesh.lab.render_demo import render_legend, render_rows
from inmesh.lab.settings import LabSettings
from inmesh.lab.state import PodRecord
from inmesh.lab.verdict import Expect, Row, delta, judge
from inmesh.lab.witness import ConnectResult, Witness, connect_from_pod
from inmesh.netns import nsenter_argv

SERVER_PORT = 8080
MESH_NAMESPACE = "shop"
CONNECT_TIMEOUT_S = 3.0
"""A connection in the lab completes in milliseconds; 3 s means it is not going to."""
ENROLL_TIMEOUT_S = 10.0
"""How long the agent gets to react to a label change (it watches the store file), and the
control plane to push the change to ztunnel."""
MUTUAL_TLS = "mutual_tls"
"""ztunnel's `connection_security_policy` label value for HBONE connections."""


@dataclass(frozen=True)
class DemoPod:
    name: str
    namespace: str
    labels: Mapping[str, str]
    server: bool
    mesh: bool
    node: int = 1
    """Index of the node the pod runs on."""


AMBIENT = {LABEL_DATAPLANE_MODE: "ambient"}
PODS = (
    DemoPod("client-mesh", "default", AMBIENT, server=False, mesh=True),
    DemoPod("client-plain", "default", {}, server=False, mesh=False),
    DemoPod("server-mesh", MESH_NAMESPACE, {}, server=True, mesh=True),
    DemoPod("server-plain", "default", {}, server=True, mesh=False),
)
FAR = DemoPod("server-far", MESH_NAMESPACE, {}, server=True, mesh=True, node=2)
"""The mesh server on the second node, for the capture on the link between the nodes."""


class Demo:
    def __init__(self, lab: Lab, console: Console) -> None:
        self.lab = lab
        self.console = console
        self.node = ""
        self.nodes: list[str] = []
        self.pods: dict[str, PodRecord] = {}
        self.ips: dict[str, str] = {}
        self.witness: Witness | None = None
        self.problems: list[str] = []

    def step(self, text: str) -> None:
        self.console.print(f"[bold cyan]>[/] {text}", highlight=False)

    # -- setup ------------------------------------------------------------------------------

    def build(self, backend: str, node_prefix: str) -> None:
        self.step("lab up: control plane, two nodes (netns, bridge CNI + inmesh-cni, agent,"
                  " ztunnel) linked through a fabric netns")
        state = self.lab.up(nodes=2, backend=backend, node_prefix=node_prefix)
        self.nodes = [n.name for n in sorted(state.nodes.values(), key=lambda n: n.index)]
        self.node = self.nodes[0]
        status = agent_status(self.lab.layout, self.node, self.lab.settings)
        rules = str(status.get("backend", "iptables"))
        self.witness = Witness(self.lab.layout, self.lab.settings, rules)
        self.step(f"node {self.node} ready; the agent writes in-pod rules with {rules}")
        self.lab.label_namespace(MESH_NAMESPACE, [SetLabel(LABEL_DATAPLANE_MODE, "ambient")])
        self.step(f"namespace {MESH_NAMESPACE} labelled {LABEL_DATAPLANE_MODE}=ambient")
        for p in (*PODS, FAR):
            node = self.nodes[p.node - 1]
            pod = self.lab.add_pod(PodSpec(p.name, p.namespace, labels=p.labels, node=node))
            self.pods[p.name] = self.lab.pods.find(p.namespace, p.name)
            self.ips[p.name] = pod.ips[0]
            how = "mesh" if p.mesh else "plain"
            self.step(f"pod {p.namespace}/{p.name} ({how}) on {pod.node}: {pod.ips[0]}")
        for p in (*PODS, FAR):
            if p.server:
                self._start_server(p)
        self.step(f"echo servers listen on :{SERVER_PORT} in server-mesh, server-plain and"
                  " server-far")  # fmt: skip
        self._wait_hbone("server-mesh")

    def _wait_hbone(self, pod: str) -> None:
        """Until ztunnel's discovery table (pushed by the control plane) has ``pod`` as an
        HBONE workload: before that a connection to it would go out in plaintext."""
        rec, settings = self.pods[pod], self.lab.settings

        def known() -> bool:
            try:
                dump = ztunnel_config_dump(self.lab.layout, self.node, settings)
            except InmeshError:
                return False
            return tunnel_of(rec.namespace, rec.name, dump) == "HBONE"

        if not poll_until(known, ENROLL_TIMEOUT_S, settings.poll_interval_s * 4):
            raise KernelError(f"ztunnel did not learn {pod} as HBONE within {ENROLL_TIMEOUT_S:g}s")
        self.step(f"ztunnel's discovery table (from the control plane) has {pod} as HBONE")

    def _start_server(self, p: DemoPod) -> None:
        rec = self.pods[p.name]
        pod_dir = self.lab.layout.pod_dir(rec.uid)
        pod_dir.mkdir(parents=True, exist_ok=True)
        ready = pod_dir / "echo.ready"
        argv = echo_argv(rec, ready)
        proc = procs.spawn_detached(argv, pod_dir / "echo.log", argv[argv.index("-m") :])
        self.lab.state.update(lambda s: s.with_pod(s.pods[rec.uid].with_process("echo", proc)))
        settings = self.lab.settings
        if not poll_until(ready.exists, settings.ready_timeout_s, settings.poll_interval_s):
            raise KernelError(f"echo server in {p.name} did not start; see {pod_dir / 'echo.log'}")

    # -- measuring --------------------------------------------------------------------------

    def measure(
        self, client: str, server: str, expect: Expect, greeting: str = "", capture: bool = False
    ) -> Row:
        """Connect ``client`` to ``server`` and gather every witness's word on it; with
        ``capture``, tcpdump watches the link between the nodes meanwhile."""
        assert self.witness is not None
        w, c, s = self.witness, self.pods[client], self.pods[server]
        c_ns, s_ns = netns_path(c.netns), netns_path(s.netns)
        out0, in0 = w.redirect_counters(c_ns), w.redirect_counters(s_ns)
        zt_c0, zt_s0 = w.opened(c.node), w.opened(s.node)
        dst = Endpoint(self.ips[server], SERVER_PORT)
        greeting = greeting or f"hello from {client}"
        wire = None
        if capture:
            result, wire = self._captured(c_ns, self.ips[client], dst, greeting, client)
        else:
            result = connect_from_pod(c_ns, self.ips[client], dst, greeting, CONNECT_TIMEOUT_S)
        flow = w.conntrack_flow(c_ns, result.local)
        out1, in1 = w.redirect_counters(c_ns), w.redirect_counters(s_ns)
        zt_c1, zt_s1 = w.opened(c.node), w.opened(s.node)
        row = Row(
            client=client,
            server=server,
            outcome=result.outcome,
            peer_seen=result.peer_seen,
            flow=flow,
            out_pkts=_pkts_delta(out0, out1, OUTBOUND_PORT),
            in_pkts=_pkts_delta(in0, in1, INBOUND_PLAINTEXT_PORT),
            zt_out=delta(_zt(zt_c0, "source", c), _zt(zt_c1, "source", c)),
            zt_in=delta(_zt(zt_s0, "destination", s), _zt(zt_s1, "destination", s)),
            expect=expect,
            zt_in_mtls=delta(_zt(zt_s0, "destination", s, MUTUAL_TLS),
                             _zt(zt_s1, "destination", s, MUTUAL_TLS)),
            wire=wire,
        )  # fmt: skip
        self.problems += [f"{client} → {server}: {p}" for p in judge(row)]
        return row

    def _captured(
        self, c_ns: str, src: str, dst: Endpoint, greeting: str, client: str
    ) -> tuple[ConnectResult, WireEvidence]:
        captures = self.lab.layout.root / "captures"
        captures.mkdir(parents=True, exist_ok=True)
        out = captures / f"{client}-to-{dst.ip}.pcap"
        fabric = netns_path(fabric_netns_name(self.lab.state.load().node_prefix))
        with Capture(fabric, FABRIC_BRIDGE, out) as capture:
            result = connect_from_pod(c_ns, src, dst, greeting, CONNECT_TIMEOUT_S)
            pcap = capture.stop()
        return result, wire_evidence(pcap, dst.ip, greeting.encode())

    def table(self, title: str, rows: list[Row]) -> None:
        render_rows(title, rows, self.console)

    # -- the story --------------------------------------------------------------------------

    def matrix(self) -> None:
        rows = [
            self.measure(c.name, s.name, Expect(True, c.mesh, s.mesh, c.mesh and s.mesh))
            for c in PODS
            if not c.server
            for s in PODS
            if s.server
        ]
        render_legend(self.console)
        self.table("1. Every client to every server", rows)

    def relabel(self) -> None:
        mesh = self.pods["client-mesh"]
        self.lab.label_pod(mesh.namespace, mesh.name, [RemoveLabel(LABEL_DATAPLANE_MODE)])
        self.step("label removed from client-mesh; waiting for the agent to un-enroll it")
        self._wait_enrollment(mesh, enrolled=False)
        off = self.measure("client-mesh", "server-plain", Expect(True, False, False))
        self.lab.label_pod(mesh.namespace, mesh.name, [SetLabel(LABEL_DATAPLANE_MODE, "ambient")])
        self.step("label set again on the running pod; waiting for the agent to enroll it")
        self._wait_enrollment(mesh, enrolled=True)
        on = self.measure("client-mesh", "server-plain", Expect(True, True, False))
        self.table("2. client-mesh un-labelled, then labelled again (running pod)", [off, on])

    def _wait_enrollment(self, rec: PodRecord, enrolled: bool) -> None:
        assert self.witness is not None
        w, ns = self.witness, netns_path(rec.netns)

        def settled() -> bool:
            state = agent_status(self.lab.layout, self.node, self.lab.settings)
            entry = state.get("pods", {}).get(rec.uid) or {}
            agent_says = entry.get("state") == "enrolled"
            has_rules = w.redirect_counters(ns) is not None
            return agent_says == enrolled and has_rules == enrolled

        settings = self.lab.settings
        if not poll_until(settled, ENROLL_TIMEOUT_S, settings.poll_interval_s * 4):
            raise KernelError(
                f"{rec.name}: agent did not {'enroll' if enrolled else 'un-enroll'} it within"
                f" {ENROLL_TIMEOUT_S:g}s"
            )
        verb = "enrolled, REDIRECT rules present" if enrolled else "not enrolled, no REDIRECT rules"
        self.step(f"agent /status and the pod's rule set agree: {rec.name} {verb}")

    def listeners(self, pod: str) -> None:
        assert self.witness is not None
        ports = self.witness.listening_ports(netns_path(self.pods[pod].netns))
        shown = ", ".join(str(p) for p in sorted(ports)) or "none"
        self.step(f"`ss -ltn` in {pod}: listening on {shown}")

    def fail_closed(self) -> None:
        node = self.lab.state.load().nodes[self.node]
        self.listeners("client-mesh")
        self.step("stopping ztunnel (SIGTERM): enrolled pods must not fall back to plain traffic")
        self.lab.nodes.stop_process(node, "ztunnel")
        self.listeners("client-mesh")
        rows = [
            self.measure("client-mesh", "server-plain", Expect(False, True, False)),
            self.measure("client-plain", "server-mesh", Expect(False, False, True)),
            self.measure("client-plain", "server-plain", Expect(True, False, False)),
        ]
        self.step("starting ztunnel again; the agent replays its enrolled pods over ZDS")
        self.lab.nodes.restart_process(self.node, "ztunnel")
        self.lab.nodes.wait_ready(self.node)
        self._wait_hbone("server-mesh")
        rows.append(self.measure("client-mesh", "server-mesh", Expect(True, True, True, True)))
        self.table("3. Fail closed: ztunnel stopped (first three), then restarted", rows)

    def across(self) -> None:
        self._wait_hbone("server-far")
        self.step(f"capturing on {FABRIC_BRIDGE}, the bridge between the nodes; each client sends"
                  " a line with a unique marker")  # fmt: skip
        rows = [
            self.measure(client, FAR.name, Expect(True, mesh, True, mesh),
                         greeting=f"marker-{secrets.token_hex(8)} from {client}", capture=True)
            for client, mesh in (("client-mesh", True), ("client-plain", False))
        ]  # fmt: skip
        self.table(f"4. Across nodes ({self.nodes[0]} → {self.nodes[1]}), captured on the link",
                   rows)  # fmt: skip


def echo_argv(rec: PodRecord, ready: Path) -> list[str]:
    return [
        *nsenter_argv(netns_path(rec.netns)),
        sys.executable, "-m", "inmesh.lab.echo",
        "--port", str(SERVER_PORT), "--ready-file", str(ready),
    ]  # fmt: skip


def _pkts_delta(
    before: list[RedirectCounter] | None, after: list[RedirectCounter] | None, port: int
) -> int | None:
    if after is None:
        return None
    return packets_to(after, port) - (packets_to(before, port) if before else 0)


def _zt(
    samples: list[Sample] | None, reporter: str, rec: PodRecord, policy: str | None = None
) -> float | None:
    if samples is None:
        return None
    return workload_total(samples, reporter, rec.name, rec.namespace, policy)


def run_demo(
    root: str, *, backend: str = "auto", keep: bool = False, console: Console,
    node_prefix: str = "node", settings: LabSettings | None = None,
) -> bool:  # fmt: skip
    """Run the whole demo; True if every piece of evidence matched the expectation."""
    lab = Lab(root, settings, report=lambda m: console.print(f"    [dim]{m}[/]", highlight=False))
    if lab.layout.root.exists():
        raise ConfigError(
            f"a lab already exists at {root}: run `inmesh lab down` first or pass --root"
        )
    started = time.monotonic()
    demo = Demo(lab, console)
    try:
        _run_phases(demo, backend, node_prefix)
    finally:
        if keep:
            console.print(f"lab kept at {root}: `inmesh lab status --root {root}`")
        else:
            demo.step("tearing the lab down")
            result = lab.down()
            for p in result.problems:
                console.print(f"[yellow]teardown: {p}[/]", highlight=False)
    _summary(demo, console, time.monotonic() - started)
    return not demo.problems


def _run_phases(demo: Demo, backend: str, node_prefix: str) -> None:
    phases: list[Callable[[], None]] = [
        lambda: demo.build(backend, node_prefix), demo.matrix, demo.relabel, demo.fail_closed,
        demo.across,
    ]  # fmt: skip
    for phase in phases:
        try:
            phase()
        except InmeshError as exc:
            demo.problems.append(f"demo stopped: {exc}")
            demo.console.print(f"[red]demo stopped:[/] {exc}", highlight=False)
            return


def _summary(demo: Demo, console: Console, elapsed: float) -> None:
    if demo.problems:
        console.print(f"[red]✗ {len(demo.problems)} problem(s):[/]")
        for p in demo.problems:
            console.print(f"  [red]•[/] {p}", highlight=False)
    else:
        console.print("[green]✓ every claim above matched the kernel's and ztunnel's records[/]")
    console.print(f"[dim]demo took {elapsed:.1f}s[/]")
