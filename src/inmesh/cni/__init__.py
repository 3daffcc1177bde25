"""The CNI side of inmesh: the chained plugin, its installer, and a runtime driver for the lab.

Modules: `spec` (the CNI protocol, sans-io), `event` (what the plugin tells the agent, sans-io),
`conflist` (config files as values, sans-io), `plugin` (the ``inmesh-cni`` executable),
`install` (put it on a node and take it away), `runtime` (run a chain the way containerd does).

The names below load lazily: the plugin executable imports `inmesh.cni.plugin` once per pod, and
must not pay for the installer or the runtime driver. The installer's functions are used as
`inmesh.cni.install.install(...)` / `.uninstall(...)` (a package attribute named ``install``
would clash with the submodule).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inmesh.cni.install import InstallResult
    from inmesh.cni.runtime import CniInvocation, CniPluginError, CniRuntime
    from inmesh.cni.spec import CniError

__all__ = [
    "CniError",
    "CniInvocation",
    "CniPluginError",
    "CniRuntime",
    "InstallResult",
]

_HOME = {
    "CniError": "inmesh.cni.spec",
    "CniInvocation": "inmesh.cni.runtime",
    "CniPluginError": "inmesh.cni.runtime",
    "CniRuntime": "inmesh.cni.runtime",
    "InstallResult": "inmesh.cni.install",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'inmesh.cni' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
