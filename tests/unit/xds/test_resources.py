"""Resource versions are content hashes: equal content, equal version, on any control plane."""

from __future__ import annotations

from inmesh.xds.proto import workload_pb2
from inmesh.xds.resources import Resource, Snapshot, address_resource, content_version


def _address(ns: str) -> workload_pb2.Address:
    return workload_pb2.Address(workload=workload_pb2.Workload(uid="u", namespace=ns))


def test_same_content_same_version_different_content_different_version() -> None:
    a, b, c = address_resource("u", _address("x")), address_resource("u", _address("x")), address_resource("u", _address("y"))
    assert a == b
    assert a.version != c.version
    assert len(a.version) == 16
    assert a.version == content_version(a.body)


def test_body_is_the_serialized_address() -> None:
    r = address_resource("u", _address("x"))
    assert workload_pb2.Address.FromString(r.body) == _address("x")


def test_snapshot_indexes_by_name_and_lists_versions() -> None:
    snap = Snapshot.of(3, [Resource("a", "1", b""), Resource("b", "2", b"")])
    assert snap.generation == 3
    assert set(snap.resources) == {"a", "b"}
    assert snap.versions() == {"a": "1", "b": "2"}
    assert "body" not in repr(snap.resources["a"])
