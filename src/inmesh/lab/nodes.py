"""A node of the lab: an isolated netns, its CNI config, and its agent and ztunnel daemons.

`NodeManager.ensure` converges one node to "everything present and ready", doing only what is
missing, so that `up` on a half-built or crashed lab repairs it. `teardown` undoes a node and
tolerates any part of it being gone. Wiring nodes to each other is `fabric`'s job, after every
node exists; the control plane (`controlplane`) is up before any node's ztunnel starts, and each
ztunnel is given its target and the node's credential.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inmesh.cni.install import install as cni_install
from inmesh.cni.install import uninstall as cni_uninstall
from inmesh.errors import ConfigError, InmeshError, KernelError
from inmesh.lab import namespaces, procs
from inmesh.lab._poll import poll_until
from inmesh.lab.cniconf import NodeNetwork, primary_conflist, primary_is_current
from inmesh.lab.layout import LabLayout, NodeLayout
from inmesh.lab.probes import EndpointUnreachable, get_in_netns, get_unix
from inmesh.lab.settings import LabSettings
from inmesh.lab.state import LabStateFile, NodeRecord
from inmesh.netns import nsenter_argv

ZTUNNEL_ADMIN_ADDR = "127.0.0.1:15000"
ZTUNNEL_METRICS_ADDR = "0.0.0.0:15020"
ZTUNNEL_READINESS_ADDR = "0.0.0.0:15021"
ROLES = ("agent", "ztunnel")
"""Start order: ztunnel connects to the agent's ZDS socket."""

Report = Callable[[str], None]


def inmesh_executable() -> str:
    """The `inmesh` script of this installation (the venv's), falling back to $PATH."""
    here = Path(sys.executable).parent / "inmesh"
    if here.exists():
        return str(here)
    found = shutil.which("inmesh")
    if found is None:
        raise ConfigError("cannot find the `inmesh` command next to python or on PATH")
    return found


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    signature: tuple[str, ...]
    """The part of argv that identifies this process in /proc/<pid>/cmdline."""


def agent_command(lab: LabLayout, node: NodeLayout, backend: str) -> Command:
    args = (
        "agent", "--node", node.node, "--store", str(lab.store),
        "--run-dir", str(node.agent_run_dir), "--zds-socket", str(node.zds_socket),
        "--state-dir", str(node.state_dir), "--backend", backend,
    )  # fmt: skip
    return Command((*nsenter_argv(node.netns_path), inmesh_executable(), *args), args[:5])


def ztunnel_command(
    node: NodeLayout, settings: LabSettings, controlplane: str = "", trust_domain: str = ""
) -> Command:
    """ztunnel for ``node``; with ``controlplane`` (a gRPC target) it gets workloads and
    certificates from there, authenticating with the node's credential."""
    args: tuple[str, ...] = (
        "ztunnel", "--node", node.node, "--zds-socket", str(node.zds_socket),
        "--admin-addr", ZTUNNEL_ADMIN_ADDR, "--metrics-addr", ZTUNNEL_METRICS_ADDR,
        "--readiness-addr", ZTUNNEL_READINESS_ADDR,
        "--drain-deadline", f"{settings.ztunnel_drain_deadline_s:g}",
    )  # fmt: skip
    if controlplane:
        args += ("--controlplane", controlplane, "--node-credentials", str(node.credentials_dir))
        if trust_domain:
            args += ("--trust-domain", trust_domain)
    return Command((*nsenter_argv(node.netns_path), inmesh_executable(), *args), args[:5])


def agent_ready(node: NodeLayout, settings: LabSettings) -> bool:
    try:
        return get_unix(str(node.plugin_socket), "/readyz", settings.http_timeout_s).ok
    except EndpointUnreachable:
        return False


def ztunnel_ready(node: NodeLayout, settings: LabSettings) -> bool:
    try:
        reply = get_in_netns(
            node.netns_path, ZTUNNEL_READINESS_ADDR, "/healthz/ready", settings.http_timeout_s
        )
    except EndpointUnreachable:
        return False
    return reply.ok


class NodeManager:
    def __init__(
        self, lab: LabLayout, state: LabStateFile, settings: LabSettings, report: Report
    ) -> None:
        self.lab = lab
        self.state = state
        self.settings = settings
        self.report = report

    def ensure(self, rec: NodeRecord, backend: str) -> None:
        """Bring one node to: netns, CNI config + plugin, agent and ztunnel running and ready."""
        node = self.lab.node(rec.name)
        for d in node.subdirs():
            d.mkdir(parents=True, exist_ok=True)
        if namespaces.ensure(node.netns):
            self.report(f"{rec.name}: created netns {node.netns}")
            # Processes still running were in a netns that is gone: they serve no one.
            self.stop_processes(self.state.load().nodes[rec.name])
        self._ensure_cni(node, NodeNetwork(rec.index))
        for role in ROLES:
            self._ensure_process(rec.name, role, backend)
        self.wait_ready(rec.name)

    def _ensure_cni(self, node: NodeLayout, net: NodeNetwork) -> None:
        wanted = primary_conflist(net, str(node.ipam_dir))
        try:
            current = json.loads(node.primary_conflist.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            current = None
        if not isinstance(current, dict) or not primary_is_current(current, wanted):
            node.primary_conflist.write_text(json.dumps(wanted, indent=2) + "\n", "utf-8")
            self.report(f"{node.node}: wrote {node.primary_conflist.name} ({net.pod_cidr})")
        cni_install(
            conf_dir=str(node.conf_dir),
            bin_dir=str(node.bin_dir),
            agent_run_dir=str(node.agent_run_dir),
            pod_source=str(self.lab.store),
        )

    def _ensure_process(self, name: str, role: str, backend: str) -> None:
        node = self.lab.node(name)
        state = self.state.load()
        old = state.nodes[name].processes.get(role)
        if procs.is_running(old):
            return
        cmd = (
            agent_command(self.lab, node, backend)
            if role == "agent"
            else ztunnel_command(
                node, self.settings, state.controlplane_target, state.trust_domain
            )
        )
        proc = procs.spawn_detached(cmd.argv, node.log_file(role), cmd.signature)
        self.state.update(lambda s: s.with_node(s.nodes[name].with_process(role, proc)))
        verb = "restarted" if old is not None else "started"
        self.report(f"{name}: {verb} {role} (pid {proc.pid})")

    def restart_process(self, name: str, role: str) -> None:
        """Start ``role`` on ``name`` if it is not running (used after a deliberate stop)."""
        self._ensure_process(name, role, self.state.load().backend)

    def wait_ready(self, name: str) -> None:
        node = self.lab.node(name)
        checks: dict[str, Callable[[NodeLayout, LabSettings], bool]] = {
            "agent": agent_ready,
            "ztunnel": ztunnel_ready,
        }
        for role, check in checks.items():

            def ready(role: str = role, check: Callable[..., bool] = check) -> bool | None:
                self._fail_if_dead(name, role)
                return check(node, self.settings) or None

            if not poll_until(ready, self.settings.ready_timeout_s, self.settings.poll_interval_s):
                raise KernelError(
                    f"{name}: {role} not ready after {self.settings.ready_timeout_s:g}s"
                    f"{self._log_hint(name, role)}"
                )

    def _fail_if_dead(self, name: str, role: str) -> None:
        proc = self.state.load().nodes[name].processes.get(role)
        if not procs.is_running(proc):
            raise KernelError(f"{name}: {role} exited during start{self._log_hint(name, role)}")

    def _log_hint(self, name: str, role: str) -> str:
        log = self.lab.node(name).log_file(role)
        tail = procs.log_tail(str(log))
        return f"; log {log}:\n{tail}" if tail else f"; see {log}"

    def stop_processes(self, rec: NodeRecord) -> None:
        for role in reversed(ROLES):
            self.stop_process(rec, role)

    def stop_process(self, rec: NodeRecord, role: str) -> None:
        proc = rec.processes.get(role)
        if proc is None:
            return
        outcome = procs.stop(proc, self.settings.stop_grace_s, self.settings.poll_interval_s)
        self.state.update(
            lambda s: (
                s.with_node(s.nodes[rec.name].with_process(role, None))
                if rec.name in s.nodes
                else s
            )
        )
        self.report(f"{rec.name}: {role} (pid {proc.pid}) {outcome}")

    def teardown(self, name: str) -> list[str]:
        """Remove the node's CNI install and netns; returns the problems it had to skip."""
        node = self.lab.node(name)
        problems: list[str] = []
        if node.conf_dir.exists():
            try:
                cni_uninstall(conf_dir=str(node.conf_dir), bin_dir=str(node.bin_dir))
            except InmeshError as exc:
                problems.append(f"{name}: CNI uninstall: {exc}")
        try:
            if namespaces.delete(node.netns):
                self.report(f"{name}: deleted netns {node.netns}")
        except KernelError as exc:
            problems.append(f"{name}: {exc}")
        return problems
