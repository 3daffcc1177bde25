"""Reading what crossed a lab link: TCP packets out of a classic pcap file (tcpdump -w).

Pure. Ethernet frames with IPv4 and TCP are decoded; other frames are skipped, and a record cut
short at the end (tcpdump interrupted mid-write) is ignored. A file that is not a pcap of
Ethernet frames raises `PcapError`, the only exception that leaves this module.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from inmesh.errors import InmeshError

ETHERNET = 1
ETH_IPV4 = 0x0800
IPPROTO_TCP = 6
ETH_HEADER = 14
GLOBAL_HEADER = 24
RECORD_HEADER = 16
TLS_HANDSHAKE = 0x16
"""First byte of a TLS record that carries a handshake message (a ClientHello opens it)."""
_MAGIC = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",  # microsecond timestamps
          b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}  # nanosecond  # fmt: skip


class PcapError(InmeshError):
    """The capture file is not a pcap of Ethernet frames."""


@dataclass(frozen=True)
class TcpPacket:
    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes


def _ip(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def decode_frame(frame: bytes) -> TcpPacket | None:
    """The TCP segment in an Ethernet frame, or None if it holds something else (or too little)."""
    if len(frame) < ETH_HEADER + 20 or struct.unpack("!H", frame[12:14])[0] != ETH_IPV4:
        return None
    ip = frame[ETH_HEADER:]
    ihl = (ip[0] & 0x0F) * 4
    total = min(struct.unpack("!H", ip[2:4])[0], len(ip))
    if ip[0] >> 4 != 4 or ip[9] != IPPROTO_TCP or ihl < 20 or total < ihl + 20:
        return None
    tcp = ip[ihl:total]
    sport, dport = struct.unpack("!HH", tcp[:4])
    offset = (tcp[12] >> 4) * 4
    return TcpPacket(_ip(ip[12:16]), _ip(ip[16:20]), sport, dport, bytes(tcp[max(offset, 20):]))


def tcp_packets(pcap: bytes) -> list[TcpPacket]:
    """Every IPv4 TCP packet in the capture, in order."""
    order = _MAGIC.get(pcap[:4])
    if order is None or len(pcap) < GLOBAL_HEADER:
        raise PcapError(f"not a pcap file (starts with {pcap[:4]!r})")
    linktype = struct.unpack(order + "I", pcap[20:24])[0] & 0x0FFFFFFF
    if linktype != ETHERNET:
        raise PcapError(f"capture of link type {linktype}, expected Ethernet ({ETHERNET})")
    packets, at = [], GLOBAL_HEADER
    while at + RECORD_HEADER <= len(pcap):
        incl = struct.unpack(order + "I", pcap[at + 8 : at + 12])[0]
        frame = pcap[at + RECORD_HEADER : at + RECORD_HEADER + incl]
        if len(frame) < incl:
            break  # the last record was cut short
        at += RECORD_HEADER + incl
        if (pkt := decode_frame(frame)) is not None:
            packets.append(pkt)
    return packets


@dataclass(frozen=True)
class WireEvidence:
    """What a capture shows about one connection to ``dst``."""

    packets: int
    """TCP packets to or from ``dst`` in the capture."""
    tls_to: tuple[str, ...]
    """``ip:port`` of ``dst`` that received a TLS handshake record as first payload."""
    marker_seen: bool
    """The application's marker bytes appear anywhere in the capture, in the clear."""


def wire_evidence(pcap: bytes, dst: str, marker: bytes) -> WireEvidence:
    packets = [p for p in tcp_packets(pcap) if dst in (p.src, p.dst)]
    first: dict[int, bytes] = {}
    for p in packets:
        if p.dst == dst and p.payload and p.dport not in first:
            first[p.dport] = p.payload
    tls = tuple(f"{dst}:{port}" for port, data in sorted(first.items())
                if data[0] == TLS_HANDSHAKE)  # fmt: skip
    return WireEvidence(len(packets), tls, marker in pcap)
