"""The lab's control plane: one `inmesh controlplane serve` per lab, the cluster's CA and
workload discovery, started before any node's ztunnel and stopped after all of them.

Where it runs: in its own netns ``inmesh-<prefix>cp`` (only `lo`, no links), entered with
nsenter like the node daemons. It serves on a unix socket, which works across namespaces since
it is a file, so the netns costs nothing and keeps the rule that nothing the lab starts has a
foothold in the root namespace. Its state dir (mesh root and node CA keys, 0600) lives under
the lab root and is reused by every `up` until `down` removes it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc

from inmesh.caapi import CHANNEL_OPTIONS
from inmesh.controlplane.caserver import node_channel_credentials
from inmesh.errors import InmeshError, KernelError
from inmesh.lab import namespaces, procs
from inmesh.lab._poll import poll_until
from inmesh.lab.credentials import CredentialIssuer
from inmesh.lab.layout import LabLayout, controlplane_netns_name, netns_path
from inmesh.lab.nodes import Command, inmesh_executable
from inmesh.lab.settings import LabSettings
from inmesh.lab.state import LabState, LabStateFile
from inmesh.netns import nsenter_argv

ROLE = "controlplane"
Report = Callable[[str], None]


def controlplane_command(lab: LabLayout, state: LabState) -> Command:
    args = (
        "controlplane", "serve", "--state-dir", str(lab.controlplane_dir),
        "--store", str(lab.store), "--listen", state.controlplane_target,
        "--trust-domain", state.trust_domain,
    )  # fmt: skip
    netns = netns_path(controlplane_netns_name(state.node_prefix))
    return Command((*nsenter_argv(netns), inmesh_executable(), *args), args[:4])


def controlplane_ready(socket_path: str, cred_dir: Path, timeout_s: float) -> bool:
    """True if the control plane completes a mutual-TLS gRPC handshake with ``cred_dir``'s node
    credential: the same thing a node's ztunnel needs from it."""
    if not os.path.exists(socket_path) or not cred_dir.exists():
        return False
    try:
        creds = node_channel_credentials(cred_dir)
    except InmeshError:
        return False
    with grpc.secure_channel(f"unix:{socket_path}", creds, options=CHANNEL_OPTIONS) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            return False
    return True


def probe_credentials(lab: LabLayout, state: LabState) -> Path:
    """The node credential the lab probes the control plane with: the first node's."""
    first = min(state.nodes.values(), key=lambda n: n.index, default=None)
    if first is None:
        return lab.root / "no-node-credential"
    return lab.node(first.name).credentials_dir


class ControlPlaneManager:
    def __init__(
        self, lab: LabLayout, state: LabStateFile, settings: LabSettings, report: Report
    ) -> None:
        self.lab = lab
        self.state = state
        self.settings = settings
        self.report = report

    def ensure(self) -> dict[str, str]:
        """Bring the control plane to running and ready, with a credential for every node
        (issued before it starts, so the CA's files are made by one process only).
        Returns the nodes whose credential was issued anew (name -> why)."""
        state = self.state.load()
        netns = controlplane_netns_name(state.node_prefix)
        if namespaces.ensure(netns):
            self.report(f"created netns {netns} for the control plane")
            self.stop()
        issuer = CredentialIssuer(self.lab.controlplane_dir, self.lab.store, state.trust_domain)
        dirs = {name: self.lab.node(name).credentials_dir for name in state.nodes}
        issued = issuer.ensure(dirs, datetime.now(UTC))
        for node, why in sorted(issued.items()):
            self.report(f"{node}: issued node credential ({why})")
        self._ensure_process()
        self.wait_ready()
        return issued

    def _ensure_process(self) -> None:
        state = self.state.load()
        old = state.processes.get(ROLE)
        if procs.is_running(old):
            return
        cmd = controlplane_command(self.lab, state)
        proc = procs.spawn_detached(cmd.argv, self.lab.log_file(ROLE), cmd.signature)
        self.state.update(lambda s: s.with_process(ROLE, proc))
        verb = "restarted" if old is not None else "started"
        self.report(f"{verb} control plane (pid {proc.pid}) on {state.controlplane_target}")

    def wait_ready(self) -> None:
        state = self.state.load()
        creds = probe_credentials(self.lab, state)

        def ready() -> bool:
            if not procs.is_running(self.state.load().processes.get(ROLE)):
                raise KernelError(f"control plane exited during start{self._log_hint()}")
            return controlplane_ready(
                state.controlplane_socket, creds, self.settings.http_timeout_s
            )

        if not poll_until(ready, self.settings.ready_timeout_s, self.settings.poll_interval_s):
            raise KernelError(
                f"control plane not ready after {self.settings.ready_timeout_s:g}s"
                f"{self._log_hint()}"
            )

    def _log_hint(self) -> str:
        log = self.lab.log_file(ROLE)
        tail = procs.log_tail(str(log))
        return f"; log {log}:\n{tail}" if tail else f"; see {log}"

    def stop(self, state: LabState | None = None) -> None:
        """Stop the recorded control plane (of ``state``, default: lab.json's) if it runs."""
        proc = (state or self.state.load()).processes.get(ROLE)
        if proc is None:
            return
        outcome = procs.stop(proc, self.settings.stop_grace_s, self.settings.poll_interval_s)
        with contextlib.suppress(InmeshError):  # an unreadable lab.json is being torn down
            self.state.update(lambda s: s.with_process(ROLE, None))
        self.report(f"control plane (pid {proc.pid}) {outcome}")

    def teardown(self, state: LabState) -> list[str]:
        """Remove the control plane's netns and its socket (which may live outside the root,
        in `LabLayout.short_dir`); its state dir goes with the lab root. Returns the problems
        it had to skip."""
        problems: list[str] = []
        netns = controlplane_netns_name(state.node_prefix)
        try:
            if namespaces.delete(netns):
                self.report(f"deleted {netns}")
        except KernelError as exc:
            problems.append(f"control plane: {exc}")
        sockets = {state.controlplane_socket, str(self.lab.controlplane_socket)} - {""}
        for path in sorted(sockets):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return problems
