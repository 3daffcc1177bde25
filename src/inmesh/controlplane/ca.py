"""The mesh certificate authority: signs workload CSRs with short-lived certificates whose only
identity is the URI SAN of the identity the caller was authorized for (the CSR's own SAN is
replaced, as istiod does). Reference: istio-inpod.md section 8.

Two ways to get one: `load_or_create` keeps a self-signed root in a state dir (created once,
files 0600, reused across restarts), `from_files` uses an operator-provided root or intermediate.
The chain `sign` returns is leaf first, root last, one PEM per element, each ending in a newline.
Authorization is not done here; `inmesh.controlplane.caserver` decides who may ask for what."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from inmesh.errors import ConfigError
from inmesh.identity import SpiffeId
from inmesh.pki import PkiError, certificate_pem, load_certificates, load_csr, load_private_key
from inmesh.pki._files import ensure_private_dir, write_private
from inmesh.pki.build import build_ca_certificate, build_leaf_certificate, ca_subject
from inmesh.pki.keys import (
    SigningKey,
    check_workload_key,
    generate_key,
    private_key_pem,
    same_public_key,
)
from inmesh.pki.pem import is_self_signed

ROOT_KEY_FILE = "root-key.pem"
ROOT_CERT_FILE = "root-cert.pem"
DAY = 86400

Clock = Callable[[], datetime]
"""Wall-clock time as an aware UTC datetime; injected so tests control certificate validity."""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CaSettings:
    default_ttl: int = DAY
    """Seconds a workload certificate lives when the request names no validity (Istio's
    SECRET_TTL default: 24 h)."""
    max_ttl: int = 90 * DAY
    """Longest workload certificate lifetime in seconds; longer requests are clamped. Istio's
    MAX_WORKLOAD_CERT_TTL default is 90 days."""
    backdate: int = 60
    """Seconds not_before is set before the signing time, so a peer whose clock is a little
    behind ours does not reject a brand-new certificate."""
    root_validity: int = 3650 * DAY
    """Lifetime in seconds of the self-signed root `load_or_create` makes (istiod: 10 years)."""

    def __post_init__(self) -> None:
        for name in ("default_ttl", "max_ttl", "root_validity"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"CA setting {name} must be positive, got {getattr(self, name)}")
        if self.backdate < 0:
            raise ConfigError(f"CA setting backdate must be >= 0, got {self.backdate}")
        if self.default_ttl > self.max_ttl:
            raise ConfigError(
                f"CA default_ttl {self.default_ttl} s exceeds max_ttl {self.max_ttl} s"
            )


class CertificateAuthority:
    """Signs workload certificates with ``signing_key``; ``trust_chain`` is the signing cert,
    then any intermediates above it, then the root (a root alone for the embedded CA)."""

    def __init__(
        self,
        trust_domain: str,
        signing_key: SigningKey,
        trust_chain: tuple[x509.Certificate, ...],
        settings: CaSettings | None = None,
        clock: Clock = utcnow,
    ) -> None:
        if not trust_chain or not same_public_key(
            signing_key.public_key(), trust_chain[0].public_key()
        ):
            raise ConfigError("CA signing key does not match the CA certificate")
        self.trust_domain = trust_domain
        self.settings = settings or CaSettings()
        self._key = signing_key
        self._chain = trust_chain
        self._chain_pem = tuple(certificate_pem(c).decode() for c in trust_chain)
        self._clock = clock

    @property
    def root_pem(self) -> bytes:
        """The mesh root (what workloads and node credential dirs trust)."""
        return self._chain_pem[-1].encode()

    @property
    def signing_certificate(self) -> x509.Certificate:
        return self._chain[0]

    def effective_ttl(self, requested: int | None) -> int:
        """Seconds a certificate asked for with ``requested`` (None/0: the default) will live."""
        if requested is None or requested == 0:
            return self.settings.default_ttl
        if requested < 0:
            raise PkiError(f"requested validity must not be negative, got {requested} s")
        return min(requested, self.settings.max_ttl)

    def sign(
        self, csr_pem: bytes | str, requested: SpiffeId, ttl_seconds: int | None = None
    ) -> list[str]:
        """Issue a certificate for ``requested`` to the CSR's key. `PkiError` for a bad CSR, a
        weak key or a foreign trust domain (the requester's fault); `ConfigError` if the CA
        certificate has expired (the operator's)."""
        return self.sign_request(load_csr(csr_pem), requested, ttl_seconds)

    def sign_request(
        self, csr: x509.CertificateSigningRequest, requested: SpiffeId, ttl_seconds: int | None
    ) -> list[str]:
        """`sign` for a CSR already parsed (and checked) by `inmesh.pki.load_csr`."""
        check_workload_key(csr.public_key())
        if requested.trust_domain != self.trust_domain:
            raise PkiError(f"{requested} is not in trust domain {self.trust_domain!r}")
        ttl = self.effective_ttl(ttl_seconds)
        now = self._clock()
        if now >= self._chain[0].not_valid_after_utc:
            raise ConfigError(f"the CA certificate expired at {self._chain[0].not_valid_after_utc}"
                              "; rotate it")
        leaf = build_leaf_certificate(
            self._chain[0],
            self._key,
            csr.public_key(),
            now - timedelta(seconds=self.settings.backdate),
            now + timedelta(seconds=ttl),
            uris=[requested.uri],
        )
        return [certificate_pem(leaf).decode(), *self._chain_pem]

    @classmethod
    def load_or_create(
        cls,
        state_dir: Path,
        trust_domain: str,
        settings: CaSettings | None = None,
        clock: Clock = utcnow,
    ) -> CertificateAuthority:
        """The embedded CA: reuse ``root-cert.pem``/``root-key.pem`` from ``state_dir``, or make
        them (0600) if there is no root yet. A root whose key is lost is an error, not a reason
        to make a new root: every workload and node trusts the old one."""
        settings = settings or CaSettings()
        key_path, cert_path = state_dir / ROOT_KEY_FILE, state_dir / ROOT_CERT_FILE
        key, cert = load_or_create_self_signed(
            key_path, cert_path, ca_subject(trust_domain, "inmesh mesh root"),
            settings.root_validity, clock(),
        )
        return cls(trust_domain, key, (cert,), settings, clock)

    @classmethod
    def from_files(
        cls,
        cert_chain_pem_path: Path,
        key_path: Path,
        trust_domain: str,
        *,
        root_cert_path: Path | None = None,
        settings: CaSettings | None = None,
        clock: Clock = utcnow,
    ) -> CertificateAuthority:
        """A provided CA: ``cert_chain_pem_path`` holds the signing cert first, then its issuers
        in order up to the self-signed root (or give the root in ``root_cert_path``)."""
        chain = _read_certs(cert_chain_pem_path)
        if root_cert_path is not None:
            chain += _read_certs(root_cert_path)
        key = _read_key(key_path)
        _check_ca_chain(chain, cert_chain_pem_path, clock())
        return cls(trust_domain, key, tuple(chain), settings, clock)


def load_or_create_self_signed(
    key_path: Path, cert_path: Path, subject: x509.Name, validity: int, now: datetime
) -> tuple[SigningKey, x509.Certificate]:
    """Load a self-signed CA from two files, or create both (0600) when the cert is missing."""
    ensure_private_dir(cert_path.parent)
    if not cert_path.exists():
        key: SigningKey = generate_key()
        cert = build_ca_certificate(key, subject, now - timedelta(minutes=5),
                                    now + timedelta(seconds=validity))
        write_private(key_path, private_key_pem(key))  # key first: a cert is never orphaned
        write_private(cert_path, certificate_pem(cert))
        return key, cert
    if not key_path.exists():
        raise ConfigError(f"{cert_path} exists but its key {key_path} is missing; restore the key "
                          "(a new CA would not be trusted by anything issued so far)")
    certs = _read_certs(cert_path)
    key = _read_key(key_path)
    _check_ca_chain(certs, cert_path, now)
    if len(certs) != 1 or not is_self_signed(certs[0]):
        raise ConfigError(f"{cert_path} must hold exactly one self-signed CA certificate")
    if not same_public_key(key.public_key(), certs[0].public_key()):
        raise ConfigError(f"{key_path} is not the key of {cert_path}")
    return key, certs[0]


def _read_certs(path: Path) -> list[x509.Certificate]:
    try:
        return load_certificates(path.read_bytes(), str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read CA certificate {path}: {exc.strerror}") from exc
    except PkiError as exc:
        raise ConfigError(str(exc)) from exc


def _read_key(path: Path) -> SigningKey:
    try:
        return load_private_key(path.read_bytes(), str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read CA key {path}: {exc.strerror}") from exc
    except PkiError as exc:
        raise ConfigError(str(exc)) from exc


def _check_ca_chain(chain: list[x509.Certificate], source: Path, now: datetime) -> None:
    """Every cert is a current CA issued by the next one, and the last one is self-signed."""
    for i, cert in enumerate(chain):
        where = f"{source}: certificate {i} ({cert.subject.rfc4514_string() or 'no subject'})"
        if not _is_ca(cert):
            raise ConfigError(f"{where} is not a CA (basicConstraints CA and keyCertSign needed)")
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise ConfigError(f"{where} is not valid now (valid {cert.not_valid_before_utc} "
                              f"to {cert.not_valid_after_utc})")
        issuer = chain[i + 1] if i + 1 < len(chain) else cert
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            what = "the next certificate" if issuer is not cert else (
                "itself (the chain must end with the root)"
            )
            raise ConfigError(f"{where} is not issued by {what}") from exc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return constraints.ca and usage.key_cert_sign
