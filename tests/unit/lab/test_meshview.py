"""What the proxy's /config_dump says about the mesh: a pod's certificate in every shape it may
take, a pod's tunnel protocol, the xDS link; absent information is never a guess."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from inmesh.lab.meshview import (
    NONE,
    UNKNOWN,
    CertificateStatus,
    certificate_of,
    tunnel_of,
    xds_link_of,
)

WEB = "spiffe://cluster.local/ns/shop/sa/web"
ENTRY = {"identity": WEB, "state": "available", "not_after": "2030-01-01T00:00:00+00:00"}


def test_a_list_of_certificates_as_the_proxy_dumps_them() -> None:
    dump = {"workloadState": {}, "certificates": [{"identity": "spiffe://x/ns/a/sa/b"}, ENTRY]}
    assert certificate_of(WEB, "u1", dump) == CertificateStatus(
        WEB, "available", "2030-01-01T00:00:00+00:00"
    )


def test_inmesh_ztunnel_reports_identity_and_certificate_per_workload() -> None:
    said = "spiffe://cluster.local/ns/shop/sa/web-v2"
    dump = {"workloadState": {"u1": {"state": "Up", "identity": said, "certificate": ENTRY}},
            "mesh": {"certificates": []}}  # fmt: skip
    assert certificate_of(WEB, "u1", dump) == CertificateStatus(
        said, "available", "2030-01-01T00:00:00+00:00"
    )
    pending = {"workloadState": {"u1": {"identity": WEB, "certificate": None}}}
    assert certificate_of(WEB, "u1", pending) == CertificateStatus(WEB, NONE)
    assert certificate_of(WEB, "u1", {"mesh": {"certificates": [ENTRY]}}).state == "available"


def test_istio_style_entries_with_a_cert_chain() -> None:
    entry = {"identity": WEB, "state": "Available",
             "cert_chain": [{"expiration_time": "2030-01-01T00:00:00Z"}]}  # fmt: skip
    got = certificate_of(WEB, "u1", {"certificates": [entry]})
    assert (got.state, got.not_after) == ("Available", "2030-01-01T00:00:00Z")


def test_a_map_by_identity_and_a_per_workload_entry() -> None:
    assert certificate_of(WEB, "u1", {"certificates": {WEB: {"state": "renewing"}}}).state == (
        "renewing"
    )
    dump = {"workloadState": {"u1": {"state": "Up", "certificate": {"state": "initializing"}}}}
    assert certificate_of(WEB, "u1", dump).state == "initializing"


def test_absent_information_is_unknown_and_absent_certificates_are_none() -> None:
    assert certificate_of(WEB, "u1", None).state == UNKNOWN  # proxy did not answer
    assert certificate_of(WEB, "u1", {"workloadState": {}}).state == UNKNOWN  # says nothing
    assert certificate_of(WEB, "u1", {"certificates": []}).state == NONE  # holds none for it
    assert certificate_of("", "u1", {"certificates": [ENTRY]}) == CertificateStatus.none()
    assert certificate_of(WEB, "u1", {"certificates": [{"identity": WEB}]}).state == UNKNOWN
    assert CertificateStatus.none().to_json() == {"identity": "", "state": NONE, "notAfter": None}


_KEYS = st.sampled_from(["certificates", "identity", "state", "not_after", "cert_chain",
                          "workloadState", "u1", "certificate", WEB])  # fmt: skip
_json: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.sampled_from(["certificates", "workloadState", "x"]), _json))
def test_any_json_document_gives_a_status_and_never_raises(dump: dict[str, Any]) -> None:
    got = certificate_of(WEB, "u1", dump)
    state = dump.get("workloadState")
    workload = state.get("u1") if isinstance(state, dict) else None
    said = workload.get("identity") if isinstance(workload, dict) else None
    assert got.identity == (said if isinstance(said, str) and said else WEB)  # proxy's word
    assert isinstance(got.state, str)
    assert got.not_after is None or isinstance(got.not_after, str)


def test_tunnel_protocol_comes_from_the_proxys_discovery_table() -> None:
    table = {"workloads": [{"namespace": "shop", "name": "web", "tunnelProtocol": "HBONE"},
                           {"namespace": "shop", "name": "db", "tunnelProtocol": "NONE"}]}
    dump = {"mesh": {"workloads": table}}  # fmt: skip
    assert tunnel_of("shop", "web", dump) == "HBONE"
    assert tunnel_of("shop", "db", dump) == "NONE"
    assert tunnel_of("shop", "cache", dump) == NONE
    assert tunnel_of("shop", "web", {"workloadState": {}}) == UNKNOWN
    assert tunnel_of("shop", "web", None) == UNKNOWN


def test_xds_link_state() -> None:
    assert xds_link_of({"mesh": {"xds": {"synced": True, "connected": True}}}) == "synced"
    assert xds_link_of({"mesh": {"xds": {"synced": False, "connected": True}}}) == "connected"
    assert xds_link_of({"mesh": {"xds": {}}}) == "disconnected"
    assert xds_link_of({"workloadState": {}}) == NONE  # ztunnel without a control plane
    assert xds_link_of(None) == UNKNOWN


@given(_json)
def test_tunnel_and_link_never_raise(dump: Any) -> None:
    doc = {"mesh": dump}
    assert isinstance(tunnel_of("shop", "web", doc), str)
    assert isinstance(xds_link_of(doc), str)
