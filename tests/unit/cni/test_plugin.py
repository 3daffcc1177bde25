"""The inmesh-cni executable, run as the runtime runs it: env + stdin in, one JSON object out.

The agent is a fake HTTP server on a unix socket; the plugin is the installed console script.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inmesh.cni import plugin
from inmesh.cni.plugin import AgentReply, AgentUnreachableError
from inmesh.cni.spec import CniError, CniRequest, Command, NetConf
from tests.unit.cni.conftest import PluginRun, run_plugin
from tests.unit.cni.fake_agent import NOT_MESH, FakeAgent

PREV: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "8a:1c:00:00:00:01"},
        {"name": "eth0", "mac": "0a:58:0a:f4:00:05", "sandbox": "/var/run/netns/cni-test"},
    ],
    "ips": [{"address": "10.244.0.5/24", "gateway": "10.244.0.1", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}],
    "dns": {},
}


def conf(run_dir: str, prev: dict[str, Any] | None = PREV, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": "podnet",
        "type": "inmesh-cni",
        "cni_agent_run_dir": run_dir,
        "exclude_namespaces": ["kube-system"],
        "agent_timeout_seconds": 5,
        **extra,
    }
    if prev is not None:
        obj["prevResult"] = prev
    return obj


def sock(run_dir: str) -> str:
    return os.path.join(run_dir, "pluginevent.sock")


def assert_error(run: PluginRun, code: int) -> dict[str, Any]:
    assert run.returncode != 0
    out = run.output
    assert set(out) == {"cniVersion", "code", "msg", "details"}
    assert out["code"] == code, out
    return out


# --- ADD -------------------------------------------------------------------------------------


def test_add_tells_the_agent_and_prints_prev_result_unchanged(run_dir: str) -> None:
    with FakeAgent(sock(run_dir)) as agent:
        run = run_plugin("ADD", conf(run_dir))
    assert run.returncode == 0, run.stderr
    assert run.output == PREV
    assert agent.requests == [
        (
            "/cmdadd",
            {
                "Netns": "/var/run/netns/cni-test",
                "PodName": "web-1",
                "PodNamespace": "shop",
                "PodUID": "uid-1",
                "ContainerID": "c0ffee01",
                "IfName": "eth0",
                "IPs": [
                    {
                        "Interface": 1,
                        "Address": {"IP": "10.244.0.5", "Mask": "////AA=="},
                        "Gateway": "10.244.0.1",
                    }
                ],
            },
        )
    ]
    assert run.stderr, "logs go to stderr"


def test_add_with_the_agent_down_fails_closed_with_try_again_later(run_dir: str) -> None:
    out = assert_error(run_plugin("ADD", conf(run_dir)), 11)
    assert sock(run_dir) in out["msg"]
    assert "shop/web-1" in out["msg"]


def test_add_with_a_stale_socket_file_fails_with_try_again_later(run_dir: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(sock(run_dir))  # bound, never listening: connect is refused
        assert_error(run_plugin("ADD", conf(run_dir)), 11)


def test_add_with_an_agent_error_carries_its_reply_in_the_message(run_dir: str) -> None:
    with FakeAgent(sock(run_dir), status=500, reply=b"no ztunnel connection"):
        out = assert_error(run_plugin("ADD", conf(run_dir)), 11)
    assert "HTTP 500" in out["msg"]
    assert "no ztunnel connection" in out["msg"]


def test_add_with_a_hung_agent_times_out_with_try_again_later(run_dir: str) -> None:
    with FakeAgent(sock(run_dir), hang=True) as agent:
        out = assert_error(run_plugin("ADD", conf(run_dir, agent_timeout_seconds=0.3)), 11)
    assert "timed out" in out["msg"]
    assert agent.paths() == ["/cmdadd"]


def test_add_for_a_pod_the_agent_leaves_alone_passes_through(run_dir: str) -> None:
    with FakeAgent(sock(run_dir), reply=NOT_MESH) as agent:
        run = run_plugin("ADD", conf(run_dir))
    assert run.returncode == 0
    assert run.output == PREV
    assert agent.paths() == ["/cmdadd"]
    assert "not an ambient pod" in run.stderr


def test_add_in_an_excluded_namespace_does_not_ask_the_agent(run_dir: str) -> None:
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1"
    with FakeAgent(sock(run_dir)) as agent:
        run = run_plugin("ADD", conf(run_dir), args=args)
    assert run.returncode == 0
    assert run.output == PREV
    assert agent.requests == []


def test_add_for_a_sandbox_that_is_not_a_pod_passes_through_even_with_the_agent_down(
    run_dir: str,
) -> None:
    run = run_plugin("ADD", conf(run_dir), args=None)
    assert run.returncode == 0
    assert run.output == PREV


def test_add_with_podman_style_args_assumes_the_default_namespace(run_dir: str) -> None:
    with FakeAgent(sock(run_dir)) as agent:
        run = run_plugin("ADD", conf(run_dir), args="IgnoreUnknown=1;K8S_POD_NAME=web")
    assert run.returncode == 0
    [(path, body)] = agent.requests
    assert (path, body["PodName"], body["PodNamespace"], body["PodUID"]) == (
        "/cmdadd",
        "web",
        "default",
        "",
    )


def test_add_without_prev_result_is_an_invalid_config(run_dir: str) -> None:
    out = assert_error(run_plugin("ADD", conf(run_dir, prev=None)), 7)
    assert "chained" in out["msg"]


def test_add_prints_prev_result_at_the_configs_version(run_dir: str) -> None:
    with FakeAgent(sock(run_dir)):
        run = run_plugin("ADD", conf(run_dir, cniVersion="0.4.0"))
    assert run.returncode == 0
    assert run.output["cniVersion"] == "0.4.0"
    assert run.output["ips"] == [{"version": "4", **PREV["ips"][0]}]


# --- DEL -------------------------------------------------------------------------------------


def test_del_tells_the_agent_and_prints_nothing(run_dir: str) -> None:
    with FakeAgent(sock(run_dir)) as agent:
        run = run_plugin("DEL", conf(run_dir))
    assert run.returncode == 0
    assert run.stdout == b""
    [(path, body)] = agent.requests
    assert path == "/cmddel"
    assert "IPs" not in body
    assert body["PodUID"] == "uid-1"


def test_del_twice_second_time_without_netns_or_prev_result(run_dir: str) -> None:
    with FakeAgent(sock(run_dir)) as agent:
        first = run_plugin("DEL", conf(run_dir))
        second = run_plugin("DEL", conf(run_dir, prev=None), netns="")
    assert (first.returncode, second.returncode) == (0, 0)
    assert (first.stdout, second.stdout) == (b"", b"")
    assert [body["Netns"] for _, body in agent.requests] == ["/var/run/netns/cni-test", ""]


@pytest.mark.parametrize("status", [None, 500])
def test_del_succeeds_when_the_agent_is_down_or_failing(run_dir: str, status: int | None) -> None:
    if status is None:
        run = run_plugin("DEL", conf(run_dir), netns="")
    else:
        with FakeAgent(sock(run_dir), status=status, reply=b"boom"):
            run = run_plugin("DEL", conf(run_dir), netns="")
    assert run.returncode == 0
    assert run.stdout == b""


def test_del_with_a_broken_inmesh_entry_still_succeeds(run_dir: str) -> None:
    run = run_plugin("DEL", conf(run_dir, agent_timeout_seconds="soon"))
    assert run.returncode == 0
    assert "invalid inmesh-cni entry" in run.stderr


# --- CHECK -----------------------------------------------------------------------------------


def test_check_asks_the_agent_and_prints_nothing_on_200(run_dir: str) -> None:
    with FakeAgent(sock(run_dir)) as agent:
        run = run_plugin("CHECK", conf(run_dir))
    assert run.returncode == 0
    assert run.stdout == b""
    [(path, body)] = agent.requests
    assert path == "/cmdcheck"
    assert body["IPs"][0]["Address"]["IP"] == "10.244.0.5"


def test_check_fails_when_the_agent_disagrees(run_dir: str) -> None:
    with FakeAgent(sock(run_dir), status=409, reply=b"rules missing in pod"):
        out = assert_error(run_plugin("CHECK", conf(run_dir)), 100)
    assert "rules missing in pod" in out["msg"]


def test_check_with_the_agent_down_is_try_again_later(run_dir: str) -> None:
    assert_error(run_plugin("CHECK", conf(run_dir)), 11)


def test_check_without_prev_result_is_an_invalid_config(run_dir: str) -> None:
    assert_error(run_plugin("CHECK", conf(run_dir, prev=None)), 7)


# --- VERSION and protocol errors ---------------------------------------------------------------


def test_version_lists_the_supported_versions() -> None:
    run = run_plugin("VERSION", {"cniVersion": "1.0.0"}, unset=("CNI_CONTAINERID", "CNI_PATH"))
    assert run.returncode == 0
    assert run.output == {
        "cniVersion": "1.0.0",
        "supportedVersions": ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }


def test_malformed_stdin_is_a_decode_error(run_dir: str) -> None:
    assert_error(run_plugin("ADD", b'{"cniVersion": "1.0.0", '), 6)


def test_unknown_command_is_invalid_environment(run_dir: str) -> None:
    out = assert_error(run_plugin("FROB", conf(run_dir)), 4)
    assert "FROB" in out["msg"]


def test_missing_required_variable_is_invalid_environment(run_dir: str) -> None:
    out = assert_error(run_plugin("ADD", conf(run_dir), unset=("CNI_IFNAME",)), 4)
    assert "CNI_IFNAME" in out["msg"]


def test_error_object_uses_the_configs_version(run_dir: str) -> None:
    out = assert_error(run_plugin("ADD", conf(run_dir, prev=None, cniVersion="0.3.1")), 7)
    assert out["cniVersion"] == "0.3.1"


def test_importing_the_plugin_stays_light() -> None:
    """The executable runs per pod: it must not drag in the installer, runtime driver or CLI."""
    probe = (
        "import sys, inmesh.cni.plugin\n"
        "heavy = {'inmesh.cni.runtime', 'inmesh.cni.install', 'inmesh.cni.conflist', 'typer',"
        " 'rich', 'asyncio', 'subprocess', 'pyroute2', 'inmesh.netns'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "[]"


# --- run() in process, with a fake transport ---------------------------------------------------


def request(command: Command, raw: dict[str, Any], prev: dict[str, Any] | None) -> CniRequest:
    config = NetConf("1.0.0", "podnet", "inmesh-cni", MappingProxyType(raw), prev)
    args = MappingProxyType({"K8S_POD_NAME": "web", "K8S_POD_NAMESPACE": "shop"})
    return CniRequest(command, "1.0.0", "c1", "/ns", "eth0", args, (), config)


def test_run_maps_a_garbled_agent_reply_to_try_again_later() -> None:
    def garbled(*_: Any) -> AgentReply:
        raise AgentUnreachableError("BadStatusLine: 'junk'")

    with pytest.raises(CniError) as info:
        plugin.run(request(Command.ADD, {}, PREV), garbled)
    assert info.value.code == 11
    assert "BadStatusLine" in info.value.msg


def test_run_sends_del_with_a_capped_timeout() -> None:
    seen: list[tuple[str, float]] = []

    def record(_sock: str, path: str, _body: Any, timeout: float) -> AgentReply:
        seen.append((path, timeout))
        return AgentReply(200, b"{}")

    assert plugin.run(request(Command.DEL, {"agent_timeout_seconds": 60}, None), record) is None
    assert seen == [("/cmddel", 5.0)]


def test_run_gc_and_status_succeed_without_the_agent() -> None:
    def unreachable(*_: Any) -> AgentReply:
        raise AssertionError("GC/STATUS must not call the agent")

    assert plugin.run(request(Command.GC, {}, None), unreachable) is None
    assert plugin.run(request(Command.STATUS, {}, None), unreachable) is None


def test_agent_decision_is_logged_from_its_json_reply() -> None:
    assert plugin._decision(json.dumps({"enrolled": False, "reason": "x"}).encode()) == {
        "enrolled": False,
        "reason": "x",
    }
    assert plugin._decision(b"not json") == {"reply": "not json"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=12,
)
our_keys = st.fixed_dictionaries(
    {},
    optional={
        "cni_agent_run_dir": st.just("/run/x") | json_values,
        "exclude_namespaces": st.just(["shop"]) | json_values,
        "agent_timeout_seconds": st.just(1) | json_values,
    },
)
prev_results = (
    st.none()
    | st.just(PREV)
    | st.dictionaries(st.sampled_from(["cniVersion", "ips", "ip4", "routes"]), json_values)
)


@given(st.sampled_from([Command.ADD, Command.CHECK, Command.DEL]), our_keys, prev_results)
def test_run_on_arbitrary_configs_raises_only_cni_error(
    command: Command, raw: dict[str, Any], prev: dict[str, Any] | None
) -> None:
    def agent(*_: Any) -> AgentReply:
        return AgentReply(200, b"{}")

    error: CniError | None = None
    try:
        out = plugin.run(request(command, raw, prev), agent)
    except CniError as exc:
        error = exc
    if error is None:
        assert out is None or command is Command.ADD
    else:
        assert error.code == 7


def test_main_answers_with_an_error_object_even_on_a_bug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*_: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(plugin, "run", broken)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"cniVersion": "0.4.0"}')))
    monkeypatch.setenv("CNI_COMMAND", "VERSION")
    assert plugin.main() == 1
    out = json.loads(capsys.readouterr().out)
    assert (out["code"], out["cniVersion"]) == (999, "0.4.0")
    assert "bug" in out["msg"]
