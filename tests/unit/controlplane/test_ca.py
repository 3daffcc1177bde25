"""The mesh CA: a root made once and kept, provided roots and intermediates, and what `sign`
issues (only the authorized SPIFFE ID, short-lived, chain leaf first and root last)."""

from __future__ import annotations

import stat
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from inmesh.controlplane.ca import (
    ROOT_CERT_FILE,
    ROOT_KEY_FILE,
    CaSettings,
    CertificateAuthority,
)
from inmesh.errors import ConfigError
from inmesh.identity import SpiffeId
from inmesh.pki import (
    PkiError,
    generate_key,
    load_certificate,
    load_certificates,
    make_csr,
    private_key_pem,
    split_pem_chain,
    uri_sans,
    verify_chain,
)
from tests.unit.pki.helpers import DB, T0, TD, WEB, intermediate_ca, leaf, pem, root_ca


class Now:
    def __init__(self, value: datetime = T0) -> None:
        self.value = value

    def __call__(self) -> datetime:
        return self.value


def _ca(tmp_path: Path, settings: CaSettings | None = None, now: Now | None = None) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "state", TD, settings, now or Now())


def _leaf(chain: list[str]) -> x509.Certificate:
    return load_certificate(chain[0])


def test_root_is_created_once_with_private_modes_and_reused_after_a_restart(tmp_path: Path) -> None:
    first = _ca(tmp_path)
    state = tmp_path / "state"
    key_bytes, cert_bytes = (state / ROOT_KEY_FILE).read_bytes(), (state / ROOT_CERT_FILE).read_bytes()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / ROOT_KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((state / ROOT_CERT_FILE).stat().st_mode) == 0o600
    assert key_bytes.startswith(b"-----BEGIN PRIVATE KEY-----")
    restarted = _ca(tmp_path, now=Now(T0 + timedelta(days=30)))
    assert restarted.root_pem == first.root_pem == cert_bytes
    assert (state / ROOT_KEY_FILE).read_bytes() == key_bytes
    # what the restarted CA issues verifies against the root the first one handed out
    chain = restarted.sign(make_csr(generate_key(), WEB), WEB)
    verify_chain(_leaf(chain), [], load_certificates(first.root_pem), T0 + timedelta(days=30))


def test_root_is_a_self_signed_ca_named_after_the_trust_domain(tmp_path: Path) -> None:
    root = load_certificate(_ca(tmp_path).root_pem)
    assert root.subject == root.issuer
    assert root.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value == TD
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.not_valid_after_utc - T0 == timedelta(days=3650)


def test_a_root_whose_key_is_lost_is_an_error_not_a_new_root(tmp_path: Path) -> None:
    _ca(tmp_path)
    (tmp_path / "state" / ROOT_KEY_FILE).unlink()
    with pytest.raises(ConfigError, match=r"key .* is missing"):
        _ca(tmp_path)


def test_a_key_left_behind_without_its_cert_is_replaced(tmp_path: Path) -> None:
    """Only the cert is ever handed out, so a key without a cert (a crash between the two
    writes) was never trusted by anyone and a new root is safe."""
    first = _ca(tmp_path)
    (tmp_path / "state" / ROOT_CERT_FILE).unlink()
    assert _ca(tmp_path).root_pem != first.root_pem


def test_mismatched_or_corrupt_root_files_are_config_errors(tmp_path: Path) -> None:
    _ca(tmp_path)
    state = tmp_path / "state"
    (state / ROOT_KEY_FILE).write_bytes(private_key_pem(generate_key()))
    with pytest.raises(ConfigError, match="is not the key of"):
        _ca(tmp_path)
    (state / ROOT_CERT_FILE).write_text("junk")
    with pytest.raises(ConfigError, match="not PEM certificates"):
        _ca(tmp_path)


def test_an_expired_root_is_a_config_error(tmp_path: Path) -> None:
    _ca(tmp_path, CaSettings(root_validity=86400))
    with pytest.raises(ConfigError, match="not valid now"):
        _ca(tmp_path, now=Now(T0 + timedelta(days=2)))


def test_sign_replaces_the_csr_san_with_the_requested_identity(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    chain = ca.sign(make_csr(generate_key(), DB), WEB)
    leaf = _leaf(chain)
    assert uri_sans(leaf) == (WEB.uri,)
    assert leaf.subject == x509.Name([])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert list(san.value) == [x509.UniformResourceIdentifier(WEB.uri)]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_sign_certifies_the_csr_key(tmp_path: Path) -> None:
    key = generate_key()
    leaf = _leaf(_ca(tmp_path).sign(make_csr(key, WEB), WEB))
    assert leaf.public_key() == key.public_key()


def test_chain_is_leaf_then_root_one_pem_per_element_each_ending_with_newline(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    chain = ca.sign(make_csr(generate_key(), WEB).decode(), WEB)
    assert len(chain) == 2
    assert chain[-1].encode() == ca.root_pem
    for element in chain:
        assert isinstance(element, str)
        assert element.endswith("-----END CERTIFICATE-----\n")
        assert len(split_pem_chain(element)) == 1
    assert verify_chain(_leaf(chain), [], load_certificates(chain[-1]), T0)[-1] == load_certificate(ca.root_pem)


def test_validity_default_requested_and_clamped(tmp_path: Path) -> None:
    ca = _ca(tmp_path, CaSettings(default_ttl=3600, max_ttl=7200, backdate=60))

    def lifetime(ttl: int | None) -> tuple[datetime, datetime]:
        leaf = _leaf(ca.sign(make_csr(generate_key(), WEB), WEB, ttl))
        return leaf.not_valid_before_utc, leaf.not_valid_after_utc

    assert lifetime(None) == (T0 - timedelta(seconds=60), T0 + timedelta(seconds=3600))
    assert lifetime(0)[1] == T0 + timedelta(seconds=3600)
    assert lifetime(600)[1] == T0 + timedelta(seconds=600)
    assert lifetime(10**9)[1] == T0 + timedelta(seconds=7200)
    with pytest.raises(PkiError, match="must not be negative"):
        lifetime(-1)


def test_default_24h_and_90_day_max_like_istio() -> None:
    assert (CaSettings().default_ttl, CaSettings().max_ttl) == (86400, 90 * 86400)


def test_a_leaf_never_outlives_its_ca_and_an_expired_ca_refuses(tmp_path: Path) -> None:
    now = Now()
    ca = _ca(tmp_path, CaSettings(root_validity=2 * 86400, default_ttl=86400), now)
    root_end = load_certificate(ca.root_pem).not_valid_after_utc
    now.value = root_end - timedelta(hours=1)
    assert _leaf(ca.sign(make_csr(generate_key(), WEB), WEB)).not_valid_after_utc == root_end
    now.value = root_end
    with pytest.raises(ConfigError, match="CA certificate expired"):
        ca.sign(make_csr(generate_key(), WEB), WEB)


def test_sign_refuses_bad_csrs_and_foreign_trust_domains(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    with pytest.raises(PkiError, match="not a PEM PKCS#10"):
        ca.sign(b"garbage", WEB)
    with pytest.raises(PkiError, match="not in trust domain"):
        ca.sign(make_csr(generate_key(), WEB), SpiffeId("other.domain", "shop", "web"))


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"default_ttl .* exceeds max_ttl"):
        CaSettings(default_ttl=10, max_ttl=5)
    with pytest.raises(ConfigError, match="must be positive"):
        CaSettings(max_ttl=0)
    with pytest.raises(ConfigError, match="backdate"):
        CaSettings(backdate=-1)


# --- provided CA (from_files) -------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_provided_intermediate_puts_intermediate_then_root_in_the_chain(tmp_path: Path) -> None:
    root = root_ca()
    inter = intermediate_ca(root)
    ca = CertificateAuthority.from_files(
        _write(tmp_path / "chain.pem", pem(inter[1], root[1])),
        _write(tmp_path / "ca-key.pem", private_key_pem(inter[0])),
        TD, clock=Now(),
    )
    chain = ca.sign(make_csr(generate_key(), WEB), WEB)
    assert [load_certificate(c) for c in chain[1:]] == [inter[1], root[1]]
    assert ca.root_pem == pem(root[1])
    verify_chain(_leaf(chain), [inter[1]], [root[1]], T0)


def test_provided_root_in_a_separate_file(tmp_path: Path) -> None:
    root = root_ca()
    inter = intermediate_ca(root)
    ca = CertificateAuthority.from_files(
        _write(tmp_path / "ca-cert.pem", pem(inter[1])),
        _write(tmp_path / "ca-key.pem", private_key_pem(inter[0])),
        TD, root_cert_path=_write(tmp_path / "root-cert.pem", pem(root[1])), clock=Now(),
    )
    assert len(ca.sign(make_csr(generate_key(), WEB), WEB)) == 3


def test_provided_root_alone(tmp_path: Path) -> None:
    root = root_ca()
    ca = CertificateAuthority.from_files(
        _write(tmp_path / "root.pem", pem(root[1])),
        _write(tmp_path / "root-key.pem", private_key_pem(root[0])), TD, clock=Now(),
    )
    assert ca.sign(make_csr(generate_key(), WEB), WEB)[1:] == [pem(root[1]).decode()]


def test_provided_chain_problems_are_config_errors_naming_the_file(tmp_path: Path) -> None:
    root = root_ca()
    inter = intermediate_ca(root)
    key = _write(tmp_path / "key.pem", private_key_pem(inter[0]))
    with pytest.raises(ConfigError, match="chain must end with the root"):
        CertificateAuthority.from_files(_write(tmp_path / "a.pem", pem(inter[1])), key, TD, clock=Now())
    with pytest.raises(ConfigError, match="not issued by the next certificate"):
        CertificateAuthority.from_files(
            _write(tmp_path / "b.pem", pem(inter[1], root_ca()[1])), key, TD, clock=Now())
    with pytest.raises(ConfigError, match="signing key does not match"):
        CertificateAuthority.from_files(
            _write(tmp_path / "c.pem", pem(root[1])), key, TD, clock=Now())
    with pytest.raises(ConfigError, match="cannot read CA key"):
        CertificateAuthority.from_files(tmp_path / "c.pem", tmp_path / "missing.pem", TD, clock=Now())


def test_a_leaf_certificate_is_not_accepted_as_a_ca(tmp_path: Path) -> None:
    root = root_ca()
    key, cert = leaf(root)
    with pytest.raises(ConfigError, match="is not a CA"):
        CertificateAuthority.from_files(
            _write(tmp_path / "leaf.pem", pem(cert, root[1])),
            _write(tmp_path / "key.pem", private_key_pem(key)), TD, clock=Now(),
        )
