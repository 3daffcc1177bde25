from typing import Any

from _lib.meshcheck import (
    ConnKey,
    Side,
    delta,
    expected_hbone,
    hbone_dials,
    hbone_pending,
    mismatch,
    opened,
)

CLIENT = "spiffe://cluster.local/ns/default/sa/bench-client"
SERVER = "spiffe://cluster.local/ns/default/sa/bench-server"


def page(*rows: tuple[str, str, str, str, float]) -> str:
    """A /metrics page with opened counters: (reporter, src, dst, policy, value)."""
    lines = ["# TYPE istio_tcp_connections_opened_total counter"]
    for reporter, src, dst, policy, value in rows:
        lines.append(
            "istio_tcp_connections_opened_total{"
            f'connection_security_policy="{policy}",destination_principal="{SERVER}",'
            f'destination_workload="{dst}",reporter="{reporter}",source_principal="{CLIENT}",'
            f'source_workload="{src}"}} {value}'
        )
    return "\n".join(lines) + "\n"


def test_opened_keys_by_node_and_labels() -> None:
    got = opened({"n1": page(("source", "c", "s", "mutual_tls", 3.0)), "n2": page()})
    key = ConnKey("n1", "source", "c", "s", "mutual_tls", CLIENT, SERVER)
    assert got == {key: 3.0}


def test_hbone_connections_match_expectation_exactly() -> None:
    before = opened({"n1": page(("source", "c", "s", "mutual_tls", 2.0)),
                     "n2": page(("destination", "c", "s", "mutual_tls", 2.0))})  # fmt: skip
    after = opened({"n1": page(("source", "c", "s", "mutual_tls", 7.0)),
                    "n2": page(("destination", "c", "s", "mutual_tls", 7.0))})  # fmt: skip
    want = expected_hbone(Side("c", "n1", CLIENT), Side("s", "n2", SERVER), 5)
    assert mismatch(delta(before, after), want) == []


def test_plaintext_or_missing_side_is_reported() -> None:
    after = opened({"n1": page(("source", "c", "s", "unknown", 1.0))})
    problems = mismatch(
        delta({}, after), expected_hbone(Side("c", "n1", CLIENT), Side("s", "n1", SERVER), 1)
    )
    assert len(problems) == 3  # the plaintext one is extra, both mutual_tls ones are missing
    assert any("security=unknown" in p and p.endswith(": 1 (expected 0)") for p in problems)


def test_direct_path_expects_no_change() -> None:
    same = opened({"n1": page(("source", "c", "s", "mutual_tls", 4.0))})
    assert mismatch(delta(same, same), {}) == []


def dump(node: str, table: dict[str, str], certs: dict[str, str], dials: int = 0) -> dict[str, Any]:
    return {
        "node": node,
        "mesh": {"workloads": {"workloads": [
            {"name": n, "tunnelProtocol": p} for n, p in table.items()]}},
        "workloadState": {
            f"uid-{n}": {"info": {"name": n}, "certificate": {"state": s},
                         "hbone": {"dials": dials}}
            for n, s in certs.items()
        },
    }  # fmt: skip


def test_hbone_pending_names_what_is_missing() -> None:
    pods = [("a", "n1"), ("b", "n2")]
    ready = {"n1": dump("n1", {"a": "HBONE", "b": "HBONE"}, {"a": "available"}),
             "n2": dump("n2", {"a": "HBONE", "b": "HBONE"}, {"b": "available"})}  # fmt: skip
    assert hbone_pending(ready, pods) == []
    not_yet = {"n1": dump("n1", {"a": "HBONE"}, {"a": "pending"}),
               "n2": dump("n2", {"a": "HBONE", "b": "NONE"}, {"b": "available"})}  # fmt: skip
    assert hbone_pending(not_yet, pods) == [
        "n1: discovery has b as absent",
        "n1: certificate of a is pending",
        "n2: discovery has b as NONE",
    ]


def test_hbone_dials() -> None:
    d = dump("n1", {}, {"client-mesh": "available"}, dials=3)
    assert hbone_dials(d, "client-mesh") == 3
    assert hbone_dials(d, "other") is None
