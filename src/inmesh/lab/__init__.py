"""A local lab: nodes and pods in network namespaces, built the way a cluster and a container
runtime would build them, and the demo that shows what the mesh captures.

Curated surface (imported lazily, so that `python -m inmesh.lab.echo` in a pod starts fast):
`Lab` (up/down/pods/labels/status), `LabSettings`, `PodSpec`, `LabStatus`, `run_demo`.
Layout: `layout` (paths, names), `cniconf` (the node's primary CNI config), `labels`, `state`
(lab.json), `controlplane` + `credentials` (the cluster's control plane, node credentials),
`nodes`, `fabric` and `pods` (the runtime), `observe` + `status` + `meshview` (live status),
`evidence`, `witness`, `capture` + `pcap` (tcpdump on the link between nodes), `verdict` and
`demo` (the demo), `procs` (daemons), `echo` (the pods' test server).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inmesh.lab.demo import run_demo
    from inmesh.lab.lab import Lab
    from inmesh.lab.pods import PodSpec
    from inmesh.lab.settings import LabSettings
    from inmesh.lab.status import LabStatus

__all__ = ["Lab", "LabSettings", "LabStatus", "PodSpec", "run_demo"]

_HOME = {
    "Lab": "inmesh.lab.lab",
    "LabSettings": "inmesh.lab.settings",
    "LabStatus": "inmesh.lab.status",
    "PodSpec": "inmesh.lab.pods",
    "run_demo": "inmesh.lab.demo",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'inmesh.lab' has no attribute {name!r}")
