"""Small certificate factories for the PKI, CA and cert-manager tests (fixed times, test names)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509

from inmesh.identity import SpiffeId
from inmesh.pki import certificate_pem, generate_key
from inmesh.pki.build import build_ca_certificate, build_leaf_certificate, ca_subject
from inmesh.pki.keys import SigningKey

TD = "cluster.local"
T0 = datetime(2031, 3, 4, 5, 6, 7, tzinfo=UTC)
"""A fixed 'now' for tests that do not go through real TLS."""

WEB = SpiffeId(TD, "shop", "web")
DB = SpiffeId(TD, "shop", "db")

CA = tuple[SigningKey, x509.Certificate]


def root_ca(now: datetime = T0, days: int = 3650, name: str = "test root") -> CA:
    key = generate_key()
    cert = build_ca_certificate(key, ca_subject(TD, name), now - timedelta(days=1),
                                now + timedelta(days=days))
    return key, cert


def intermediate_ca(parent: CA, now: datetime = T0, days: int = 365, name: str = "test int") -> CA:
    key = generate_key()
    cert = build_ca_certificate(key, ca_subject(TD, name), now - timedelta(hours=1),
                                now + timedelta(days=days), issuer=(parent[1], parent[0]))
    return key, cert


def leaf(issuer: CA, key: SigningKey | None = None, uris: tuple[str, ...] = (WEB.uri,),
         now: datetime = T0, hours: int = 24) -> tuple[SigningKey, x509.Certificate]:
    key = key or generate_key()
    cert = build_leaf_certificate(issuer[1], issuer[0], key.public_key(), now,
                                  now + timedelta(hours=hours), uris=uris)
    return key, cert


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(certificate_pem(c) for c in certs)
