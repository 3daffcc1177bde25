"""Named network namespaces of the lab (`ip netns`): create isolated, list, delete.

A node's netns and a pod's netns are both plain named namespaces under /run/netns with only
`lo`; the node's gets its `cni0` bridge from the CNI plugins, never a link to the root netns.
"""

from __future__ import annotations

import os

from inmesh.lab import _cmd
from inmesh.lab.layout import NETNS_DIR, netns_path


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def ensure(name: str) -> bool:
    """Create the netns with `lo` up unless it exists. True if it was created."""
    if exists(name):
        return False
    _cmd.run(["ip", "netns", "add", name])
    _cmd.run(["ip", "-n", name, "link", "set", "lo", "up"])
    return True


def delete(name: str) -> bool:
    """Delete the netns if it exists. True if it was deleted."""
    if not exists(name):
        return False
    _cmd.run(["ip", "netns", "del", name])
    return True


def list_names(prefix: str = "") -> list[str]:
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))
