"""Did a path go where it claims? ztunnel's own records, read before and after a test (pure).

`opened` turns each node's Prometheus page into counts of ``istio_tcp_connections_opened_total``
keyed by node, reporter, workloads, principals and ``connection_security_policy``; `delta`
subtracts two readings. A direct path must leave every counter unchanged; an HBONE path of N
connections must add exactly N ``mutual_tls`` connections reported by the source (on the
client's node) and N by the destination (on the server's node), with the two pods' SPIFFE IDs
as principals, and nothing else. `hbone_pending` reads /config_dump: what is still missing
before HBONE can work (discovery has not marked a pod HBONE, a certificate is not there yet).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from inmesh.lab.evidence import metric_samples

OPENED_METRIC = "istio_tcp_connections_opened_total"
MUTUAL_TLS = "mutual_tls"


@dataclass(frozen=True, order=True)
class ConnKey:
    node: str
    reporter: str
    source_workload: str
    destination_workload: str
    security: str
    """``connection_security_policy``: ``mutual_tls`` (HBONE) or ``unknown`` (plaintext)."""
    source_principal: str
    destination_principal: str

    def describe(self) -> str:
        return (
            f"{self.node} reporter={self.reporter} {self.source_workload}"
            f" -> {self.destination_workload} security={self.security}"
            f" principals {self.source_principal} -> {self.destination_principal}"
        )


Counts = Mapping[ConnKey, float]


def opened(pages: Mapping[str, str]) -> dict[ConnKey, float]:
    """Opened-connection counts per key, from ``{node: metrics page}``."""
    out: dict[ConnKey, float] = {}
    for node, text in pages.items():
        for s in metric_samples(text, OPENED_METRIC):
            lab = s.labels
            key = ConnKey(
                node,
                lab.get("reporter", "?"),
                lab.get("source_workload", "?"),
                lab.get("destination_workload", "?"),
                lab.get("connection_security_policy", "?"),
                lab.get("source_principal", "?"),
                lab.get("destination_principal", "?"),
            )
            out[key] = out.get(key, 0.0) + s.value
    return out


def delta(before: Counts, after: Counts) -> dict[ConnKey, float]:
    """What changed between two readings (keys whose count moved)."""
    keys = set(before) | set(after)
    moved = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys}
    return {k: v for k, v in sorted(moved.items()) if v}


@dataclass(frozen=True)
class Side:
    """One end of an HBONE path: the pod, its node and its SPIFFE ID."""

    workload: str
    node: str
    principal: str


def expected_hbone(client: Side, server: Side, n: int) -> dict[ConnKey, float]:
    """The counter changes ``n`` HBONE connections from ``client`` to ``server`` must cause."""
    both = (client.workload, server.workload, MUTUAL_TLS, client.principal, server.principal)
    return {
        ConnKey(client.node, "source", *both): float(n),
        ConnKey(server.node, "destination", *both): float(n),
    }


def mismatch(seen: Mapping[ConnKey, float], want: Mapping[ConnKey, float]) -> list[str]:
    """Human-readable differences between observed and expected changes (empty: as claimed)."""
    out = []
    for key in sorted(set(seen) | set(want)):
        got, exp = seen.get(key, 0.0), want.get(key, 0.0)
        if got != exp:
            out.append(f"{key.describe()}: {got:g} (expected {exp:g})")
    return out


def hbone_pending(dumps: Mapping[str, Mapping[str, Any]], mesh_pods: Iterable[tuple[str, str]]
                  ) -> list[str]:  # fmt: skip
    """What keeps HBONE from working yet, from each node's /config_dump.

    ``mesh_pods``: (pod name, node) of every mesh pod. Every node's discovery must list every
    mesh pod with tunnel protocol HBONE, and each pod's own node must hold an available
    certificate for it.
    """
    pods = list(mesh_pods)
    problems = []
    for node, dump in dumps.items():
        mesh = dump.get("mesh") or {}
        table = (mesh.get("workloads") or {}).get("workloads") or []
        protocol = {w.get("name"): w.get("tunnelProtocol") for w in table}
        for pod, _ in pods:
            if protocol.get(pod) != "HBONE":
                problems.append(f"{node}: discovery has {pod} as {protocol.get(pod, 'absent')}")
        state = dump.get("workloadState") or {}
        certs = {
            (w.get("info") or {}).get("name"): (w.get("certificate") or {}).get("state")
            for w in state.values()
        }
        for pod, pod_node in pods:
            if pod_node == node and certs.get(pod) != "available":
                problems.append(f"{node}: certificate of {pod} is {certs.get(pod, 'absent')}")
    return problems


def hbone_dials(dump: Mapping[str, Any], pod: str) -> int | None:
    """TLS connections ``pod``'s outbound HBONE pool has dialled so far (None if not shown)."""
    for w in (dump.get("workloadState") or {}).values():
        if (w.get("info") or {}).get("name") == pod:
            dials = (w.get("hbone") or {}).get("dials")
            return int(dials) if dials is not None else None
    return None
