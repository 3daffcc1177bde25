"""Settings of the node agent, each with its unit and the reason for its default."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from inmesh.constants import PLUGIN_SOCKET_NAME
from inmesh.errors import ConfigError


@dataclass(frozen=True)
class AgentSettings:
    node: str
    """Name of the node this agent serves; only pods scheduled here are handled."""
    store: str
    """Path of the cluster store (the lab's pod source)."""
    run_dir: str
    """Directory of the plugin socket (pluginevent.sock); the CNI config points here."""
    zds_socket: str
    """Path of the ZDS socket the proxy connects to."""
    state_dir: str
    """Where the agent keeps its durable state (enrolled pods and their netns)."""
    backend: str = "auto"
    """Rule backend: iptables, nftables or auto (see inmesh.redirect.select_backend)."""
    excluded_namespaces: frozenset[str] = field(default_factory=lambda: frozenset({"kube-system"}))
    """Namespaces never enrolled, whatever their labels (Istio's EXCLUDE_NAMESPACES default)."""
    reconcile_interval: float = 0.2
    """Seconds between looks at the pod source; label changes take effect within this."""
    drift_check_interval: float = 10.0
    """Seconds between verifications of every enrolled pod's rules against the kernel."""
    pod_lookup_timeout: float = 2.0
    """Seconds a CNI ADD waits for the pod to appear in the source (a stale cache)."""
    retry_backoff_max: float = 30.0
    """Cap in seconds of the back-off between retries of a failing enrollment."""

    def __post_init__(self) -> None:
        if not self.node:
            raise ConfigError("the agent needs a node name")
        if self.backend not in ("auto", "iptables", "nftables"):
            raise ConfigError(f"unknown rule backend {self.backend!r}")
        for name in ("reconcile_interval", "drift_check_interval", "pod_lookup_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")

    @property
    def plugin_socket(self) -> str:
        return os.path.join(self.run_dir, PLUGIN_SOCKET_NAME)

    @property
    def state_file(self) -> str:
        return os.path.join(self.state_dir, "agent-state.json")
