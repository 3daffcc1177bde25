"""Who may get which certificate (sans-io): the caller is the node named by its node
certificate, the identity asked for is ``metadata["ImpersonatedIdentity"]`` (else the CSR's URI
SAN), and an `Authorizer` says whether that node may hold that identity.

Each refusal is an exception naming whose fault it is; `inmesh.controlplane.caserver` maps them
to gRPC codes (UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from cryptography import x509

from inmesh.caapi import IMPERSONATED_IDENTITY
from inmesh.cluster.model import ClusterView
from inmesh.errors import ConfigError, InmeshError, RemoteProtocolError
from inmesh.identity import SpiffeId
from inmesh.pki import PkiError, load_certificate, uri_sans
from inmesh.pki.nodecred import parse_node_identity

Authorizer = Callable[[str, SpiffeId], str | None]
"""``authorizer(node, identity)``: None if the node may hold the identity, else the reason why
not (sent to the caller)."""


class CallerUnauthenticated(RemoteProtocolError):
    """The caller presented no node certificate we accept."""


class RequestInvalid(RemoteProtocolError):
    """The request is malformed: CSR, metadata or validity."""


class RequestDenied(InmeshError):
    """The caller is a known node but may not have the identity it asked for."""


def caller_node(peer_cert_pems: Sequence[bytes], trust_domain: str) -> str:
    """The node name in the caller's TLS certificate (already chain-checked against the node CA
    by the TLS handshake): exactly one URI SAN ``spiffe://<td>/inmesh-node/<node>``."""
    if not peer_cert_pems:
        raise CallerUnauthenticated("no client certificate: present a node credential")
    try:
        uris = uri_sans(load_certificate(peer_cert_pems[0], "client certificate"))
    except PkiError as exc:
        raise CallerUnauthenticated(str(exc)) from exc
    parsed = parse_node_identity(uris[0]) if len(uris) == 1 else None
    if parsed is None:
        raise CallerUnauthenticated(f"client certificate is not a node credential: URI SANs "
                                    f"{list(uris)}, want spiffe://{trust_domain}/inmesh-node/<node>")
    if parsed[0] != trust_domain:
        raise CallerUnauthenticated(f"node credential is for trust domain {parsed[0]!r}, "
                                    f"this control plane serves {trust_domain!r}")
    return parsed[1]


def requested_identity(
    metadata: Mapping[str, object], csr: x509.CertificateSigningRequest
) -> SpiffeId:
    """``metadata[ImpersonatedIdentity]`` (a string SPIFFE ID) if present, else the CSR's
    single URI SAN."""
    if IMPERSONATED_IDENTITY in metadata:
        value = metadata[IMPERSONATED_IDENTITY]
        if not isinstance(value, str):
            raise RequestInvalid(f"metadata {IMPERSONATED_IDENTITY} must be a string, "
                                 f"got {type(value).__name__}")
        return _parse_identity(value, f"metadata {IMPERSONATED_IDENTITY}")
    try:
        uris = uri_sans(csr)
    except PkiError as exc:
        raise RequestInvalid(str(exc)) from exc
    if len(uris) != 1:
        raise RequestInvalid(f"no {IMPERSONATED_IDENTITY} metadata and the CSR has {len(uris)} "
                             "URI SANs; one SPIFFE ID is needed")
    return _parse_identity(uris[0], "CSR URI SAN")


def check_allowed(
    node: str, identity: SpiffeId, trust_domain: str, authorizer: Authorizer
) -> None:
    """`RequestDenied` with the reason when ``node`` may not hold ``identity``."""
    if identity.trust_domain != trust_domain:
        raise RequestDenied(f"{identity} is not in trust domain {trust_domain!r}")
    reason = authorizer(node, identity)
    if reason is not None:
        raise RequestDenied(f"node {node!r} may not have {identity}: {reason}")


def pods_on_node_authorizer(view_fn: Callable[[], ClusterView], trust_domain: str) -> Authorizer:
    """Istio's node authorizer: a node may hold an identity while a non-terminated pod with that
    namespace and service account is scheduled on it. ``view_fn`` is asked on every call."""

    def authorize(node: str, identity: SpiffeId) -> str | None:
        if identity.trust_domain != trust_domain:
            return f"trust domain {identity.trust_domain!r} is not {trust_domain!r}"
        for pod in view_fn().pods_on_node(node):
            if (not pod.terminal and pod.namespace == identity.namespace
                    and pod.service_account == identity.service_account):
                return None
        return (f"no pod of service account {identity.service_account!r} in namespace "
                f"{identity.namespace!r} runs on node {node!r}")

    return authorize


def _parse_identity(value: str, source: str) -> SpiffeId:
    try:
        return SpiffeId.parse(value)
    except ConfigError as exc:
        raise RequestInvalid(f"{source}: {exc}") from exc
