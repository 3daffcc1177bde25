"""SPIFFE identities of mesh workloads: ``spiffe://<trust-domain>/ns/<namespace>/sa/<account>``.

One workload identity per (namespace, service account), as in Istio. Parsing is strict: anything
else in a certificate's URI SAN is not a workload identity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from inmesh.errors import ConfigError

DEFAULT_TRUST_DOMAIN = "cluster.local"

_LABEL = r"[a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?"
_TRUST_DOMAIN = re.compile(r"^[a-z0-9.\-_]{1,255}$")
_WORKLOAD = re.compile(rf"^spiffe://(?P<td>[a-z0-9.\-_]{{1,255}})/ns/(?P<ns>{_LABEL})/sa/(?P<sa>{_LABEL})$")


@dataclass(frozen=True, order=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        if not _TRUST_DOMAIN.match(self.trust_domain):
            raise ConfigError(f"invalid trust domain {self.trust_domain!r}")
        if not re.fullmatch(_LABEL, self.namespace) or not re.fullmatch(
            _LABEL, self.service_account
        ):
            raise ConfigError(
                f"invalid namespace or service account {self.namespace!r}/{self.service_account!r}"
            )

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse a workload SPIFFE URI; raises ConfigError for anything else."""
        m = _WORKLOAD.match(uri)
        if m is None:
            raise ConfigError(f"not a workload SPIFFE ID: {uri!r}")
        return cls(m["td"], m["ns"], m["sa"])

    @classmethod
    def for_workload(
        cls, namespace: str, service_account: str, trust_domain: str = ""
    ) -> SpiffeId:
        return cls(trust_domain or DEFAULT_TRUST_DOMAIN, namespace, service_account or "default")
