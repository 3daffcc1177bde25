"""Settings of the ztunnel process and of each per-pod proxy: every bound named, with its unit.

Both classes are frozen and validate themselves on construction (`ConfigError` names the field),
so a bad flag fails at startup instead of on the first connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inmesh.constants import PROXY_MARK
from inmesh.errors import ConfigError
from inmesh.hbone.settings import HboneSettings
from inmesh.identity import DEFAULT_TRUST_DOMAIN, SpiffeId
from inmesh.ztunnel.addressing import HostPort, parse_hostport

DEFAULT_ADMIN_ADDR = HostPort("127.0.0.1", 15000)
DEFAULT_METRICS_ADDR = HostPort("0.0.0.0", 15020)
DEFAULT_READINESS_ADDR = HostPort("0.0.0.0", 15021)


@dataclass(frozen=True)
class ProxySettings:
    """Knobs of one pod's proxy (sockets and relay)."""

    listen_backlog: int = 128
    """Accept queue length of each in-pod listener (connections). Istio's ztunnel uses 128."""
    connect_timeout: float = 10.0
    """Seconds to wait for an upstream TCP connect before failing the client connection.
    Istio's ztunnel uses 10 s."""
    packet_mark: int = PROXY_MARK
    """SO_MARK put on every socket the proxy opens in a pod (0x539 = 1337). The in-pod rules let
    packets with this mark through; changing it breaks interop with istio-cni's rules."""
    keepalive_idle: int = 180
    """Seconds of idle time before the first TCP keepalive probe (Istio: 180 s)."""
    keepalive_interval: int = 180
    """Seconds between TCP keepalive probes (Istio: 180 s)."""
    keepalive_count: int = 9
    """Unanswered keepalive probes before the kernel resets the connection (Istio: 9)."""
    pipe_size: int = 1 << 20
    """Bytes of kernel pipe buffer per relay direction (F_SETPIPE_SZ). 1 MiB lets one splice move
    a whole TCP receive window; pages are only allocated while data is in flight, and the
    default 64 KiB is kept if the kernel refuses (fs.pipe-max-size)."""
    accept_batch: int = 64
    """Most connections accepted per readiness event of a listener, so one busy listener cannot
    starve the event loop."""

    def __post_init__(self) -> None:
        _positive("listen_backlog", self.listen_backlog)
        _positive("connect_timeout", self.connect_timeout)
        _positive("keepalive_idle", self.keepalive_idle)
        _positive("keepalive_interval", self.keepalive_interval)
        _positive("keepalive_count", self.keepalive_count)
        _positive("accept_batch", self.accept_batch)
        if not 0 < self.packet_mark <= 0xFFFFFFFF:
            raise ConfigError(f"packet_mark must be a 32-bit non-zero mark, got {self.packet_mark}")
        if self.pipe_size < 4096:
            raise ConfigError(f"pipe_size must be at least one page (4096), got {self.pipe_size}")


@dataclass(frozen=True)
class MeshSettings:
    """How ztunnel joins the mesh: its control plane (CA + xDS), node credential, trust domain.

    Without them (``ZtunnelSettings.mesh`` is None) every connection is plaintext passthrough."""

    controlplane: str
    """gRPC target of the control plane: ``host:port`` or ``unix:/path`` (mutual TLS)."""
    node_credentials: str
    """Directory of this node's credential (node-key.pem, node-cert.pem, node-ca.pem,
    root-cert.pem), as written by ``inmesh controlplane node-credential``."""
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    """Trust domain of a pod whose xDS workload names none (Istio: TRUST_DOMAIN,
    default cluster.local)."""
    hbone: HboneSettings = field(default_factory=HboneSettings)
    """Windows, stream caps, keepalive and timeouts of HBONE connections."""

    def __post_init__(self) -> None:
        if not self.controlplane:
            raise ConfigError("controlplane target must not be empty")
        if not self.node_credentials:
            raise ConfigError("node_credentials directory must not be empty")
        SpiffeId(self.trust_domain, "ns", "sa")  # ConfigError names a bad trust domain


@dataclass(frozen=True)
class ZtunnelSettings:
    """Settings of one ztunnel process (one per node)."""

    node_name: str
    """Name of the node this ztunnel serves; only used in logs and the config dump."""
    zds_socket: str
    """Path of the node agent's ZDS socket (AF_UNIX SOCK_SEQPACKET; Istio:
    /var/run/ztunnel/ztunnel.sock)."""
    admin_addr: HostPort = DEFAULT_ADMIN_ADDR
    """Admin server (/config_dump); localhost only because it exposes workload state."""
    metrics_addr: HostPort = DEFAULT_METRICS_ADDR
    """Prometheus server (/metrics, /stats/prometheus); wildcard so a scraper can reach it."""
    readiness_addr: HostPort = DEFAULT_READINESS_ADDR
    """Readiness server (/healthz/ready); wildcard so the kubelet can probe it."""
    drain_deadline: float = 5.0
    """Seconds live connections may run after SIGTERM before they are force-closed. 5 s is
    Istio's default when no termination grace period is configured."""
    retry_interval: float = 5.0
    """Seconds between attempts to start a proxy that failed to start (e.g. a port taken by
    the app). Istio's ztunnel retries every 5 s."""
    admin_bind_retry: float = 0.5
    """Seconds between attempts to bind an admin port held by a previous ztunnel that has not
    yet started draining; traffic is served meanwhile, only the admin endpoint waits."""
    http_request_timeout: float = 5.0
    """Seconds an admin client has to send its request head before it is disconnected."""
    http_max_head: int = 8192
    """Largest admin request head accepted (bytes); admin requests are tiny GETs."""
    proxy: ProxySettings = field(default_factory=ProxySettings)
    """Per-pod proxy settings."""
    mesh: MeshSettings | None = None
    """Control plane and identity settings; None keeps every connection plaintext."""
    inbound_workers: int = 0
    """Worker processes that serve the pods' HBONE port 15008 (only with a mesh), so that one
    tunnel's two ends run on two cores (`inmesh.ztunnel.offload`). 0: ztunnel serves it
    itself. The command line defaults to 1 on machines with more than one CPU."""

    def __post_init__(self) -> None:
        if not self.node_name:
            raise ConfigError("node_name must not be empty")
        if not self.zds_socket:
            raise ConfigError("zds_socket must not be empty")
        if self.drain_deadline < 0:
            raise ConfigError(f"drain_deadline must be >= 0 seconds, got {self.drain_deadline}")
        _positive("retry_interval", self.retry_interval)
        _positive("admin_bind_retry", self.admin_bind_retry)
        _positive("http_request_timeout", self.http_request_timeout)
        _positive("http_max_head", self.http_max_head)
        if not 0 <= self.inbound_workers <= 64:
            raise ConfigError(f"inbound_workers must be 0..64, got {self.inbound_workers}")

    @staticmethod
    def addr(text: str) -> HostPort:
        """Parse an address flag (``host:port`` or ``[v6]:port``); `ConfigError` if invalid."""
        return parse_hostport(text)


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
