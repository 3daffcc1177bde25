"""`inmesh lab` command line: bad input gives one clear line and a non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inmesh.cli import lab_cmd
from inmesh.cli.main import app
from inmesh.lab import lab, settings

runner = CliRunner()


def _invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["lab", *args])
    return result.exit_code, result.stdout, result.stderr


def test_cli_defaults_match_the_lab_package() -> None:
    assert lab_cmd.DEFAULT_ROOT == settings.DEFAULT_ROOT
    assert lab_cmd.ROOT_ENV == settings.ROOT_ENV
    assert lab_cmd.BACKENDS == lab.BACKENDS


@pytest.mark.parametrize("bad", ["nolabel", "a b=c", "k=v v"])
def test_bad_label_syntax_is_one_line_and_exit_2(tmp_path: Path, bad: str) -> None:
    code, _, err = _invoke("label", "namespace", "shop", bad, "--root", str(tmp_path))
    assert code == 2
    assert err.startswith("error: bad ")
    assert err.count("\n") == 1


def test_pod_add_without_a_lab_says_run_up(tmp_path: Path) -> None:
    code, _, err = _invoke("pod", "add", "web", "--root", str(tmp_path / "lab"))
    assert code == 2
    assert "inmesh lab up" in err


def test_unknown_pod_is_an_error(tmp_path: Path) -> None:
    code, _, err = _invoke("label", "pod", "ghost", "a=b", "--root", str(tmp_path))
    assert code == 2
    assert "no pod default/ghost" in err
    code, _, err = _invoke("pod", "del", "ghost", "-n", "shop", "--root", str(tmp_path))
    assert code == 2
    assert "no pod shop/ghost" in err


def test_exec_needs_a_command(tmp_path: Path) -> None:
    result = runner.invoke(app, ["lab", "pod", "exec", "web", "--root", str(tmp_path)])
    assert result.exit_code == 2


def test_label_namespace_updates_the_store(tmp_path: Path) -> None:
    root = str(tmp_path)
    code, out, _ = _invoke("label", "namespace", "shop", "istio.io/dataplane-mode=ambient",
                           "team=a", "--root", root)  # fmt: skip
    assert code == 0
    assert "istio.io/dataplane-mode=ambient" in out
    code, out, _ = _invoke("label", "namespace", "shop", "team-", "--root", root)
    assert code == 0
    doc = json.loads((tmp_path / "cluster.json").read_text())
    assert doc["namespaces"]["shop"]["labels"] == {"istio.io/dataplane-mode": "ambient"}


def test_status_and_down_without_a_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.ROOT_ENV, str(tmp_path / "none"))
    code, out, _ = _invoke("status", "--json")
    assert code == 0
    assert json.loads(out)["exists"] is False
    code, out, _ = _invoke("down")
    assert code == 0
    assert "no lab at" in out


def test_up_rejects_a_bad_backend(tmp_path: Path) -> None:
    code, _, err = _invoke("up", "--backend", "ebpf", "--root", str(tmp_path))
    assert code == 2
    assert "bad backend 'ebpf'" in err


def test_up_with_a_malformed_trust_domain_is_exit_2(tmp_path: Path) -> None:
    code, _, err = _invoke("up", "--trust-domain", "Bad Domain", "--root", str(tmp_path / "l"))
    assert code == 2
    assert "invalid trust domain" in err
    assert not (tmp_path / "l").exists()
