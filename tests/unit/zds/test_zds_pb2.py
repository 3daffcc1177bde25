"""The committed zds_pb2.py/.pyi are what zds.proto generates, and the schema keeps Istio's numbers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from inmesh.zds import zds_pb2

SRC = Path(__file__).resolve().parents[3] / "src"
ZDS_DIR = SRC / "inmesh" / "zds"


def _mypy_plugin() -> str:
    found = shutil.which("protoc-gen-mypy", path=str(Path(sys.executable).parent))
    assert found, "mypy-protobuf (protoc-gen-mypy) must be installed next to the interpreter"
    return found


def test_generated_code_matches_the_committed_files(tmp_path: Path) -> None:
    """Regenerate from zds.proto into a tmp dir; any drift means someone forgot to regenerate."""
    (tmp_path / "inmesh" / "zds").mkdir(parents=True)
    shutil.copy(ZDS_DIR / "zds.proto", tmp_path / "inmesh" / "zds" / "zds.proto")
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}",
            f"--plugin=protoc-gen-mypy={_mypy_plugin()}",
            f"--python_out={tmp_path}", f"--mypy_out={tmp_path}",
            str(tmp_path / "inmesh" / "zds" / "zds.proto"),
        ],
        check=True, capture_output=True, timeout=60,
    )
    for name in ("zds_pb2.py", "zds_pb2.pyi"):
        generated = (tmp_path / "inmesh" / "zds" / name).read_text()
        assert generated == (ZDS_DIR / name).read_text(), f"{name} is stale: regenerate it"


def test_schema_keeps_istio_field_numbers() -> None:
    """Reference 5.2 and edge case 5: Del uid is field 2, keep is field 5, 4 is unused."""
    fields = {
        msg: {f.name: f.number for f in getattr(zds_pb2, msg).DESCRIPTOR.fields}
        for msg in ("ZdsHello", "WorkloadInfo", "AddWorkload", "KeepWorkload", "DelWorkload",
                    "Ack", "WorkloadRequest", "WorkloadResponse")
    }
    assert fields == {
        "ZdsHello": {"version": 1},
        "WorkloadInfo": {"name": 1, "namespace": 2, "service_account": 3},
        "AddWorkload": {"uid": 1, "workload_info": 2},
        "KeepWorkload": {"uid": 1},
        "DelWorkload": {"uid": 2},
        "Ack": {"error": 1},
        "WorkloadRequest": {"add": 1, "del": 2, "snapshot_sent": 3, "keep": 5},
        "WorkloadResponse": {"ack": 1},
    }
    assert zds_pb2.DESCRIPTOR.package == "istio.workload.zds"
    assert dict(zds_pb2.Version.items()) == {"NOT_USED": 0, "V1": 1}
    info = descriptor_pb2.DescriptorProto()
    zds_pb2.WorkloadInfo.DESCRIPTOR.CopyToProto(info)
    assert [(r.start, r.end) for r in info.reserved_range] == [(4, 5)]
    assert list(info.reserved_name) == ["trust_domain"]
