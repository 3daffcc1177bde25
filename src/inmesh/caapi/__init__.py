"""The control plane's wire API, shared by the server (`inmesh.controlplane`) and the node side
(`inmesh.ztunnel`): Istio's certificate service (``ca.proto``, package ``istio.v1.auth``) and
the names both sides must agree on. ``ca_pb2``/``ca_pb2_grpc`` are generated; do not edit."""

from inmesh.caapi import ca_pb2

_SERVICE = ca_pb2.DESCRIPTOR.services_by_name["IstioCertificateService"]

CA_SERVICE_NAME: str = _SERVICE.full_name
"""``istio.v1.auth.IstioCertificateService``"""
CREATE_CERTIFICATE: str = _SERVICE.methods_by_name["CreateCertificate"].name
CREATE_CERTIFICATE_PATH = f"/{CA_SERVICE_NAME}/{CREATE_CERTIFICATE}"
"""``/istio.v1.auth.IstioCertificateService/CreateCertificate`` (reference 8)."""
IMPERSONATED_IDENTITY = "ImpersonatedIdentity"
"""Key of the request metadata (a google.protobuf.Struct) carrying, as a string, the SPIFFE ID a
node proxy asks for on behalf of one of its workloads (reference 8)."""
CONTROL_PLANE_NAME = "inmesh-controlplane"
"""DNS SAN of the control plane's serving cert; node channels set
``grpc.ssl_target_name_override`` to it, whatever address they dial."""
CHANNEL_OPTIONS: tuple[tuple[str, str], ...] = (
    ("grpc.ssl_target_name_override", CONTROL_PLANE_NAME),
)
"""gRPC channel options every node-side channel to the control plane needs."""

__all__ = [
    "CA_SERVICE_NAME",
    "CHANNEL_OPTIONS",
    "CONTROL_PLANE_NAME",
    "CREATE_CERTIFICATE",
    "CREATE_CERTIFICATE_PATH",
    "IMPERSONATED_IDENTITY",
    "ca_pb2",
]
