"""The committed ca_pb2.py/.pyi/ca_pb2_grpc.py are what ca.proto generates, and the schema is
Istio's istio.v1.auth certificate service (reference 8)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from google.protobuf import struct_pb2

from inmesh.caapi import CREATE_CERTIFICATE_PATH, IMPERSONATED_IDENTITY, ca_pb2

SRC = Path(__file__).resolve().parents[3] / "src"
PROTO_DIR = SRC / "inmesh" / "caapi"


def _mypy_plugin() -> str:
    found = shutil.which("protoc-gen-mypy", path=str(Path(sys.executable).parent))
    assert found, "mypy-protobuf (protoc-gen-mypy) must be installed next to the interpreter"
    return found


def test_generated_code_matches_the_committed_files(tmp_path: Path) -> None:
    """Regenerate from ca.proto into a tmp dir; any drift means someone forgot to regenerate."""
    out = tmp_path / "inmesh" / "caapi"
    out.mkdir(parents=True)
    shutil.copy(PROTO_DIR / "ca.proto", out / "ca.proto")
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}",
            f"--plugin=protoc-gen-mypy={_mypy_plugin()}",
            f"--python_out={tmp_path}", f"--mypy_out={tmp_path}", f"--grpc_python_out={tmp_path}",
            str(out / "ca.proto"),
        ],
        check=True, capture_output=True, timeout=60,
    )
    for name in ("ca_pb2.py", "ca_pb2.pyi", "ca_pb2_grpc.py"):
        assert (out / name).read_text() == (PROTO_DIR / name).read_text(), f"{name} is stale: regenerate it"


def test_schema_keeps_istio_names_and_field_numbers() -> None:
    assert ca_pb2.DESCRIPTOR.package == "istio.v1.auth"
    request = {f.name: (f.number, f.type) for f in ca_pb2.IstioCertificateRequest.DESCRIPTOR.fields}
    assert request == {"csr": (1, 9), "validity_duration": (3, 3), "metadata": (4, 11)}  # string, int64, message
    assert ca_pb2.IstioCertificateRequest.DESCRIPTOR.fields_by_name["metadata"].message_type.full_name == "google.protobuf.Struct"
    response = ca_pb2.IstioCertificateResponse.DESCRIPTOR.fields_by_name["cert_chain"]
    assert (response.number, response.type, response.is_repeated) == (1, 9, True)
    assert CREATE_CERTIFICATE_PATH == "/istio.v1.auth.IstioCertificateService/CreateCertificate"


def test_wire_bytes_of_a_request_are_what_istio_sends() -> None:
    """Golden encoding: csr (field 1), validity_duration (field 3), metadata struct (field 4)."""
    metadata = struct_pb2.Struct()
    metadata.update({IMPERSONATED_IDENTITY: "x"})
    request = ca_pb2.IstioCertificateRequest(csr="C", validity_duration=86400, metadata=metadata)
    inner = b"\n\x14ImpersonatedIdentity\x12\x03\x1a\x01x"  # Struct.fields map entry, Value.string_value
    assert request.SerializeToString() == (
        b"\x0a\x01C" + b"\x18\x80\xa3\x05" + b"\x22" + bytes([len(inner) + 2]) + b"\x0a" + bytes([len(inner)]) + inner
    )
