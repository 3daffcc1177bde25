"""The backend shells with fake commands and routes: what they run, when, and how they fail."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from inmesh.errors import ConfigError, KernelError
from inmesh.redirect import IptablesBackend, NftablesBackend, RedirectSpec, select_backend
from inmesh.redirect import backend as backend_mod
from inmesh.redirect.backend import ToolMissingError, refuse_own_netns, run_command
from inmesh.redirect.routes import FamilyRoutes, RouteState
from tests.unit.redirect.fakes import FakeXtables

GOLDEN = Path(__file__).parent / "golden"
NS = "/run/netns/imt-fake"


class FakeRoutes:
    def __init__(self, fixes: bool = True) -> None:
        self.state: RouteState = {4: FamilyRoutes(0, "absent"), 6: FamilyRoutes(0, "absent")}
        self.fixes = fixes
        self.removed = 0

    def read_state(self, netns_path: str) -> RouteState:
        return dict(self.state)

    def apply(self, netns_path: str, spec: RedirectSpec) -> bool:
        want = {f: FamilyRoutes(1, "ok") if f in spec.families() else FamilyRoutes(0, "absent")
                for f in (4, 6)}
        changed = want != self.state
        if self.fixes:
            self.state = want
        return changed

    def remove(self, netns_path: str) -> None:
        self.removed += 1
        self.state = {4: FamilyRoutes(0, "absent"), 6: FamilyRoutes(0, "absent")}


class FakeIptables:
    """Runs iptables-save/-restore against one FakeXtables per family; records every argv."""

    def __init__(self, have_ip6tables: bool = True) -> None:
        self.xt = {"iptables": FakeXtables(), "ip6tables": FakeXtables()}
        self.calls: list[list[str]] = []
        self.have_ip6tables = have_ip6tables
        self.fail_restore = False

    def __call__(self, argv: Sequence[str], stdin: str | None) -> str:
        assert list(argv[:3]) == ["nsenter", f"--net={NS}", "--"]
        cmd = list(argv[3:])
        self.calls.append(cmd)
        tool, _, verb = cmd[0].rpartition("-")
        if tool == "ip6tables" and not self.have_ip6tables:
            raise ToolMissingError("nsenter: failed to execute ip6tables-save")
        if verb == "save":
            return self.xt[tool].save()
        if self.fail_restore:
            raise KernelError("exit 1: iptables-restore: line 3 failed")
        assert stdin is not None
        self.xt[tool].restore(stdin)
        return ""

    def restores(self) -> list[str]:
        return [c[0] for c in self.calls if c[0].endswith("restore")]


def _ipt(runner: FakeIptables, routes: FakeRoutes | None = None) -> IptablesBackend:
    return IptablesBackend(runner=runner, route_ops=routes or FakeRoutes(), guard=lambda p: None)


def test_first_apply_restores_each_enabled_family_once_then_is_a_no_op() -> None:
    runner = FakeIptables()
    backend = _ipt(runner)
    spec = RedirectSpec(ipv6=True)
    assert backend.apply(NS, spec) is True
    assert runner.restores() == ["iptables-restore", "ip6tables-restore"]
    assert ["iptables-restore", "--noflush", "-w", "10"] in runner.calls
    runner.calls.clear()
    assert backend.apply(NS, spec) is False
    assert runner.restores() == []
    assert backend.verify(NS, spec) == []


def test_restore_input_is_the_golden_text() -> None:
    runner = FakeIptables()
    _ipt(runner).apply(NS, RedirectSpec(dns_capture=True))
    assert runner.xt["iptables"].save().count("-A ") == \
        (GOLDEN / "dns.v4.restore").read_text().count("-A ")


def test_failures_name_the_netns_and_the_command() -> None:
    runner = FakeIptables()
    runner.fail_restore = True
    with pytest.raises(KernelError, match=f"iptables-restore --noflush -w 10 in netns {NS} failed"):
        _ipt(runner).apply(NS, RedirectSpec())


def test_missing_ip6tables_only_matters_when_ipv6_is_wanted() -> None:
    runner = FakeIptables(have_ip6tables=False)
    assert _ipt(runner).apply(NS, RedirectSpec()) is True
    with pytest.raises(ToolMissingError, match=NS):
        _ipt(runner).apply(NS, RedirectSpec(ipv6=True))


def test_apply_raises_when_the_kernel_still_differs_afterwards() -> None:
    with pytest.raises(KernelError, match="still differ after apply: ip -4 rule"):
        _ipt(FakeIptables(), FakeRoutes(fixes=False)).apply(NS, RedirectSpec())


def test_remove_restores_the_removal_plan_and_removes_routes() -> None:
    runner, routes = FakeIptables(), FakeRoutes()
    backend = _ipt(runner, routes)
    backend.apply(NS, RedirectSpec(ipv6=True, dns_capture=True))
    runner.xt["iptables"].add("nat", "-A OUTPUT -p udp -j ACCEPT")
    assert backend.installed(NS)
    backend.remove(NS)
    assert not backend.installed(NS)
    assert "ISTIO" not in runner.xt["iptables"].save() + runner.xt["ip6tables"].save()
    assert "-A OUTPUT -p udp -j ACCEPT" in runner.xt["iptables"].save()
    runner.calls.clear()
    backend.remove(NS)
    assert runner.restores() == []
    assert routes.removed == 2


def test_guard_runs_before_anything_else() -> None:
    runner = FakeIptables()

    def refuse(path: str) -> None:
        raise KernelError(f"refusing to change {path}")

    backend = IptablesBackend(runner=runner, route_ops=FakeRoutes(), guard=refuse)
    for call in (lambda: backend.apply(NS, RedirectSpec()), lambda: backend.remove(NS),
                 lambda: backend.verify(NS, RedirectSpec()), lambda: backend.installed(NS)):
        with pytest.raises(KernelError, match="refusing"):
            call()
    assert runner.calls == []


class FakeNft:
    """Serves `nft -j list` from a list of documents (the last one repeats); records scripts."""

    def __init__(self, *documents: str) -> None:
        self.documents = list(documents)
        self.scripts: list[str] = []

    def __call__(self, argv: Sequence[str], stdin: str | None) -> str:
        cmd = list(argv[3:])
        if cmd == ["nft", "-f", "-"]:
            assert stdin is not None
            self.scripts.append(stdin)
            return ""
        assert cmd == ["nft", "-j", "list", "ruleset", "inet"]
        return self.documents.pop(0) if len(self.documents) > 1 else self.documents[0]


EMPTY = json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}]})


def _nft(runner: FakeNft) -> NftablesBackend:
    return NftablesBackend(runner=runner, route_ops=FakeRoutes(), guard=lambda p: None)


def test_nft_apply_runs_one_transaction_then_verifies() -> None:
    runner = FakeNft(EMPTY, (GOLDEN / "kernel" / "dns.nft.json").read_text())
    assert _nft(runner).apply(NS, RedirectSpec(dns_capture=True)) is True
    assert runner.scripts == [(GOLDEN / "dns.nft").read_text()]


def test_nft_apply_in_sync_changes_nothing() -> None:
    runner = FakeNft((GOLDEN / "kernel" / "ipv4.nft.json").read_text())
    backend = _nft(runner)
    backend.apply(NS, RedirectSpec())
    runner.scripts.clear()
    assert backend.apply(NS, RedirectSpec()) is False
    assert runner.scripts == []


def test_nft_remove_deletes_tables_only_when_present() -> None:
    runner = FakeNft((GOLDEN / "kernel" / "ipv4.nft.json").read_text(), EMPTY)
    backend = _nft(runner)
    backend.remove(NS)
    backend.remove(NS)
    assert len(runner.scripts) == 1
    assert runner.scripts[0].startswith("add table inet istio-ambient-nat\ndelete table")


def _version_runner(json_line: str) -> backend_mod.Runner:
    def run(argv: Sequence[str], stdin: str | None) -> str:
        assert list(argv) == ["nft", "-V"]
        return f"nftables v1.0.6\n  cli:\t\teditline\n  json:\t\t{json_line}\n"
    return run


def test_select_backend_explicit_and_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    assert select_backend("iptables").name == "iptables"
    assert select_backend("nftables").name == "nftables"
    with pytest.raises(ConfigError, match="unknown rule backend"):
        select_backend("ebpf")
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/sbin/{name}")
    assert select_backend("auto", runner=_version_runner("yes")).name == "nftables"
    assert select_backend("auto", runner=_version_runner("no")).name == "iptables"
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match="no rule backend"):
        select_backend("auto", runner=_version_runner("yes"))


def test_run_command_maps_outcomes_to_errors() -> None:
    assert run_command(["echo", "hi"]) == "hi\n"
    assert run_command(["cat"], "in") == "in"
    with pytest.raises(KernelError, match="exit 1"):
        run_command(["false"])
    with pytest.raises(ToolMissingError, match="not installed"):
        run_command(["inmesh-no-such-tool"])


def test_guard_refuses_a_file_that_is_not_a_netns(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(KernelError, match="not a network namespace"):
        refuse_own_netns(os.fspath(plain))


def test_guard_refuses_our_own_netns() -> None:
    with pytest.raises(KernelError, match="refusing to change"):
        refuse_own_netns("/proc/self/ns/net")


def test_unreadable_tool_output_names_the_netns() -> None:
    def garbage(argv: Sequence[str], stdin: str | None) -> str:
        return "this is not iptables-save output\n" if "save" in argv[-1] else "{"

    with pytest.raises(KernelError, match=f"iptables-save in netns {NS}"):
        IptablesBackend(runner=garbage, route_ops=FakeRoutes(), guard=lambda p: None).verify(
            NS, RedirectSpec())
    with pytest.raises(KernelError, match=f"nft -j list in netns {NS}"):
        NftablesBackend(runner=garbage, route_ops=FakeRoutes(), guard=lambda p: None).verify(
            NS, RedirectSpec())
