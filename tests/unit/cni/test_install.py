"""Installing inmesh-cni into a conf dir and bin dir, and reversing it exactly."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from inmesh.cli import cni_cmd
from inmesh.cni.install import (
    RECORD_NAME,
    default_plugin_source,
    install,
    uninstall,
    wait_for_primary_config,
)
from inmesh.errors import ConfigError

BRIDGE_CONF = (
    b'{"cniVersion": "1.0.0", "name": "podnet", "type": "bridge", "bridge": "cni0",\n'
    b' "ipam": {"type": "host-local", "subnet": "10.250.0.0/24"}}\n'
)
CALICO_LIST = (
    b'{"name": "k8s-pod-network", "cniVersion": "0.3.1",\n'
    b' "plugins": [{"type": "calico"}, {"type": "portmap"}]}'
)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    conf, bin_ = tmp_path / "net.d", tmp_path / "bin"
    conf.mkdir()
    bin_.mkdir()
    return conf, bin_


def write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def snapshot(*roots: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under the roots: content and mode."""
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                out[str(path)] = (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
    return out


def chain(path: Path) -> dict[str, Any]:
    obj = json.loads(path.read_bytes())
    assert isinstance(obj, dict)
    return obj


def test_single_conf_is_wrapped_into_a_conflist_with_our_entry_last(
    dirs: tuple[Path, Path],
) -> None:
    conf, bin_ = dirs
    write(conf / "10-bridge.conf", BRIDGE_CONF, 0o640)
    result = install(str(conf), str(bin_), "/run/inmesh", ["kube-system"])
    assert result.wrapped_from == "10-bridge.conf"
    assert result.changed
    assert result.conf_path == str(conf / "10-bridge.conflist")
    assert not (conf / "10-bridge.conf").exists()
    obj = chain(conf / "10-bridge.conflist")
    assert (obj["name"], obj["cniVersion"]) == ("podnet", "1.0.0")
    assert [p["type"] for p in obj["plugins"]] == ["bridge", "inmesh-cni"]
    assert "cniVersion" not in obj["plugins"][0]
    assert obj["plugins"][1]["cni_agent_run_dir"] == "/run/inmesh"
    assert obj["plugins"][1]["exclude_namespaces"] == ["kube-system"]
    assert stat.S_IMODE((conf / "10-bridge.conflist").stat().st_mode) == 0o640


def test_uninstall_restores_the_wrapped_conf_byte_for_byte(dirs: tuple[Path, Path]) -> None:
    conf, bin_ = dirs
    write(conf / "10-bridge.conf", BRIDGE_CONF, 0o640)
    before = snapshot(conf, bin_)
    install(str(conf), str(bin_), "/run/inmesh")
    uninstall(str(conf), str(bin_))
    assert snapshot(conf, bin_) == before


def test_conflist_gets_our_entry_appended_and_keeps_its_mode(dirs: tuple[Path, Path]) -> None:
    conf, bin_ = dirs
    write(conf / "10-calico.conflist", CALICO_LIST, 0o600)
    write(conf / "20-other.conf", BRIDGE_CONF)
    result = install(str(conf), str(bin_), "/run/inmesh")
    assert result.wrapped_from is None
    obj = chain(conf / "10-calico.conflist")
    assert [p["type"] for p in obj["plugins"]] == ["calico", "portmap", "inmesh-cni"]
    assert stat.S_IMODE((conf / "10-calico.conflist").stat().st_mode) == 0o600
    assert (conf / "20-other.conf").read_bytes() == BRIDGE_CONF, "only the primary is touched"


def test_uninstall_restores_a_conflist_byte_for_byte(dirs: tuple[Path, Path]) -> None:
    conf, bin_ = dirs
    write(conf / "10-calico.conflist", CALICO_LIST, 0o600)
    before = snapshot(conf, bin_)
    install(str(conf), str(bin_), "/run/inmesh")
    uninstall(str(conf), str(bin_))
    assert snapshot(conf, bin_) == before


def test_installing_twice_changes_nothing(dirs: tuple[Path, Path]) -> None:
    conf, bin_ = dirs
    write(conf / "10-bridge.conf", BRIDGE_CONF)
    first = install(str(conf), str(bin_), "/run/inmesh", ["kube-system"])
    after_first = snapshot(conf, bin_)
    mtimes = {p: os.stat(p).st_mtime_ns for p in after_first}
    second = install(str(conf), str(bin_), "/run/inmesh", ["kube-system"])
    assert snapshot(conf, bin_) == after_first
    assert {p: os.stat(p).st_mtime_ns for p in after_first} == mtimes
    assert not second.changed
    assert second.wrapped_from == first.wrapped_from == "10-bridge.conf"


def test_new_settings_replace_our_entry_and_uninstall_still_restores_the_original(
    dirs: tuple[Path, Path],
) -> None:
    conf, bin_ = dirs
    write(conf / "10-bridge.conf", BRIDGE_CONF)
    before = snapshot(conf, bin_)
    install(str(conf), str(bin_), "/run/inmesh")
    result = install(str(conf), str(bin_), "/run/other", ["kube-system"], agent_timeout_seconds=3)
    assert result.changed
    plugins = chain(conf / "10-bridge.conflist")["plugins"]
    assert [p["type"] for p in plugins] == ["bridge", "inmesh-cni"]
    assert plugins[1]["cni_agent_run_dir"] == "/run/other"
    assert plugins[1]["agent_timeout_seconds"] == 3
    uninstall(str(conf), str(bin_))
    assert snapshot(conf, bin_) == before


def test_an_inmesh_entry_already_in_the_list_is_replaced_not_duplicated(
    dirs: tuple[Path, Path],
) -> None:
    conf, bin_ = dirs
    stale = {
        "name": "n",
        "cniVersion": "1.0.0",
        "plugins": [{"type": "inmesh-cni", "cni_agent_run_dir": "/old"}, {"type": "bridge"}],
    }
    write(conf / "10-x.conflist", json.dumps(stale).encode())
    install(str(conf), str(bin_), "/run/inmesh")
    plugins = chain(conf / "10-x.conflist")["plugins"]
    assert [(p["type"], p.get("cni_agent_run_dir")) for p in plugins] == [
        ("bridge", None),
        ("inmesh-cni", "/run/inmesh"),
    ]
    uninstall(str(conf), str(bin_))
    assert [p["type"] for p in chain(conf / "10-x.conflist")["plugins"]] == ["bridge"]


def test_uninstall_after_someone_rewrote_the_file_takes_out_only_our_entry(
    dirs: tuple[Path, Path],
) -> None:
    conf, bin_ = dirs
    write(conf / "10-calico.conflist", CALICO_LIST)
    install(str(conf), str(bin_), "/run/inmesh")
    obj = chain(conf / "10-calico.conflist")
    obj["plugins"].insert(1, {"type": "bandwidth"})
    write(conf / "10-calico.conflist", json.dumps(obj).encode())
    uninstall(str(conf), str(bin_))
    assert [p["type"] for p in chain(conf / "10-calico.conflist")["plugins"]] == [
        "calico",
        "bandwidth",
        "portmap",
    ]


def test_uninstall_is_idempotent_and_leaves_no_record_or_binary(dirs: tuple[Path, Path]) -> None:
    conf, bin_ = dirs
    write(conf / "10-bridge.conf", BRIDGE_CONF)
    install(str(conf), str(bin_), "/run/inmesh")
    assert (conf / RECORD_NAME).exists()
    uninstall(str(conf), str(bin_))
    uninstall(str(conf), str(bin_))
    assert sorted(os.listdir(conf)) == ["10-bridge.conf"]
    assert os.listdir(bin_) == []


def test_uninstall_without_install_touches_nothing(dirs: tuple[Path, Path]) -> None:
    conf, bin_ = dirs
    write(conf / "10-calico.conflist", CALICO_LIST)
    before = snapshot(conf, bin_)
    uninstall(str(conf), str(bin_))
    assert snapshot(conf, bin_) == before


def test_no_primary_config_is_a_clear_error(dirs: tuple[Path, Path]) -> None:
    conf, bin_ = dirs
    (conf / "README").write_text("not a config")
    with pytest.raises(ConfigError, match="no primary CNI config"):
        install(str(conf), str(bin_), "/run/inmesh")
    with pytest.raises(ConfigError, match="does not exist"):
        install(str(conf / "missing"), str(bin_), "/run/inmesh")
    assert os.listdir(bin_) == []


def test_wrapping_refuses_to_clobber_a_foreign_conflist(dirs: tuple[Path, Path]) -> None:
    conf, bin_ = dirs
    write(conf / "10-bridge.conf", BRIDGE_CONF)
    write(conf / "10-bridge.conflist", CALICO_LIST)
    with pytest.raises(ConfigError, match="already exists"):
        install(str(conf), str(bin_), "/run/inmesh")
    assert (conf / "10-bridge.conflist").read_bytes() == CALICO_LIST


def test_malformed_primary_config_is_a_config_error(dirs: tuple[Path, Path]) -> None:
    conf, bin_ = dirs
    write(conf / "10-broken.conflist", b"{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        install(str(conf), str(bin_), "/run/inmesh")


def test_copied_executable_is_0755_and_runs_from_the_bin_dir(dirs: tuple[Path, Path]) -> None:
    conf, bin_ = dirs
    write(conf / "10-bridge.conf", BRIDGE_CONF)
    result = install(str(conf), str(bin_), "/run/inmesh")
    assert result.binary_path == str(bin_ / "inmesh-cni")
    assert stat.S_IMODE((bin_ / "inmesh-cni").stat().st_mode) == 0o755
    assert (bin_ / "inmesh-cni").read_bytes() == Path(default_plugin_source()).read_bytes()
    proc = subprocess.run(
        [str(bin_ / "inmesh-cni")],
        input=b"{}",
        env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"},
        cwd="/",
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert "1.0.0" in json.loads(proc.stdout)["supportedVersions"]


def test_missing_plugin_source_is_a_config_error(dirs: tuple[Path, Path]) -> None:
    conf, bin_ = dirs
    write(conf / "10-bridge.conf", BRIDGE_CONF)
    with pytest.raises(ConfigError, match="executable not found"):
        install(str(conf), str(bin_), "/r", plugin_source=str(bin_ / "nope"))
    assert (conf / "10-bridge.conf").read_bytes() == BRIDGE_CONF


def test_wait_for_primary_config_polls_until_the_deadline(dirs: tuple[Path, Path]) -> None:
    conf, _ = dirs
    now = [0.0]
    sleeps: list[float] = []
    appear_at = [0.9]

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds
        if now[0] >= appear_at[0]:
            write(conf / "10-late.conflist", CALICO_LIST)

    assert wait_for_primary_config(str(conf), 5, clock=lambda: now[0], sleep=sleep) == (
        "10-late.conflist"
    )
    assert len(sleeps) == 5
    (conf / "10-late.conflist").unlink()
    appear_at[0] = float("inf")
    with pytest.raises(ConfigError, match=r"after waiting 0\.5s"):
        wait_for_primary_config(str(conf), 0.5, clock=lambda: now[0], sleep=sleep)


# --- the CLI ---------------------------------------------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Stand-in root (the real one composes every process)."""

    cni_cmd.register(app)
    return app


def test_cli_install_and_uninstall(dirs: tuple[Path, Path]) -> None:
    conf, bin_ = dirs
    write(conf / "10-bridge.conf", BRIDGE_CONF)
    before = snapshot(conf, bin_)
    runner = CliRunner()
    argv = ["cni", "install", "--conf-dir", str(conf), "--bin-dir", str(bin_)]
    ns = ["--exclude-namespace", "kube-system", "--exclude-namespace", "istio-system"]
    res = runner.invoke(cli(), [*argv, "--agent-run-dir", "/run/x", *ns])
    assert res.exit_code == 0, res.output
    assert "installed" in res.output
    entry = chain(conf / "10-bridge.conflist")["plugins"][-1]
    assert entry["exclude_namespaces"] == ["kube-system", "istio-system"]
    assert entry["cni_agent_run_dir"] == "/run/x"
    res = runner.invoke(cli(), [*argv, "--agent-run-dir", "/run/x", *ns])
    assert "already installed" in res.output
    res = runner.invoke(
        cli(), ["cni", "uninstall", "--conf-dir", str(conf), "--bin-dir", str(bin_)]
    )
    assert res.exit_code == 0, res.output
    assert snapshot(conf, bin_) == before


def test_cli_install_without_primary_config_exits_non_zero(dirs: tuple[Path, Path]) -> None:
    conf, bin_ = dirs
    res = CliRunner().invoke(
        cli(), ["cni", "install", "--conf-dir", str(conf), "--bin-dir", str(bin_)]
    )
    assert res.exit_code == 2
    assert "no primary CNI config" in res.output
