"""The one error the PKI library raises: a certificate, key or CSR that is malformed or that
does not meet the mesh's rules. Callers decide whose fault it is (a bad CSR on the wire is the
peer's, a bad file is the operator's) and wrap it accordingly."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from inmesh.errors import InmeshError

_FAQ_LINK = re.compile(r"\s*See https?://\S+ for more details\.")
_PARSE_ERRORS = (
    ValueError,
    TypeError,
    UnicodeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.UnsupportedGeneralNameType,
    Warning,
)
"""What cryptography raises on malformed DER/PEM (found by fuzzing), plus the warnings it emits
for some RFC 5280 violations (a non-positive serial, a country name that is not two letters)."""


class PkiError(InmeshError):
    """A certificate, key or CSR is malformed, or breaks a rule of the mesh (key type, SANs,
    chain). The message says which object and which rule."""


@contextmanager
def parsing(what: str) -> Iterator[None]:
    """Turn cryptography's parse failures (and warnings) inside the block into `PkiError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield
    except _PARSE_ERRORS as exc:
        raise PkiError(f"{what}: {first_line(exc)}") from exc


def first_line(exc: BaseException) -> str:
    """The first line of a third-party error's message, without cryptography's FAQ links."""
    line = (str(exc).splitlines() or [""])[0]
    return _FAQ_LINK.sub("", line).strip() or type(exc).__name__
