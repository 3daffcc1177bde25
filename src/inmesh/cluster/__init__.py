"""The cluster as inmesh sees it: pods, namespaces, their source, and who belongs in the mesh."""

from inmesh.cluster.enrollment import Decision, decide
from inmesh.cluster.model import ClusterView, NamespaceMeta, PodMeta, PodSource

__all__ = ["ClusterView", "Decision", "NamespaceMeta", "PodMeta", "PodSource", "decide"]
