"""`inmesh ztunnel` turns its flags into ZtunnelSettings and refuses bad ones before starting."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from inmesh.cli.main import app
from inmesh.ztunnel import app as ztunnel_app
from inmesh.ztunnel.addressing import HostPort
from inmesh.ztunnel.settings import MeshSettings, ZtunnelSettings


def test_flags_become_settings_and_the_exit_status_is_run_s(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ZtunnelSettings] = []

    def fake_run(settings: ZtunnelSettings) -> int:
        seen.append(settings)
        return 3

    monkeypatch.setattr(ztunnel_app, "run", fake_run)
    result = CliRunner().invoke(app, [
        "ztunnel", "--node", "node-1", "--zds-socket", "/run/z.sock",
        "--admin-addr", "127.0.0.1:16000", "--metrics-addr", "[::]:16020",
        "--readiness-addr", "0.0.0.0:16021", "--drain-deadline", "25",
        "--connect-timeout", "2.5", "--listen-backlog", "512"])
    assert result.exit_code == 3, result.output
    (s,) = seen
    assert (s.node_name, s.zds_socket, s.drain_deadline) == ("node-1", "/run/z.sock", 25.0)
    assert (s.admin_addr, s.metrics_addr, s.readiness_addr) == (
        HostPort("127.0.0.1", 16000), HostPort("::", 16020), HostPort("0.0.0.0", 16021))
    assert (s.proxy.connect_timeout, s.proxy.listen_backlog) == (2.5, 512)


@pytest.mark.parametrize(("cpus", "flag", "expected"), [
    (2, [], 1), (1, [], 0), (None, [], 0), (8, ["--inbound-workers", "0"], 0),
    (1, ["--inbound-workers", "3"], 3)])
def test_inbound_workers_default_to_one_on_multi_cpu_machines(
        cpus: int | None, flag: list[str], expected: int, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ZtunnelSettings] = []
    monkeypatch.setattr(ztunnel_app, "run", lambda s: seen.append(s) or 0)
    monkeypatch.setattr("os.cpu_count", lambda: cpus)
    result = CliRunner().invoke(app, ["ztunnel", "--node", "n", "--zds-socket", "/z", *flag])
    assert result.exit_code == 0, result.output
    assert seen[0].inbound_workers == expected


@pytest.mark.parametrize("args", [
    ["--admin-addr", "localhost:1"],
    ["--drain-deadline", "-1"],
    ["--listen-backlog", "0"],
    ["--log-level", "loud"],
    ["--inbound-workers", "-1"],
    ["--inbound-workers", "65"],
])
def test_bad_flags_exit_2_without_running(args: list[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[object] = []
    monkeypatch.setattr(ztunnel_app, "run", lambda s: ran.append(s) or 0)
    result = CliRunner().invoke(app, ["ztunnel", "--node", "n", "--zds-socket", "/z", *args])
    assert result.exit_code == 2
    assert ran == []


def test_node_and_zds_socket_are_required() -> None:
    assert CliRunner().invoke(app, ["ztunnel", "--node", "n"]).exit_code == 2


def test_controlplane_flags_become_mesh_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ZtunnelSettings] = []
    monkeypatch.setattr(ztunnel_app, "run", lambda s: seen.append(s) or 0)
    result = CliRunner().invoke(app, [
        "ztunnel", "--node", "n1", "--zds-socket", "/z", "--controlplane", "unix:/run/cp.sock",
        "--node-credentials", "/etc/inmesh/node", "--trust-domain", "example.org"])
    assert result.exit_code == 0, result.output
    (s,) = seen
    assert s.mesh == MeshSettings(controlplane="unix:/run/cp.sock",
                                  node_credentials="/etc/inmesh/node", trust_domain="example.org")


def test_without_controlplane_there_is_no_mesh(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ZtunnelSettings] = []
    monkeypatch.setattr(ztunnel_app, "run", lambda s: seen.append(s) or 0)
    assert CliRunner().invoke(app, ["ztunnel", "--node", "n", "--zds-socket", "/z"]).exit_code == 0
    assert seen[0].mesh is None


@pytest.mark.parametrize("args", [
    ["--controlplane", "cp:15012"],
    ["--node-credentials", "/c"],
    ["--controlplane", "cp:15012", "--node-credentials", "/c", "--trust-domain", "Bad Domain"],
])
def test_mesh_flags_must_be_complete_and_valid(args: list[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[object] = []
    monkeypatch.setattr(ztunnel_app, "run", lambda s: ran.append(s) or 0)
    result = CliRunner().invoke(app, ["ztunnel", "--node", "n", "--zds-socket", "/z", *args])
    assert result.exit_code == 2
    assert ran == []


def test_an_unusable_credential_dir_exits_2_with_the_reason(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "ztunnel", "--node", "n", "--zds-socket", str(tmp_path / "z.sock"),
        "--controlplane", f"unix:{tmp_path}/cp.sock", "--node-credentials", str(tmp_path / "no"),
        "--admin-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
        "--readiness-addr", "127.0.0.1:0"])
    assert result.exit_code == 2
    assert "node credential" in result.output
