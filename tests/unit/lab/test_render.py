"""The status table shows the control plane and each mesh pod's certificate as reported."""

from __future__ import annotations

from rich.console import Console

from inmesh.lab.meshview import CertificateStatus
from inmesh.lab.render import render_status
from inmesh.lab.status import ControlPlaneStatus, LabStatus, PodStatus, ProcessStatus


def _render(status: LabStatus) -> str:
    console = Console(record=True, width=200)
    render_status(status, console)
    return console.export_text()


def _pod(cert: CertificateStatus) -> PodStatus:
    return PodStatus(
        uid="u1", name="web", namespace="shop", node="n1", phase="Running", ips=("10.244.1.2",),
        netns=None, labels={}, wants_mesh=True, reason="", enrollment="enrolled",
        enrollment_error=None, proxy="Up", certificate=cert,
    )  # fmt: skip


def test_control_plane_line_and_certificate_column() -> None:
    cp = ControlPlaneStatus(ProcessStatus("controlplane", 7, True), "unix:/r/cp.sock",
                            "inmesh-ncp", "cluster.local")  # fmt: skip
    cert = CertificateStatus("spiffe://cluster.local/ns/shop/sa/web", "available", "2030-01-01")
    text = _render(LabStatus("/r", True, "nftables", cp, pods=(_pod(cert),)))
    assert "control plane: ready (pid 7) on unix:/r/cp.sock" in text
    assert "trust domain cluster.local" in text
    assert "available until 2030-01-01" in text


def test_a_lab_without_control_plane_says_so() -> None:
    text = _render(LabStatus("/r", True, "nftables", None))
    assert "control plane: none" in text
