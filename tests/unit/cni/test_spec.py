"""The CNI protocol parser: env + stdin into requests, the error codes of the spec, result versions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inmesh.cni import spec
from inmesh.cni.spec import CniError, Command, K8sArgs, parse_request

CONF = {"cniVersion": "1.0.0", "name": "podnet", "type": "inmesh-cni"}
RESULT_100 = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:00:05", "sandbox": "/var/run/netns/p"}],
    "ips": [
        {"address": "10.244.0.5/24", "gateway": "10.244.0.1", "interface": 0},
        {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 0},
    ],
    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
    "dns": {"nameservers": ["10.96.0.10"]},
}


def env(command: str = "ADD", **extra: str) -> dict[str, str]:
    base = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "abc123",
        "CNI_NETNS": "/var/run/netns/cni-1",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1",
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v != "<unset>"}


def stdin(**overrides: Any) -> bytes:
    return json.dumps({**CONF, **overrides}).encode()


def code_of(environ: dict[str, str], data: bytes) -> int:
    with pytest.raises(CniError) as info:
        parse_request(environ, data)
    return info.value.code


# --- environment ---------------------------------------------------------------------------


def test_add_request_carries_every_variable_and_the_config() -> None:
    req = parse_request(env(), stdin(prevResult=RESULT_100))
    assert req.command is Command.ADD
    assert (req.container_id, req.netns, req.ifname) == ("abc123", "/var/run/netns/cni-1", "eth0")
    assert req.path == ("/opt/cni/bin", "/usr/lib/cni")
    assert dict(req.args) == {
        "IgnoreUnknown": "1",
        "K8S_POD_NAMESPACE": "shop",
        "K8S_POD_NAME": "web-1",
    }
    assert req.config is not None
    assert (req.config.cni_version, req.config.name, req.config.type) == (
        "1.0.0",
        "podnet",
        "inmesh-cni",
    )
    assert req.config.prev_result == RESULT_100
    assert req.cni_version == "1.0.0"


def test_missing_command_is_invalid_environment() -> None:
    assert code_of(env(CNI_COMMAND="<unset>"), stdin()) == spec.ERR_INVALID_ENV


def test_unknown_command_is_invalid_environment() -> None:
    with pytest.raises(CniError, match="unknown CNI_COMMAND") as info:
        parse_request(env("ATTACH"), stdin())
    assert info.value.code == 4


@pytest.mark.parametrize("command", ["ADD", "CHECK"])
def test_add_and_check_need_a_netns(command: str) -> None:
    with pytest.raises(CniError, match=r"\[CNI_NETNS\] missing") as info:
        parse_request(env(command, CNI_NETNS=""), stdin(prevResult=RESULT_100))
    assert info.value.code == 4


def test_missing_variables_are_all_named() -> None:
    with pytest.raises(CniError, match=r"\[CNI_CONTAINERID,CNI_IFNAME,CNI_PATH\]"):
        parse_request(env(CNI_CONTAINERID="", CNI_IFNAME="<unset>", CNI_PATH=""), stdin())


def test_del_accepts_an_empty_netns_and_no_prev_result() -> None:
    req = parse_request(env("DEL", CNI_NETNS=""), stdin())
    assert req.command is Command.DEL
    assert req.netns == ""
    assert req.config is not None
    assert req.config.prev_result is None


def test_version_needs_only_the_command_and_echoes_a_known_version() -> None:
    req = parse_request({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "0.4.0"}')
    assert req.cni_version == "0.4.0"
    assert spec.version_reply(req.cni_version) == {
        "cniVersion": "0.4.0",
        "supportedVersions": ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }


@pytest.mark.parametrize("data", [b"", b"garbage", b'{"cniVersion": "7.0.0"}', b"[1]"])
def test_version_answers_in_our_version_when_the_request_names_none_we_know(data: bytes) -> None:
    assert parse_request({"CNI_COMMAND": "VERSION"}, data).cni_version == spec.CURRENT_VERSION


@pytest.mark.parametrize("container_id", ["-leading-dash", "has space", "a/b", "ü"])
def test_invalid_container_id_is_invalid_environment(container_id: str) -> None:
    assert code_of(env(CNI_CONTAINERID=container_id), stdin()) == spec.ERR_INVALID_ENV


@pytest.mark.parametrize(
    "ifname", ["a" * 16, "ü" * 8, ".", "..", "eth/0", "eth:0", "eth 0", "eth\u2003", "\ud800"]
)
def test_invalid_interface_name_is_invalid_environment(ifname: str) -> None:
    assert code_of(env(CNI_IFNAME=ifname), stdin()) == spec.ERR_INVALID_ENV


# --- CNI_ARGS --------------------------------------------------------------------------------


def test_cni_args_podman_style_with_only_a_pod_name() -> None:
    args = spec.parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=web")
    assert K8sArgs.from_args(args) == K8sArgs("web", None, None, None)


def test_cni_args_all_kubernetes_keys() -> None:
    args = spec.parse_cni_args(
        "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u-1"
    )
    assert K8sArgs.from_args(args) == K8sArgs("p", "ns", "u-1", "c1")


def test_cni_args_tolerates_empty_segments_and_equals_in_values() -> None:
    assert spec.parse_cni_args(";A=1;;B=x=y;") == {"A": "1", "B": "x=y"}
    assert spec.parse_cni_args("") == {}


@pytest.mark.parametrize("text", ["novalue", "=v", "A=1;junk"])
def test_cni_args_without_a_key_value_pair_is_invalid_environment(text: str) -> None:
    assert code_of(env(CNI_ARGS=text), stdin()) == spec.ERR_INVALID_ENV


@given(
    st.dictionaries(
        st.text(st.characters(blacklist_characters=";="), min_size=1),
        st.text(st.characters(blacklist_characters=";")),
    )
)
def test_cni_args_round_trip(args: dict[str, str]) -> None:
    assert spec.parse_cni_args(spec.format_cni_args(args)) == args


# --- the config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"{not json", spec.ERR_DECODE),
        (b"\xff\xfe\x00garbage", spec.ERR_DECODE),
        (b"[]", spec.ERR_DECODE),
        (b'{"cniVersion": "1.0.0", "name": "n", "x": NaN}', spec.ERR_DECODE),
        (b"[" * 100_000, spec.ERR_DECODE),
        (json.dumps({**CONF, "cniVersion": 1}).encode(), spec.ERR_DECODE),
        (json.dumps({**CONF, "prevResult": []}).encode(), spec.ERR_DECODE),
        (json.dumps({**CONF, "cniVersion": "0.5.0"}).encode(), spec.ERR_INCOMPATIBLE_VERSION),
        (json.dumps({**CONF, "name": ""}).encode(), spec.ERR_INVALID_CONFIG),
        (json.dumps({**CONF, "name": "bad name"}).encode(), spec.ERR_INVALID_CONFIG),
    ],
)
def test_config_errors_get_the_spec_codes(data: bytes, code: int) -> None:
    assert code_of(env(), data) == code


def test_config_larger_than_the_bound_is_refused_undecoded() -> None:
    huge = b" " * (spec.MAX_CONFIG_BYTES + 1)
    assert code_of(env(), huge) == spec.ERR_DECODE


def test_config_without_a_version_is_version_0_1_0() -> None:
    data = json.dumps({"name": "legacy", "type": "x"}).encode()
    assert parse_request(env(), data).cni_version == "0.1.0"


@pytest.mark.parametrize("version", spec.SUPPORTED_VERSIONS)
def test_every_supported_version_is_accepted(version: str) -> None:
    assert parse_request(env(), stdin(cniVersion=version)).cni_version == version


def test_check_before_0_4_0_is_an_incompatible_version() -> None:
    assert code_of(env("CHECK"), stdin(cniVersion="0.3.1")) == spec.ERR_INCOMPATIBLE_VERSION


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_and_status_need_a_1_1_0_config(command: str) -> None:
    assert code_of({"CNI_COMMAND": command}, stdin()) == spec.ERR_INCOMPATIBLE_VERSION
    req = parse_request({"CNI_COMMAND": command}, stdin(cniVersion="1.1.0"))
    assert req.command.value == command


# --- errors ----------------------------------------------------------------------------------


def test_error_object_has_the_four_spec_fields() -> None:
    err = CniError(11, "agent down", "socket /x")
    assert err.to_json("1.0.0") == {
        "cniVersion": "1.0.0",
        "code": 11,
        "msg": "agent down",
        "details": "socket /x",
    }
    assert spec.error_object(7, "bad") == {
        "cniVersion": spec.CURRENT_VERSION,
        "code": 7,
        "msg": "bad",
        "details": "",
    }


# --- results ---------------------------------------------------------------------------------

RESULT_040 = {
    **RESULT_100,
    "cniVersion": "0.4.0",
    "ips": [
        {"version": "4", "address": "10.244.0.5/24", "gateway": "10.244.0.1", "interface": 0},
        {"version": "6", "address": "fd00::5/64", "gateway": "fd00::1", "interface": 0},
    ],
}
RESULT_020 = {
    "cniVersion": "0.2.0",
    "ip4": {"ip": "10.244.0.5/24", "gateway": "10.244.0.1", "routes": [{"dst": "0.0.0.0/0"}]},
    "ip6": {"ip": "fd00::5/64", "gateway": "fd00::1", "routes": [{"dst": "::/0"}]},
    "dns": {"nameservers": ["10.96.0.10"]},
}


def test_same_version_result_is_unchanged() -> None:
    assert spec.convert_result(RESULT_100, "1.0.0") == RESULT_100


def test_1_0_0_result_gains_ip_versions_at_0_4_0_and_back() -> None:
    assert spec.convert_result(RESULT_100, "0.4.0") == RESULT_040
    assert spec.convert_result(RESULT_040, "1.0.0") == RESULT_100


def test_1_1_0_shares_the_1_0_0_shape() -> None:
    assert spec.convert_result(RESULT_100, "1.1.0") == {**RESULT_100, "cniVersion": "1.1.0"}


def test_legacy_result_converts_to_the_ips_shape() -> None:
    assert spec.convert_result(RESULT_020, "1.0.0") == {
        "cniVersion": "1.0.0",
        "ips": [
            {"address": "10.244.0.5/24", "gateway": "10.244.0.1"},
            {"address": "fd00::5/64", "gateway": "fd00::1"},
        ],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
        "dns": {"nameservers": ["10.96.0.10"]},
    }


def test_ips_shape_converts_to_legacy_with_the_first_address_per_family() -> None:
    assert spec.convert_result(RESULT_100, "0.2.0") == RESULT_020


def test_result_without_a_version_is_read_at_the_target_version() -> None:
    bare = {k: v for k, v in RESULT_100.items() if k != "cniVersion"}
    assert spec.convert_result(bare, "1.0.0") == RESULT_100


@pytest.mark.parametrize(
    "bad",
    [
        {"cniVersion": "1.0.0", "ips": "10.0.0.1/24"},
        {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1"}]},
        {"cniVersion": "1.0.0", "ips": [{"address": "not-an-ip/24"}]},
        {"cniVersion": "0.2.0", "ip4": {"ip": 5}},
        {"cniVersion": "0.2.0", "ip4": "x"},
    ],
)
def test_malformed_result_is_an_invalid_config(bad: dict[str, Any]) -> None:
    with pytest.raises(CniError) as info:
        spec.convert_result(bad, "0.4.0" if bad["cniVersion"] == "1.0.0" else "1.0.0")
    assert info.value.code == spec.ERR_INVALID_CONFIG


# --- properties: only CniError escapes -----------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
ENV_KEYS = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"]
env_text = st.text(st.characters(exclude_categories=()), max_size=20)
"""Any code point, lone surrogates included (os.environ decodes with surrogateescape)."""
commands = st.sampled_from([c.value for c in Command]) | env_text
environs = st.fixed_dictionaries(
    {"CNI_COMMAND": commands},
    optional={k: st.sampled_from(["eth0", "abc", ""]) | env_text for k in ENV_KEYS[1:]},
)


def _parse_or_cni_error(environ: dict[str, str], data: bytes) -> None:
    error: CniError | None = None
    try:
        req = parse_request(environ, data)
    except CniError as exc:
        error = exc
    if error is None:
        assert req.command.value == environ["CNI_COMMAND"]
    else:
        assert isinstance(error.code, int)
        assert error.msg
        json.dumps(error.to_json())


@given(environs, st.binary(max_size=200))
def test_arbitrary_env_and_bytes_raise_only_cni_error(environ: dict[str, str], data: bytes) -> None:
    _parse_or_cni_error(environ, data)


@given(
    environs,
    st.fixed_dictionaries(
        {},
        optional={
            "cniVersion": st.sampled_from(spec.SUPPORTED_VERSIONS) | json_values,
            "name": st.just("net") | json_values,
            "type": json_values,
            "prevResult": json_values,
        },
    ),
)
def test_arbitrary_json_configs_raise_only_cni_error(
    environ: dict[str, str], conf: dict[str, Any]
) -> None:
    _parse_or_cni_error(environ, json.dumps(conf).encode())


results = st.fixed_dictionaries(
    {},
    optional={
        "cniVersion": st.sampled_from(spec.SUPPORTED_VERSIONS) | json_values,
        "ips": st.lists(
            st.fixed_dictionaries(
                {}, optional={"address": st.sampled_from(["10.0.0.1/8", "::1/128"]) | json_values}
            )
        )
        | json_values,
        "ip4": st.fixed_dictionaries({}, optional={"ip": json_values, "routes": json_values})
        | json_values,
        "routes": json_values,
    },
)


@given(results, st.sampled_from(spec.SUPPORTED_VERSIONS))
def test_convert_arbitrary_results_raises_only_cni_error(result: dict[str, Any], to: str) -> None:
    error: CniError | None = None
    try:
        out = spec.convert_result(result, to)
    except CniError as exc:
        error = exc
    if error is None:
        assert out["cniVersion"] == to
    else:
        assert error.code == spec.ERR_INVALID_CONFIG
