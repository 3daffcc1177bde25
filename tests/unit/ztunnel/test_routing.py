"""Pure mesh decisions: HBONE or passthrough per destination, a pod's identity, its baggage, and
the response flag of each tunnel failure."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inmesh.errors import ConfigError, KernelError
from inmesh.hbone import (
    ConnectRejected,
    HboneConnectionError,
    PeerIdentityError,
    StreamResetError,
    Target,
)
from inmesh.identity import SpiffeId
from inmesh.zds.messages import WorkloadInfo
from inmesh.ztunnel.addressing import Endpoint
from inmesh.ztunnel.errors import CaFetchError, CertUnavailable
from inmesh.ztunnel.routing import (
    HboneRoute,
    Passthrough,
    failure_flag,
    pod_identity,
    route_outbound,
    source_baggage,
)
from inmesh.ztunnel.workloads import WorkloadEntry, WorkloadTable
from tests.unit.ztunnel.test_workloads import body, table_with, uid

INFO = WorkloadInfo("web-0", "shop", "web")


def mesh_table() -> WorkloadTable:
    return table_with(**{
        "db-0": body("db-0", ("10.0.0.2", "fd00::2"), hbone=True, trust_domain="example.org"),
        "plain-0": body("plain-0", ("10.0.0.3",)),
    })


def test_an_hbone_workload_is_reached_on_15008_with_the_app_port_as_authority() -> None:
    table = mesh_table()
    route = route_outbound(table, Endpoint("10.0.0.2", 5432))
    assert isinstance(route, HboneRoute)
    assert route.address == Target("10.0.0.2", 15008)
    assert route.authority == Target("10.0.0.2", 5432)
    assert route.identity == SpiffeId("example.org", "shop", "web")  # its xDS identity
    assert route.destination == table.by_name(uid("db-0"))


def test_ipv6_destinations_keep_their_family() -> None:
    route = route_outbound(mesh_table(), Endpoint("fd00::2", 80))
    assert isinstance(route, HboneRoute)
    assert str(route.authority) == "[fd00::2]:80"
    assert route.address == Target("fd00::2", 15008)


def test_a_workload_without_hbone_is_passed_through_with_its_entry() -> None:
    table = mesh_table()
    route = route_outbound(table, Endpoint("10.0.0.3", 80))
    assert route == Passthrough(table.by_name(uid("plain-0")))


@given(st.ip_addresses(v=4).map(str).filter(lambda ip: ip not in ("10.0.0.2", "10.0.0.3")),
       st.integers(1, 65535))
def test_unknown_destinations_are_passed_through(ip: str, port: int) -> None:
    assert route_outbound(mesh_table(), Endpoint(ip, port)) == Passthrough(None)


def _local(trust_domain: str) -> WorkloadEntry:
    return WorkloadEntry(uid="u", name="web-0", namespace="shop", service_account="other",
                         node="n1", ips=("10.0.0.1",), trust_domain=trust_domain)


def test_identity_comes_from_zds_names_and_the_local_trust_domain() -> None:
    assert pod_identity(INFO, _local("example.org"), "cluster.local") == SpiffeId(
        "example.org", "shop", "web")


@pytest.mark.parametrize("local", [None, _local("")])
def test_identity_falls_back_to_the_mesh_trust_domain(local: WorkloadEntry | None) -> None:
    assert pod_identity(INFO, local, "mesh.test").uri == "spiffe://mesh.test/ns/shop/sa/web"


def test_an_empty_service_account_is_default() -> None:
    info = WorkloadInfo("web-0", "shop", "")
    assert pod_identity(info, None, "cluster.local").service_account == "default"


def test_names_that_cannot_form_an_identity_are_a_config_error() -> None:
    with pytest.raises(ConfigError):
        pod_identity(WorkloadInfo("web-0", "Shop_Upper", "web"), None, "cluster.local")


def test_baggage_from_the_local_workload() -> None:
    local = WorkloadEntry(uid="u", name="web-0", namespace="shop", service_account="web",
                          node="n1", ips=(), cluster_id="Kubernetes", workload_type="pod",
                          workload_name="web-0", canonical_name="web", canonical_revision="v1")
    assert source_baggage(INFO, local) == (
        "baggage", "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.pod.name=web-0,"
                   "service.name=web,service.version=v1")


def test_baggage_without_xds_names_what_zds_knows() -> None:
    assert source_baggage(INFO, None) == ("baggage", "k8s.namespace.name=shop,k8s.pod.name=web-0")


def _tls_failure() -> HboneConnectionError:
    try:
        raise HboneConnectionError("handshake") from ssl.SSLError(1, "bad certificate")
    except HboneConnectionError as exc:
        return exc


@pytest.mark.parametrize(("exc", "flag"), [
    (CertUnavailable("no cert"), "IDENTITY_ERROR"),
    (CaFetchError("CA down"), "IDENTITY_ERROR"),
    (ConfigError("bad names"), "IDENTITY_ERROR"),
    (PeerIdentityError("wrong server"), "TLS_FAILURE"),
    (_tls_failure(), "TLS_FAILURE"),
    (HboneConnectionError("connection refused"), "CONNECT"),
    (ConnectRejected("no", 503), "CONNECT"),
    (ConnectRejected("policy", 401), "DENY"),
    (StreamResetError("reset", 10, by_peer=True), "CONNECT"),
    (TimeoutError(), "CONNECT"),
    (ConnectionRefusedError(), "CONNECT"),
    (KernelError("no socket"), "CONNECT"),
])
def test_each_failure_has_its_response_flag(exc: BaseException, flag: str) -> None:
    assert failure_flag(exc) == flag
