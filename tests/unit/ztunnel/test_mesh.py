"""The shared mesh state: wanted certificates follow the served pods, TLS contexts are built once
per certificate, and the config dump shows each pod's identity, certificate and pool."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from inmesh.identity import SpiffeId
from inmesh.zds.messages import WorkloadInfo
from inmesh.ztunnel.mesh import Mesh
from inmesh.ztunnel.routing import HboneRoute
from inmesh.ztunnel.workloads import WorkloadTable
from tests.unit.ztunnel.fakes import FakeCerts, run
from tests.unit.ztunnel.test_workloads import body, table_with

WEB = WorkloadInfo("web-0", "shop", "web")
DB = WorkloadInfo("db-0", "shop", "db")


def make_mesh(tmp_path: Path, table: WorkloadTable | None = None) -> tuple[Mesh, FakeCerts]:
    certs = FakeCerts(tmp_path / "ca")
    return Mesh(table or WorkloadTable(), certs, node="n1", trust_domain="cluster.local"), certs


def test_wanted_identities_are_those_of_the_pods_served(tmp_path: Path) -> None:
    mesh, certs = make_mesh(tmp_path)
    mesh.want([WEB, DB, WorkloadInfo("web-1", "shop", "web")])
    mesh.want([DB])
    assert certs.wanted == [{SpiffeId("cluster.local", "shop", "web"),
                             SpiffeId("cluster.local", "shop", "db")},
                            {SpiffeId("cluster.local", "shop", "db")}]


def test_a_pod_without_a_usable_identity_is_left_out_and_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mesh, certs = make_mesh(tmp_path)
    with caplog.at_level(logging.WARNING):
        mesh.want([WEB, WorkloadInfo("bad-0", "Not_A_Namespace", "x")])
    assert certs.wanted == [{SpiffeId("cluster.local", "shop", "web")}]
    assert "Not_A_Namespace/bad-0 has no usable identity" in caplog.text


def test_the_local_workloads_trust_domain_wins(tmp_path: Path) -> None:
    table = table_with(**{"web-0": body("web-0", node="n1", trust_domain="example.org")})
    mesh, _ = make_mesh(tmp_path, table)
    assert mesh.identity_of(WEB) == SpiffeId("example.org", "shop", "web")
    assert mesh.identity_of(DB) == SpiffeId("cluster.local", "shop", "db")  # not in xDS


def test_routes_come_from_the_table(tmp_path: Path) -> None:
    from inmesh.ztunnel.addressing import Endpoint

    table = table_with(**{"db-0": body("db-0", ("10.0.0.2",), hbone=True)})
    mesh, _ = make_mesh(tmp_path, table)
    assert isinstance(mesh.route(Endpoint("10.0.0.2", 5432)), HboneRoute)


def test_tls_contexts_are_reused_until_the_certificate_changes(tmp_path: Path) -> None:
    mesh, certs = make_mesh(tmp_path)
    web = SpiffeId("cluster.local", "shop", "web")

    async def go() -> None:
        first = await mesh.client_context(web)
        assert await mesh.client_context(web) is first
        server = await mesh.server_context(web)
        assert server is not first
        certs.renew(web)
        assert await mesh.client_context(web) is not first
        assert await mesh.server_context(web) is not server

    run(go())


def test_pod_dump_shows_identity_certificate_and_pool(tmp_path: Path) -> None:
    mesh, certs = make_mesh(tmp_path)
    web = SpiffeId("cluster.local", "shop", "web")
    bundle = certs.renew(web)
    mesh.register_debug("u1", lambda: {"dials": 1})
    dump = mesh.pod_dump("u1", WEB)
    assert dump == {"identity": web.uri,
                    "certificate": {"identity": web.uri, "state": "available",
                                    "not_after": bundle.not_after.isoformat()},
                    "hbone": {"dials": 1}}
    mesh.register_debug("u1", None)
    assert "hbone" not in mesh.pod_dump("u1", WEB)
    assert mesh.pod_dump("u2", DB)["certificate"] is None
