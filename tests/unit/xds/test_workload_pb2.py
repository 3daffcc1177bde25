"""The committed workload_pb2.py/.pyi are what workload.proto generates, the schema keeps Istio's
field numbers (reference 6.5), and a Workload encodes to the bytes Istio's schema gives."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from inmesh.xds.proto import workload_pb2

SRC = Path(__file__).resolve().parents[3] / "src"
PROTO_DIR = SRC / "inmesh" / "xds" / "proto"


def _mypy_plugin() -> str:
    found = shutil.which("protoc-gen-mypy", path=str(Path(sys.executable).parent))
    assert found, "mypy-protobuf (protoc-gen-mypy) must be installed next to the interpreter"
    return found


def test_generated_code_matches_the_committed_files(tmp_path: Path) -> None:
    """Regenerate from workload.proto into a tmp dir; any drift means a forgotten regeneration."""
    out = tmp_path / "inmesh" / "xds" / "proto"
    out.mkdir(parents=True)
    shutil.copy(PROTO_DIR / "workload.proto", out / "workload.proto")
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}",
            f"--plugin=protoc-gen-mypy={_mypy_plugin()}",
            f"--python_out={tmp_path}", f"--mypy_out={tmp_path}",
            str(out / "workload.proto"),
        ],
        check=True, capture_output=True, timeout=60,
    )
    for name in ("workload_pb2.py", "workload_pb2.pyi"):
        assert (out / name).read_text() == (PROTO_DIR / name).read_text(), f"{name} is stale"


def _fields(message: str) -> dict[str, int]:
    return {f.name: f.number for f in getattr(workload_pb2, message).DESCRIPTOR.fields}


def _reserved(message: str) -> set[int]:
    proto = descriptor_pb2.DescriptorProto()
    getattr(workload_pb2, message).DESCRIPTOR.CopyToProto(proto)
    return {n for r in proto.reserved_range for n in range(r.start, r.end)}


def test_schema_keeps_istio_field_numbers() -> None:
    assert workload_pb2.DESCRIPTOR.package == "istio.workload"
    assert _fields("Address") == {"workload": 1, "service": 2}
    assert [f.name for f in workload_pb2.Address.DESCRIPTOR.oneofs_by_name["type"].fields] == [
        "workload", "service",
    ]
    assert _fields("Workload") == {
        "uid": 20, "name": 1, "namespace": 2, "addresses": 3, "hostname": 21, "network": 4,
        "tunnel_protocol": 5, "trust_domain": 6, "service_account": 7, "node": 9,
        "canonical_name": 10, "canonical_revision": 11, "workload_type": 12,
        "workload_name": 13, "status": 17, "cluster_id": 18,
    }
    assert _fields("Service") == {
        "name": 1, "namespace": 2, "hostname": 3, "addresses": 4, "ports": 5,
        "subject_alt_names": 6,
    }
    assert _fields("NetworkAddress") == {"network": 1, "address": 2}
    assert _fields("Port") == {"service_port": 1, "target_port": 2}
    assert dict(workload_pb2.TunnelProtocol.items()) == {
        "NONE": 0, "HBONE": 1, "LEGACY_ISTIO_MTLS": 2,
    }
    assert dict(workload_pb2.WorkloadType.items()) == {
        "DEPLOYMENT": 0, "CRONJOB": 1, "POD": 2, "JOB": 3,
    }
    assert dict(workload_pb2.WorkloadStatus.items()) == {"HEALTHY": 0, "UNHEALTHY": 1}


def test_istio_fields_we_do_not_model_are_reserved_not_reused() -> None:
    """waypoint 8, native_tunnel 14, virtual_ips 15, authorization_policies 16,
    network_gateway 19, services 22, application_tunnel 23, locality 24, network_mode 25,
    extensions 26, capacity 27; Service 7..14; Port.app_protocol 3."""
    assert _reserved("Workload") == {8, 14, 15, 16, 19, 22, 23, 24, 25, 26, 27}
    assert _reserved("Service") == set(range(7, 15))
    assert _reserved("Port") == {3}
    for message in ("Workload", "Service", "Port"):
        assert not _reserved(message) & set(_fields(message).values())


GOLDEN_WORKLOAD = (
    b"\x0a\x01p"                      # name = 1
    b"\x12\x02ns"                     # namespace = 2
    b"\x1a\x04\x0a\x00\x00\x01"       # addresses = 3: 10.0.0.1
    b"\x1a\x10\xfd\x00" + b"\x00" * 13 + b"\x01"  # addresses = 3: fd00::1
    + b"\x28\x01"                     # tunnel_protocol = 5: HBONE
    b"\x32\x07example"                # trust_domain = 6
    b"\x3a\x02sa"                     # service_account = 7
    b"\x4a\x02n1"                     # node = 9
    b"\x52\x03app"                    # canonical_name = 10
    b"\x5a\x02v1"                     # canonical_revision = 11
    b"\x60\x02"                       # workload_type = 12: POD
    b"\x6a\x01p"                      # workload_name = 13
    b"\x88\x01\x01"                   # status = 17: UNHEALTHY
    b"\x92\x01\x01c"                  # cluster_id = 18
    b"\xa2\x01\x0bc//Pod/ns/p"        # uid = 20
)


def _golden() -> workload_pb2.Workload:
    return workload_pb2.Workload(
        uid="c//Pod/ns/p", name="p", namespace="ns",
        addresses=[b"\x0a\x00\x00\x01", b"\xfd\x00" + b"\x00" * 13 + b"\x01"],
        tunnel_protocol=workload_pb2.HBONE, trust_domain="example", service_account="sa",
        node="n1", canonical_name="app", canonical_revision="v1",
        workload_type=workload_pb2.POD, workload_name="p", status=workload_pb2.UNHEALTHY,
        cluster_id="c",
    )


def test_workload_encodes_to_istio_wire_bytes() -> None:
    assert _golden().SerializeToString(deterministic=True) == GOLDEN_WORKLOAD
    assert workload_pb2.Workload.FromString(GOLDEN_WORKLOAD) == _golden()


def test_address_wraps_workload_as_field_1_and_service_as_field_2() -> None:
    address = workload_pb2.Address(workload=_golden())
    assert address.SerializeToString() == b"\x0a" + bytes([len(GOLDEN_WORKLOAD)]) + GOLDEN_WORKLOAD
    service = workload_pb2.Address(service=workload_pb2.Service(name="s"))
    assert service.SerializeToString() == b"\x12\x03\x0a\x01s"


def test_hostname_and_network_numbers() -> None:
    w = workload_pb2.Workload(hostname="h", network="net")
    assert w.SerializeToString() == b"\x22\x03net\xaa\x01\x01h"


def test_workload_from_a_newer_istiod_with_unmodelled_fields_still_decodes() -> None:
    """A waypoint (8) and services map (22) we do not model are skipped, not an error."""
    waypoint = b"\x42\x02\x18\x0f"  # field 8: GatewayAddress{hbone_mtls_port=15}
    services = b"\xb2\x01\x05\x0a\x03a/b"  # field 22: map entry {key "a/b"}
    decoded = workload_pb2.Workload.FromString(GOLDEN_WORKLOAD + waypoint + services)
    assert decoded.uid == "c//Pod/ns/p"
    assert decoded.tunnel_protocol == workload_pb2.HBONE
