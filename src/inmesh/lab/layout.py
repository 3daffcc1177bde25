"""Where everything of a lab lives: files under the lab root and the names of its namespaces.

Pure path arithmetic; nothing here touches the file system. One `LabLayout` per root, one
`NodeLayout` per node, both derived from names only, so that `down` can find what a crashed
`up` left behind. Unix sockets (the control plane's, each agent's and ZDS socket) live under
the root unless their path would pass the kernel's 107 bytes; then they go to a short
directory named after a hash of the root, `short_dir`, which `down` removes too.
"""

from __future__ import annotations

import hashlib
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
MAX_UNIX_SOCKET_PATH = 107
"""Bytes of a unix socket path the kernel accepts (sun_path is 108 with the terminating NUL)."""
SHORT_SOCKET_DIR = "/run/inmesh/sockets"
"""Where the control plane's socket goes when the lab root is too deep for a unix socket path."""

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


def controlplane_netns_name(node_prefix: str) -> str:
    """The control plane's own netns (no links: it serves on a unix socket only)."""
    return f"{NODE_NETNS_PREFIX}{node_prefix}cp"


def fits_unix_socket(path: Path) -> bool:
    return len(str(path).encode()) <= MAX_UNIX_SOCKET_PATH


def short_dir_for(root: Path) -> Path:
    """Where the sockets of the lab at ``root`` go if they do not fit under it (at most 37
    bytes, so that a node's sockets fit below it whatever the node's name)."""
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return Path(SHORT_SOCKET_DIR) / digest


@dataclass(frozen=True)
class NodeLayout:
    """The directories of one node: what a kubelet host would have under /etc and /var/run."""

    node: str
    dir: Path
    short_dir: Path | None = None
    """Where its sockets go if they do not fit under ``dir`` (None: they always stay there)."""

    def _socket_dir(self, name: str, socket: str) -> Path:
        inside = self.dir / name
        if self.short_dir is None or fits_unix_socket(inside / socket):
            return inside
        return self.short_dir / name

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
        """The agent's run dir, holding its CNI event socket."""
        return self._socket_dir("agent", PLUGIN_SOCKET_NAME)

    @property
    def plugin_socket(self) -> Path:
        return self.agent_run_dir / PLUGIN_SOCKET_NAME

    @property
    def zds_socket(self) -> Path:
        return self._socket_dir("zds", ZDS_SOCKET_NAME) / ZDS_SOCKET_NAME

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
    def credentials_dir(self) -> Path:
        """The node credential its ztunnel presents to the control plane (0700, files 0600)."""
        return self.dir / "credentials"

    @property
    def primary_conflist(self) -> Path:
        return self.conf_dir / PRIMARY_CONFLIST

    def log_file(self, process: str) -> Path:
        return self.logs_dir / f"{process}.log"

    def subdirs(self) -> list[Path]:
        dirs = {self.dir / name for name in NODE_SUBDIRS}
        return sorted(dirs | {self.agent_run_dir, self.zds_socket.parent})


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

    @property
    def controlplane_dir(self) -> Path:
        """The control plane's state dir: the mesh root and node CA keys (0600), kept across
        `up`s and removed by `down`."""
        return self.root / "controlplane"

    @property
    def logs_dir(self) -> Path:
        """Logs of cluster-level processes (the control plane)."""
        return self.root / "logs"

    def log_file(self, process: str) -> Path:
        return self.logs_dir / f"{process}.log"

    @property
    def short_dir(self) -> Path:
        """Home of the sockets that do not fit under the root (see the module docstring)."""
        return short_dir_for(self.root)

    @property
    def controlplane_socket(self) -> Path:
        """Where the control plane listens: under the root if the path fits a unix socket
        address, else in `short_dir` (recorded in lab.json either way)."""
        preferred = self.root / "controlplane.sock"
        return preferred if fits_unix_socket(preferred) else self.short_dir / preferred.name

    def node(self, name: str) -> NodeLayout:
        name = check_node_name(name)
        return NodeLayout(name, self.nodes_dir / name, self.short_dir / name)

    def pod_dir(self, uid: str) -> Path:
        """Per-pod files (logs of processes the lab runs in the pod)."""
        return self.pods_dir / uid
