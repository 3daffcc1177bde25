"""Settings of the control plane process, each with its unit and the reason for its default."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inmesh.errors import ConfigError
from inmesh.identity import DEFAULT_TRUST_DOMAIN


@dataclass(frozen=True)
class ControlPlaneSettings:
    state_dir: Path
    """The CA's home: mesh root and node CA keys (0600), created once and reused."""
    store: Path
    """The pod source (the lab's cluster store): who runs where, who is redirected."""
    listen: str = "unix:/var/run/inmesh/controlplane.sock"
    """gRPC address for the CA and discovery services: ``host:port`` or ``unix:/path``."""
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    cluster_id: str = "Kubernetes"
    """Prefix of workload uids (``<cluster>//Pod/<ns>/<name>``), as istiod's CLUSTER_ID."""
    cert_ttl: int = 24 * 3600
    """Seconds a workload certificate lives when the proxy asks for no particular validity."""
    root_cert: Path | None = None
    """A provided root or intermediate certificate chain (PEM) instead of the embedded root."""
    root_key: Path | None = None
    """The provided certificate's key."""
    shutdown_grace: float = 5.0
    """Seconds in-flight RPCs get to finish on SIGTERM before streams are cut."""

    def __post_init__(self) -> None:
        if (self.root_cert is None) != (self.root_key is None):
            raise ConfigError("--root-cert and --root-key go together")
        if self.cert_ttl <= 0:
            raise ConfigError("cert_ttl must be positive")
        if not self.listen:
            raise ConfigError("the control plane needs a listen address")
