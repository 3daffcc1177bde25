"""Named bounds of the lab: every timeout, retry and poll interval, with the reason for its default.

The lab plays cluster and container runtime on one machine; these numbers are what a kubelet
and containerd would configure. They are plain values so that tests can shrink them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_ROOT = "/run/inmesh/lab"
"""Where a lab lives unless told otherwise: tmpfs, like the runtime state of a real node."""
ROOT_ENV = "INMESH_LAB_ROOT"
CNI_PLUGIN_DIR = "/usr/lib/cni"
"""Debian's containernetworking-plugins (bridge, host-local, loopback)."""


def default_root() -> str:
    """The lab root: $INMESH_LAB_ROOT if set, else /run/inmesh/lab."""
    return os.environ.get(ROOT_ENV) or DEFAULT_ROOT


@dataclass(frozen=True)
class LabSettings:
    ready_timeout_s: float = 30.0
    """How long `up` waits for a node's agent and ztunnel to report ready. Both start a Python
    interpreter and import their stack; on a busy 2-core machine that can take several seconds."""
    poll_interval_s: float = 0.05
    """How often readiness and exit conditions are polled: small against human scale, large
    enough not to burn a core while others run tests."""
    stop_grace_s: float = 5.0
    """SIGTERM to SIGKILL: the proxy drains within this (it gets --drain-deadline below it)."""
    ztunnel_drain_deadline_s: float = 3.0
    """Passed to ztunnel as --drain-deadline, so that it finishes before stop_grace_s."""
    cni_timeout_s: float = 30.0
    """One CNI plugin invocation, the whole chain included (kubelet's default is 4 min per
    sandbox; ours are local and quick, so a hang means a bug and should surface fast)."""
    pod_add_attempts: int = 3
    """How often `pod add` runs CNI ADD before giving up, like a runtime retrying a sandbox.
    A pod created while the agent is (re)starting then still comes up."""
    pod_add_backoff_s: float = 0.5
    """Pause between ADD attempts (doubled each time)."""
    http_timeout_s: float = 3.0
    """One status/readiness request to an agent or ztunnel; they answer locally in ms."""
    command_timeout_s: float = 30.0
    """One helper command (ip, nft, conntrack): they never take long unless something hangs."""
