"""mTLS for HBONE: TLS 1.3 contexts with ALPN h2, and SPIFFE identity checks of the peer.

Reference istio-inpod.md section 7. Certificates must chain to the mesh roots (OpenSSL checks
that during the handshake); identity is the peer's SPIFFE URI SAN, never a DNS name or the
subject. `peer_identity` is the check done after the handshake: a server accepts any workload
of its own trust domain, a client only one of the identities it expected for the destination.

Python's ssl cannot restrict TLS 1.3 cipher suites; OpenSSL offers AES-256-GCM, ChaCha20 and
AES-128-GCM, and a peer restricted to the AES-GCM pair (Istio's ztunnel) negotiates one of those.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Collection, Iterator

from cryptography import x509

from inmesh.errors import ConfigError, InmeshError
from inmesh.hbone.errors import PeerIdentityError
from inmesh.identity import SpiffeId

ALPN_H2 = "h2"

Peer = ssl.SSLObject | ssl.SSLSocket | x509.Certificate | bytes
"""What `peer_identity` accepts: a finished TLS connection, a parsed cert, or DER bytes."""


def server_context(chain_pem: bytes, key_pem: bytes, roots_pem: bytes) -> ssl.SSLContext:
    """Context of an inbound HBONE listener: TLS 1.3, ALPN h2, client certificate required and
    verified against ``roots_pem``. Session tickets are off (Istio disables resumption)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _common(ctx, chain_pem, key_pem, roots_pem)
    ctx.num_tickets = 0
    return ctx


def client_context(chain_pem: bytes, key_pem: bytes, roots_pem: bytes) -> ssl.SSLContext:
    """Context of outbound HBONE: TLS 1.3, ALPN h2, server chain verified against
    ``roots_pem``, host names never checked (the SPIFFE ID is, by `peer_identity`). Connect
    with ``server_hostname=None`` so that no SNI is sent."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    _common(ctx, chain_pem, key_pem, roots_pem)
    return ctx


def _common(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes, roots_pem: bytes) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([ALPN_H2])
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.options |= ssl.OP_NO_TICKET
    try:
        ctx.load_verify_locations(cadata=roots_pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"HBONE trust roots are not valid PEM certificates: {exc}") from exc
    with _memfile(chain_pem) as chain_path, _memfile(key_pem) as key_path:
        try:
            ctx.load_cert_chain(chain_path, key_path)
        except ssl.SSLError as exc:
            raise ConfigError(f"HBONE certificate chain or key is invalid: {exc}") from exc


@contextlib.contextmanager
def _memfile(data: bytes) -> Iterator[str]:
    """A path to ``data`` that lives only in memory (ssl loads keys from paths only)."""
    fd = os.memfd_create("inmesh-hbone-cred", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def peer_certificate(peer: Peer) -> x509.Certificate:
    """The peer's leaf certificate; `PeerIdentityError` if it presented none."""
    if isinstance(peer, x509.Certificate):
        return peer
    der = peer if isinstance(peer, bytes) else peer.getpeercert(binary_form=True)
    if not der:
        raise PeerIdentityError("HBONE peer presented no certificate")
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise PeerIdentityError(f"HBONE peer certificate does not parse: {exc}") from exc


def spiffe_uris(cert: x509.Certificate) -> list[str]:
    """Every ``spiffe://`` URI SAN of ``cert`` (DNS names and other SANs are ignored)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith("spiffe://")]


def peer_identity(peer: Peer, *, trust_domain: str | None = None,
                  expected: Collection[SpiffeId] | None = None) -> SpiffeId:
    """The workload SPIFFE ID of a peer whose chain TLS already verified.

    The certificate must carry exactly one SPIFFE URI SAN naming a workload. With
    ``trust_domain`` (server side) the ID must be in that trust domain; with ``expected``
    (client side) it must be one of those IDs. Anything else is a `PeerIdentityError`.
    """
    uris = spiffe_uris(peer_certificate(peer))
    if len(uris) != 1:
        raise PeerIdentityError(
            f"HBONE peer certificate must carry exactly one SPIFFE ID, it has {len(uris)}"
            + (f": {', '.join(uris)}" if uris else ""))
    try:
        identity = SpiffeId.parse(uris[0])
    except InmeshError as exc:
        raise PeerIdentityError(f"HBONE peer {uris[0]!r} is not a workload identity") from exc
    if trust_domain is not None and identity.trust_domain != trust_domain:
        raise PeerIdentityError(
            f"HBONE peer {identity} is outside trust domain {trust_domain!r}")
    if expected is not None and identity not in expected:
        wanted = ", ".join(sorted(str(e) for e in expected)) or "nothing"
        raise PeerIdentityError(f"HBONE peer is {identity}, expected {wanted}")
    return identity
