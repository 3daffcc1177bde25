"""Where everything of a lab lives: files under the lab root and the names of its namespaces.

Pure path arithmetic; nothing here touches the file system. One `LabLayout` per root, one
`NodeLayout` per node, both derived from names only, so that `down` can find what a crashed
`up` left behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from inmesh.constants import PLUGIN_SOCKET_NAME, ZDS_SOCKET_NAME
from inmesh.errors import ConfigError

NETNS_DIR = "/run/netns"
NODE_NETNS_PREFIX = "inmesh-"
POD_NETNS_PREFIX = "inmesh-pod-"
POD_NETNS_UID_CHARS = 12
"""Hex characters of the pod uid in its netns name: 48 bits, no collision among a lab's pods."""
PRIMARY_CONFLIST = "10-inmesh-lab.conflist"
NODE_SUBDIRS = ("net.d", "bin", "agent", "zds", "state", "ipam", "cni-cache", "logs")

_NODE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")


def check_node_name(name: str) -> str:
    """Node names become netns and file names: lowercase DNS labels of at most 40 characters."""
    if not _NODE_NAME.fullmatch(name):
        raise ConfigError(
            f"bad node name {name!r}: use lowercase letters, digits and '-' (at most 40)"
        )
    return name


def node_netns_name(node: str) -> str:
    return NODE_NETNS_PREFIX + node


def pod_netns_name(uid: str) -> str:
    return POD_NETNS_PREFIX + uid.replace("-", "")[:POD_NETNS_UID_CHARS]


def netns_path(name: str) -> str:
    return f"{NETNS_DIR}/{name}"


@dataclass(frozen=True)
class NodeLayout:
    """The directories of one node: what a kubelet host would have under /etc and /var/run."""

    node: str
    dir: Path

    @property
    def netns(self) -> str:
        return node_netns_name(self.node)

    @property
    def netns_path(self) -> str:
        return netns_path(self.netns)

    @property
    def conf_dir(self) -> Path:
        return self.dir / "net.d"

    @property
    def bin_dir(self) -> Path:
        return self.dir / "bin"

    @property
    def agent_run_dir(self) -> Path:
        return self.dir / "agent"

    @property
    def plugin_socket(self) -> Path:
        return self.agent_run_dir / PLUGIN_SOCKET_NAME

    @property
    def zds_socket(self) -> Path:
        return self.dir / "zds" / ZDS_SOCKET_NAME

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def ipam_dir(self) -> Path:
        return self.dir / "ipam"

    @property
    def cni_cache_dir(self) -> Path:
        return self.dir / "cni-cache"

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def primary_conflist(self) -> Path:
        return self.conf_dir / PRIMARY_CONFLIST

    def log_file(self, process: str) -> Path:
        return self.logs_dir / f"{process}.log"

    def subdirs(self) -> list[Path]:
        return [self.dir / name for name in NODE_SUBDIRS]


@dataclass(frozen=True)
class LabLayout:
    """The files of one lab under its root."""

    root: Path

    @property
    def store(self) -> Path:
        """The cluster store (pods and namespaces), read by every node's agent."""
        return self.root / "cluster.json"

    @property
    def state(self) -> Path:
        """The lab's own bookkeeping: nodes, pids it started, pods and their sandboxes."""
        return self.root / "lab.json"

    @property
    def nodes_dir(self) -> Path:
        return self.root / "nodes"

    @property
    def pods_dir(self) -> Path:
        return self.root / "pods"

    def node(self, name: str) -> NodeLayout:
        return NodeLayout(check_node_name(name), self.nodes_dir / name)

    def pod_dir(self, uid: str) -> Path:
        """Per-pod files (logs of processes the lab runs in the pod)."""
        return self.pods_dir / uid
