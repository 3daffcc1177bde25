"""Gathering evidence about one connection: make it from a pod, then ask kernel and proxy.

`connect_from_pod` opens a TCP connection from inside a pod's netns and reports the outcome and
the local address (which picks the conntrack entry). `Witness` reads what the kernel and the
proxy recorded: conntrack in the client pod, the REDIRECT rules' packet counters in each pod,
and ztunnel's per-workload connection counters.
"""

from __future__ import annotations

import errno
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from inmesh.errors import InmeshError, KernelError
from inmesh.lab import _cmd
from inmesh.lab.evidence import (
    CtFlow,
    Endpoint,
    RedirectCounter,
    Sample,
    flow_from,
    ipt_redirect_counters,
    metric_samples,
    nft_redirect_counters,
    parse_conntrack,
    parse_ss_listeners,
)
from inmesh.lab.layout import LabLayout
from inmesh.lab.observe import ztunnel_metrics
from inmesh.lab.probes import tcp_socket_in_netns
from inmesh.lab.settings import LabSettings
from inmesh.netns import nsenter_argv

OPENED_METRIC = "istio_tcp_connections_opened_total"
NFT_NAT_TABLE = ("inet", "istio-ambient-nat")
MAX_REPLY = 4096
"""Longest reply line read from the echo server."""


@dataclass(frozen=True)
class ConnectResult:
    outcome: str
    """ok | refused | reset | timeout | closed | error: <text>."""
    local: Endpoint | None = None
    peer_seen: str | None = None
    """The client address the server reported (its getpeername)."""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


def _outcome_of(exc: OSError) -> str:
    if isinstance(exc, socket.timeout):
        return "timeout"
    if exc.errno == errno.ECONNREFUSED:
        return "refused"
    if exc.errno in (errno.ECONNRESET, errno.EPIPE):
        return "reset"
    return f"error: {exc.strerror or exc}"


def connect_from_pod(
    netns_path: str, src_ip: str, dst: Endpoint, greeting: str, timeout_s: float
) -> ConnectResult:
    """Connect from ``src_ip`` inside ``netns_path``, send one line, read the echo reply.

    The socket is bound before connecting, so the local address (which identifies the flow in
    conntrack) is known even when the connection is refused.
    """
    sock = tcp_socket_in_netns(netns_path)
    local = None
    try:
        sock.settimeout(timeout_s)
        sock.bind((src_ip, 0))
        ip, port = sock.getsockname()[:2]
        local = Endpoint(ip, port)
        sock.connect((dst.ip, dst.port))
        sock.sendall(greeting.encode() + b"\n")
        reply = _read_line(sock)
    except OSError as exc:
        return ConnectResult(_outcome_of(exc), local)
    finally:
        sock.close()
    if not reply:
        return ConnectResult("closed", local)
    try:
        peer = json.loads(reply).get("peer")
    except (json.JSONDecodeError, AttributeError):
        return ConnectResult(f"error: unexpected reply {reply[:40]!r}", local)
    return ConnectResult("ok", local, str(peer) if peer else None)


def _read_line(sock: socket.socket) -> bytes:
    buf = b""
    while b"\n" not in buf and len(buf) < MAX_REPLY:
        chunk = sock.recv(MAX_REPLY)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0]


class Witness:
    """Reads evidence in pod and node namespaces; the rule backend decides where counters are."""

    def __init__(self, lab: LabLayout, settings: LabSettings, backend: str) -> None:
        self.lab = lab
        self.settings = settings
        self.backend = backend

    def _in(self, netns_path: str, argv: Sequence[str], check: bool = True) -> str:
        return _cmd.run(
            [*nsenter_argv(netns_path), *argv],
            timeout_s=self.settings.command_timeout_s,
            check=check,
        )

    def conntrack_flow(self, netns_path: str, local: Endpoint | None) -> CtFlow | None:
        """The client pod's conntrack entry for the connection that started at ``local``."""
        if local is None:
            return None
        text = self._in(netns_path, ["conntrack", "-L", "-p", "tcp"], check=False)
        return flow_from(parse_conntrack(text), local)

    def redirect_counters(self, netns_path: str) -> list[RedirectCounter] | None:
        """The pod's REDIRECT rules with packet counts; None if the pod has no such rules."""
        if self.backend == "nftables":
            try:
                text = self._in(netns_path, ["nft", "-j", "list", "table", *NFT_NAT_TABLE])
            except KernelError:
                return None  # no table: the pod has no redirection
            found = nft_redirect_counters(text)
        else:
            found = ipt_redirect_counters(
                self._in(netns_path, ["iptables-save", "-c", "-t", "nat"])
            )
        return found or None

    def listening_ports(self, netns_path: str) -> set[int]:
        """TCP ports something listens on inside the netns (the kernel's socket table)."""
        return parse_ss_listeners(self._in(netns_path, ["ss", "-Hltn"]))

    def opened(self, node: str) -> list[Sample] | None:
        """ztunnel's connections-opened counters on ``node``; None if it does not answer."""
        try:
            return metric_samples(ztunnel_metrics(self.lab, node, self.settings), OPENED_METRIC)
        except InmeshError:
            return None
