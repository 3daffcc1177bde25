"""The CA's gRPC face: Istio's ``istio.v1.auth.IstioCertificateService/CreateCertificate`` on a
grpc.aio server with mutual TLS. The TLS handshake checks the caller's node certificate against
the node CA; this service reads the node name from it, asks `caauth` what the node may have, and
signs. Refusals are gRPC statuses that say why: UNAUTHENTICATED (no node credential),
PERMISSION_DENIED (not your workload, wrong trust domain), INVALID_ARGUMENT (bad CSR/metadata),
INTERNAL (the CA itself can not sign, e.g. its certificate expired).

Also here: the server credentials (mTLS, client auth required, node CA as client roots) and the
client channel credentials a node builds from its node credential dir."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from inmesh.caapi import (
    CA_SERVICE_NAME,
    CHANNEL_OPTIONS,
    CREATE_CERTIFICATE,
    ca_pb2,
)
from inmesh.controlplane import caauth
from inmesh.controlplane.ca import CertificateAuthority
from inmesh.errors import ConfigError
from inmesh.pki import NodeCredential, PkiError, load_csr

log = logging.getLogger(__name__)

__all__ = [
    "CHANNEL_OPTIONS",
    "CaService",
    "add_ca_service",
    "node_channel_credentials",
    "server_credentials",
]
_PEER_CERT = "x509_pem_cert"


class CaService:
    """Handles CreateCertificate. ``default_ttl`` (seconds) applies when the request asks for
    no validity; None means the CA's own default. The CA clamps to its maximum either way."""

    def __init__(
        self,
        ca: CertificateAuthority,
        authorizer: caauth.Authorizer,
        trust_domain: str,
        default_ttl: int | None = None,
    ) -> None:
        self._ca = ca
        self._authorizer = authorizer
        self._trust_domain = trust_domain
        self._default_ttl = default_ttl

    def create_certificate(
        self, request: ca_pb2.IstioCertificateRequest, peer_cert_pems: list[bytes]
    ) -> list[str]:
        """The chain for ``request`` from the caller holding ``peer_cert_pems``, or one of the
        `caauth` refusals."""
        node = caauth.caller_node(peer_cert_pems, self._trust_domain)
        try:
            csr = load_csr(request.csr)
        except PkiError as exc:
            raise caauth.RequestInvalid(f"bad CSR: {exc}") from exc
        metadata: Mapping[str, Any] = json_format.MessageToDict(request.metadata)
        identity = caauth.requested_identity(metadata, csr)
        if request.validity_duration < 0:
            raise caauth.RequestInvalid(
                f"validity_duration must not be negative, got {request.validity_duration}"
            )
        caauth.check_allowed(node, identity, self._trust_domain, self._authorizer)
        try:
            ttl = request.validity_duration or self._default_ttl
            chain = self._ca.sign_request(csr, identity, ttl)
        except PkiError as exc:
            raise caauth.RequestInvalid(str(exc)) from exc
        log.info("issued a certificate for %s to node %s", identity, node)
        return chain

    async def CreateCertificate(  # the gRPC method name
        self, request: ca_pb2.IstioCertificateRequest, context: Any
    ) -> ca_pb2.IstioCertificateResponse:
        peer = context.auth_context().get(_PEER_CERT, [])
        try:
            chain = self.create_certificate(request, list(peer))
        except caauth.CallerUnauthenticated as exc:
            code, message = grpc.StatusCode.UNAUTHENTICATED, str(exc)
        except caauth.RequestDenied as exc:
            code, message = grpc.StatusCode.PERMISSION_DENIED, str(exc)
        except caauth.RequestInvalid as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except ConfigError as exc:  # e.g. an expired CA: ours to fix, not the caller's
            code, message = grpc.StatusCode.INTERNAL, f"the CA can not issue: {exc}"
        else:
            return ca_pb2.IstioCertificateResponse(cert_chain=chain)
        log.warning("refused a certificate to %s: %s %s", context.peer(), code.name, message)
        await context.abort(code, message)
        raise AssertionError("context.abort returned")  # pragma: no cover


def add_ca_service(server: Any, service: CaService) -> None:
    """Register ``service`` on a ``grpc.aio.Server`` (what the generated
    ``add_IstioCertificateServiceServicer_to_server`` does, without its untyped module)."""
    handler = grpc.unary_unary_rpc_method_handler(
        service.CreateCertificate,
        request_deserializer=ca_pb2.IstioCertificateRequest.FromString,
        response_serializer=ca_pb2.IstioCertificateResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(CA_SERVICE_NAME, {CREATE_CERTIFICATE: handler}),)
    )


def server_credentials(node_ca_pem: bytes, serving_key_pem: bytes, serving_cert_pem: bytes) -> Any:
    """``grpc.ServerCredentials`` for the control plane: its serving cert, and client
    certificates required and checked against the node CA."""
    return grpc.ssl_server_credentials(
        [(serving_key_pem, serving_cert_pem)],
        root_certificates=node_ca_pem,
        require_client_auth=True,
    )


def node_channel_credentials(node_cred_dir: Path) -> Any:
    """``grpc.ChannelCredentials`` from a node credential dir: present the node cert, trust the
    node CA. Use with `CHANNEL_OPTIONS`. `ConfigError` if the dir is incomplete."""
    cred = NodeCredential.load(node_cred_dir)
    return grpc.ssl_channel_credentials(
        root_certificates=cred.node_ca_pem,
        private_key=cred.key_pem,
        certificate_chain=cred.cert_pem,
    )
