"""inmesh: a sidecar-less service mesh data plane with in-pod traffic redirection."""

__version__ = "0.1.0"
