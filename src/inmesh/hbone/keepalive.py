"""HTTP/2 PING keepalive as a pure state machine: time in, the PING to send or the verdict out.

One PING is outstanding at a time. The first is due ``interval`` after the start, the next one
``interval`` after the previous was sent (or at once, if its ACK came later than that). A PING
unanswered for ``timeout`` seconds means the peer is gone (Istio: 10 s and 20 s, both ends).
"""

from __future__ import annotations


class Keepalive:
    """When to PING and whether the peer still answers; all times are the caller's clock."""

    def __init__(self, now: float, interval: float, timeout: float) -> None:
        self._interval = interval
        self._timeout = timeout
        self._due = now + interval
        self._outstanding: bytes | None = None
        self._expires = 0.0
        self._count = 0

    def next_deadline(self) -> float:
        return self._expires if self._outstanding is not None else self._due

    def poll(self, now: float) -> bytes | None:
        """The opaque payload of a PING to send now, or None.
        Raises `TimeoutError` if the outstanding PING went unanswered for too long."""
        if self._outstanding is not None:
            if now >= self._expires:
                raise TimeoutError(f"no PING ACK within {self._timeout:g} s")
            return None
        if now < self._due:
            return None
        self._count += 1
        self._outstanding = self._count.to_bytes(8, "big")
        self._expires = now + self._timeout
        self._due = now + self._interval
        return self._outstanding

    def acked(self, payload: bytes) -> None:
        """A PING ACK arrived; ACKs of other PINGs (the peer's own) are ignored."""
        if payload == self._outstanding:
            self._outstanding = None
