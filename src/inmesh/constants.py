"""Numbers shared by the rule sets and the proxy; they are Istio's, so either half can be swapped.

See ../shared/reference/istio-inpod.md section 0. Changing one breaks interop with Istio's ztunnel
or istio-cni agent.
"""

from __future__ import annotations

OUTBOUND_PORT = 15001
"""Proxy listener for the pod's outbound TCP (nat OUTPUT REDIRECT target)."""
INBOUND_PLAINTEXT_PORT = 15006
"""Proxy listener for inbound plaintext TCP (nat PREROUTING REDIRECT target)."""
INBOUND_HBONE_PORT = 15008
"""Proxy listener for inbound HBONE (mTLS + HTTP/2 CONNECT); never redirected."""
DNS_PORT = 15053
PROXY_PORTS = frozenset({OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, INBOUND_HBONE_PORT})

PROXY_MARK = 0x539
"""SO_MARK set on every socket the proxy opens in a pod; the rules let marked packets through."""
MARK_MASK = 0xFFF
CONN_MARK = 0x111
"""Conntrack mark for connections the proxy opened towards the app (spoofed source)."""
ROUTE_TABLE = 100
RULE_PRIORITY = 32764

PROBE_SNAT_V4 = "169.254.7.127"
PROBE_SNAT_V6 = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"

LABEL_DATAPLANE_MODE = "istio.io/dataplane-mode"
ANNOTATION_REDIRECTION = "ambient.istio.io/redirection"
ANNOTATION_BYPASS_INBOUND = "ambient.istio.io/bypass-inbound-capture"
ANNOTATION_SIDECAR_STATUS = "sidecar.istio.io/status"

PLUGIN_SOCKET_NAME = "pluginevent.sock"
"""The agent's HTTP-over-unix socket, inside its run dir (Istio: /var/run/istio-cni)."""
ZDS_SOCKET_NAME = "ztunnel.sock"
