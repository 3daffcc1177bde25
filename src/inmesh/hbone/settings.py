"""Bounds of HBONE connections: windows, frame sizes, stream caps, keepalive, timeouts, buffers.

Defaults are Istio ztunnel's (istio-inpod.md section 7), so that either end can be a real ztunnel.
The frozen `HboneSettings` validates itself; `ConfigError` names the bad field.
"""

from __future__ import annotations

from dataclasses import dataclass

from inmesh.errors import ConfigError

MiB = 1 << 20
KiB = 1 << 10
_H2_MAX_WINDOW = (1 << 31) - 1
_H2_MIN_FRAME, _H2_MAX_FRAME = 1 << 14, (1 << 24) - 1


@dataclass(frozen=True)
class HboneSettings:
    """Knobs of HBONE clients and servers (both ends share them; each uses its own fields)."""

    stream_window: int = 4 * MiB
    """Receive window of each stream (bytes; SETTINGS_INITIAL_WINDOW_SIZE). This is how much one
    application connection may have in flight towards us before its reader catches up.
    Istio: HTTP2_STREAM_WINDOW_SIZE = 4 MiB."""
    connection_window: int = 16 * MiB
    """Receive window of the whole connection (bytes). Four times the stream window, so that one
    or two stalled streams cannot starve the others: an equal value deadlocked apps that read
    stream A only after receiving on stream B (ztunnel #1538). Istio: 16 MiB."""
    max_frame_size: int = 1 * MiB
    """Largest frame we accept (SETTINGS_MAX_FRAME_SIZE). Istio: HTTP2_FRAME_SIZE = 1 MiB."""
    server_max_streams: int = 200
    """Concurrent streams a client may open on one inbound connection (server's
    SETTINGS_MAX_CONCURRENT_STREAMS). Istio: 200."""
    client_max_streams: int = 100
    """Streams the client pool puts on one connection before it dials another.
    Istio: POOL_MAX_STREAMS_PER_CONNECTION = 100."""
    client_max_header_list: int = 16 * KiB
    """Largest response header block a client accepts (bytes). Istio: 16 KiB."""
    server_max_header_list: int = 64 * KiB
    """Largest request header block a server accepts (bytes). Istio: 64 KiB."""
    ping_interval: float = 10.0
    """Seconds between keepalive PINGs; the first one this long after the connection starts.
    Istio: 10 s on both ends."""
    ping_timeout: float = 20.0
    """Seconds to wait for a PING's ACK before the connection is declared dead. Istio: 20 s."""
    idle_timeout: float = 300.0
    """Seconds a pooled client connection may sit without streams before it is closed.
    Istio: POOL_UNUSED_RELEASE_TIMEOUT = 5 min."""
    connect_timeout: float = 10.0
    """Seconds for the client's TCP connect (when given an unconnected socket). Istio: 10 s."""
    handshake_timeout: float = 10.0
    """Seconds for the TLS handshake, both ends, so a silent peer cannot hold a connection
    (and its socket) forever."""
    write_buffer: int = 400 * KiB
    """Bytes queued in the TLS transport before stream writers wait for the socket to drain.
    Istio's server caps its HTTP/2 send buffer at 400 KiB."""
    relay_chunk: int = 256 * KiB
    """Largest read from a plain TCP socket in `relay_socket_stream` (bytes): one read becomes
    at most one DATA frame per window slice; larger reads cost memory per connection."""

    def __post_init__(self) -> None:
        _window("stream_window", self.stream_window)
        _window("connection_window", self.connection_window)
        if self.connection_window < self.stream_window:
            raise ConfigError(
                f"connection_window ({self.connection_window}) must be >= stream_window "
                f"({self.stream_window}); use about 4x to avoid cross-stream deadlocks")
        if not _H2_MIN_FRAME <= self.max_frame_size <= _H2_MAX_FRAME:
            raise ConfigError(f"max_frame_size must be in [16384, 16777215], "
                              f"got {self.max_frame_size}")
        for name in ("server_max_streams", "client_max_streams", "client_max_header_list",
                     "server_max_header_list", "write_buffer", "relay_chunk"):
            _positive(name, getattr(self, name))
        for name in ("ping_interval", "ping_timeout", "idle_timeout", "connect_timeout",
                     "handshake_timeout"):
            _positive(name, getattr(self, name))


def _window(name: str, value: int) -> None:
    if not 65535 <= value <= _H2_MAX_WINDOW:
        raise ConfigError(f"{name} must be in [65535, 2**31-1] bytes, got {value}")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
