"""The proxy's workload table: lookups by IP, by pod and by name, identities, atomic updates."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inmesh.errors import RemoteProtocolError
from inmesh.identity import SpiffeId
from inmesh.xds.proto import workload_pb2
from inmesh.ztunnel.workloads import TunnelProtocol, WorkloadEntry, WorkloadTable


def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def body(
    name: str = "web-0",
    ips: tuple[str, ...] = ("10.0.0.1",),
    *,
    node: str = "n1",
    hbone: bool = False,
    healthy: bool = True,
    **extra: object,
) -> bytes:
    w = workload_pb2.Workload(
        uid=f"c//Pod/shop/{name}", name=name, namespace="shop", service_account="web",
        node=node, addresses=[_packed(ip) for ip in ips],
        tunnel_protocol=workload_pb2.HBONE if hbone else workload_pb2.NONE,
        status=workload_pb2.HEALTHY if healthy else workload_pb2.UNHEALTHY,
        workload_type=workload_pb2.POD, **extra,  # type: ignore[arg-type]
    )
    return workload_pb2.Address(workload=w).SerializeToString()


def uid(name: str) -> str:
    return f"c//Pod/shop/{name}"


def name_at(table: WorkloadTable, ip: str) -> str | None:
    entry = table.by_ip(ip)
    return entry.name if entry else None


def table_with(**bodies: bytes) -> WorkloadTable:
    table = WorkloadTable()
    table.apply({uid(n): b for n, b in bodies.items()}, ())
    return table


def test_entry_carries_the_workload_fields() -> None:
    table = table_with(**{"web-0": body(hbone=True, trust_domain="example.org", canonical_name="web")})
    entry = table.by_name(uid("web-0"))
    assert entry == WorkloadEntry(
        uid=uid("web-0"), name="web-0", namespace="shop", service_account="web", node="n1",
        ips=("10.0.0.1",), trust_domain="example.org", tunnel_protocol=TunnelProtocol.HBONE,
        healthy=True, canonical_name="web", workload_type="pod",
    )


def test_lookup_by_ip_accepts_any_text_form() -> None:
    table = table_with(**{"web-0": body(ips=("10.0.0.1", "fd00::1"))})
    for ip in ("10.0.0.1", "::ffff:10.0.0.1", "fd00::1", "FD00:0::1"):
        assert name_at(table, ip) == "web-0", ip
    assert table.by_ip("10.0.0.2") is None
    assert table.by_ip("not-an-ip") is None


def test_hbone_capable_only_for_known_hbone_workloads() -> None:
    table = table_with(**{"mesh": body("mesh", ("10.0.0.1",), hbone=True), "plain": body("plain", ("10.0.0.2",))})
    assert table.hbone_capable("10.0.0.1")
    assert not table.hbone_capable("10.0.0.2")
    assert not table.hbone_capable("192.0.2.9")


def test_local_finds_the_pod_on_its_node_only() -> None:
    table = table_with(**{"web-0": body(node="n1")})
    assert table.local("n1", "shop", "web-0") == table.by_name(uid("web-0"))
    assert table.local("n2", "shop", "web-0") is None
    assert table.local("n1", "other", "web-0") is None


def test_identity_defaults_to_cluster_local_and_sa_default() -> None:
    table = WorkloadTable()
    bare = workload_pb2.Workload(uid="u", name="p", namespace="ns", addresses=[_packed("10.0.0.9")])
    table.apply({"u": workload_pb2.Address(workload=bare).SerializeToString()}, ())
    entry = table.by_ip("10.0.0.9")
    assert entry is not None
    assert table.identity_of(entry) == SpiffeId("cluster.local", "ns", "default")
    other = table_with(**{"web-0": body(trust_domain="example.org")}).by_name(uid("web-0"))
    assert other is not None
    assert table.identity_of(other).uri == "spiffe://example.org/ns/shop/sa/web"


def test_update_changes_ips_and_removal_clears_every_index() -> None:
    table = table_with(**{"web-0": body(ips=("10.0.0.1",))})
    table.apply({uid("web-0"): body(ips=("10.0.0.7",), hbone=True)}, ())
    assert table.by_ip("10.0.0.1") is None
    assert table.hbone_capable("10.0.0.7")
    table.apply({}, [uid("web-0"), "never-known"])
    assert (len(table), table.by_ip("10.0.0.7"), table.local("n1", "shop", "web-0")) == (0, None, None)


def test_two_records_for_one_ip_prefer_the_healthy_one() -> None:
    """A replaced pod can briefly share its IP with its predecessor's stale record."""
    table = table_with(**{"old": body("old", healthy=False), "new": body("new")})
    assert name_at(table, "10.0.0.1") == "new"
    table.apply({}, [uid("new")])
    assert name_at(table, "10.0.0.1") == "old"


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (workload_pb2.Address(workload=workload_pb2.Workload(namespace="ns", addresses=[b"\x01\x02\x03"])).SerializeToString(), "3-byte address"),
        (b"\xff\xff\xff", "does not decode"),
        (workload_pb2.Address().SerializeToString(), "neither"),
        (workload_pb2.Address(workload=workload_pb2.Workload(namespace="Not_Valid")).SerializeToString(), "no valid identity"),
    ],
)
def test_unusable_resource_rejects_the_whole_update(bad: bytes, match: str) -> None:
    table = table_with(**{"web-0": body()})
    before = (table.dump(), table.generation)
    with pytest.raises(RemoteProtocolError, match=match):
        table.apply({uid("web-1"): body("web-1", ("10.0.0.2",)), "bad": bad}, [uid("web-0")])
    assert (table.dump(), table.generation) == before


def test_unknown_tunnel_protocol_is_treated_as_plain() -> None:
    w = workload_pb2.Workload(uid="u", namespace="ns", addresses=[_packed("10.0.0.3")])
    w.tunnel_protocol = 7  # type: ignore[assignment]
    table = WorkloadTable()
    table.apply({"u": workload_pb2.Address(workload=w).SerializeToString()}, ())
    assert not table.hbone_capable("10.0.0.3")


def test_services_are_accepted_listed_and_removable() -> None:
    svc = workload_pb2.Address(service=workload_pb2.Service(name="s", namespace="shop"))
    table = WorkloadTable()
    table.apply({"shop/s.shop.svc": svc.SerializeToString()}, ())
    assert (len(table), table.dump()["services"]) == (0, ["shop/s.shop.svc"])
    table.apply({}, ["shop/s.shop.svc"])
    assert table.dump()["services"] == []


def test_dump_is_sorted_json_with_identities_and_listeners_hear_each_update() -> None:
    calls: list[int] = []
    table = WorkloadTable()
    table.add_listener(lambda: calls.append(table.generation))
    table.apply({uid("b"): body("b", ("10.0.0.2",)), uid("a"): body("a")}, ())
    dump = table.dump()
    assert [w["name"] for w in dump["workloads"]] == ["a", "b"]
    assert dump["workloads"][0]["identity"] == "spiffe://cluster.local/ns/shop/sa/web"
    assert dump["workloads"][0]["tunnelProtocol"] == "NONE"
    assert calls == [1]


_ips = st.sampled_from(["10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2"])
_names = st.sampled_from(["a", "b", "c"])
_updates = st.lists(
    st.tuples(
        st.dictionaries(_names, st.tuples(st.lists(_ips, max_size=2), st.booleans(), st.booleans()), max_size=3),
        st.lists(_names, max_size=2),
    ),
    max_size=10,
)


@given(_updates)
def test_indices_always_agree_with_the_records(updates: list[tuple[dict[str, tuple[list[str], bool, bool]], list[str]]]) -> None:
    """After any sequence of updates, by_ip and local answer as a scan of the records would."""
    table = WorkloadTable()
    model: dict[str, tuple[list[str], bool, bool]] = {}
    for added, removed in updates:
        table.apply({uid(n): body(n, tuple(ips), hbone=h, healthy=ok) for n, (ips, h, ok) in added.items()}, [uid(n) for n in removed])
        for n in removed:
            model.pop(n, None)
        model.update(added)
    for ip in ["10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2"]:
        owners = sorted((not ok, n) for n, (ips, _, ok) in model.items() if ip in ips)
        expected = owners[0][1] if owners else None
        assert name_at(table, ip) == expected
        assert table.hbone_capable(ip) == (expected is not None and model[expected][1])
    for n in "abc":
        found = table.local("n1", "shop", n)
        assert (found is not None) == (n in model)
    assert len(table) == len(model)


@given(st.dictionaries(st.text(max_size=4), st.binary(max_size=40), max_size=3))
def test_arbitrary_bodies_apply_or_raise_remote_protocol_error(added: dict[str, bytes]) -> None:
    table = WorkloadTable()
    try:
        table.apply(added, ())
    except RemoteProtocolError:
        assert table.generation == 0
        return
    assert table.generation == 1
