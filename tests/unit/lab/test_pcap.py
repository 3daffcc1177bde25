"""Reading a capture: TCP packets out of pcap bytes, and what they show about one connection."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inmesh.lab.pcap import PcapError, TcpPacket, decode_frame, tcp_packets, wire_evidence

CLIENT, SERVER = "10.244.1.2", "10.244.2.2"


def _frame(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0,
                     bytes(int(x) for x in src.split(".")),
                     bytes(int(x) for x in dst.split(".")))  # fmt: skip
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp


def _pcap(*frames: bytes, magic: bytes = b"\xd4\xc3\xb2\xa1", linktype: int = 1) -> bytes:
    order = "<" if magic[0] in (0xD4, 0x4D) else ">"
    out = magic + struct.pack(order + "HHiIII", 2, 4, 0, 0, 262144, linktype)
    for f in frames:
        out += struct.pack(order + "IIII", 0, 0, len(f), len(f)) + f
    return out


HELLO = _frame(CLIENT, SERVER, 40000, 15008, b"\x16\x03\x01\x00\xc8")
PLAIN = _frame("10.244.1.3", SERVER, 40001, 8080, b"plain-marker\n")
ARP = b"\xff" * 12 + b"\x08\x06" + b"\x00" * 28


def test_tcp_packets_are_decoded_and_other_frames_skipped() -> None:
    got = tcp_packets(_pcap(ARP, HELLO, PLAIN))
    assert got == [
        TcpPacket(CLIENT, SERVER, 40000, 15008, b"\x16\x03\x01\x00\xc8"),
        TcpPacket("10.244.1.3", SERVER, 40001, 8080, b"plain-marker\n"),
    ]
    assert tcp_packets(_pcap(HELLO, magic=b"\xa1\xb2\xc3\xd4")) == got[:1]  # big-endian file
    assert tcp_packets(_pcap(HELLO, magic=b"\x4d\x3c\xb2\xa1")) == got[:1]  # nanosecond file


def test_wire_evidence_names_tls_to_15008_and_the_marker() -> None:
    pcap = _pcap(HELLO, PLAIN)
    mesh = wire_evidence(pcap, SERVER, b"secret")
    assert mesh.tls_to == (f"{SERVER}:15008",)  # 8080's first bytes were not TLS
    assert not mesh.marker_seen
    assert mesh.packets == 2
    assert wire_evidence(pcap, SERVER, b"plain-marker").marker_seen
    assert wire_evidence(pcap, "10.9.9.9", b"x") == wire_evidence(_pcap(), "10.9.9.9", b"x")


def test_a_record_cut_short_is_ignored() -> None:
    assert tcp_packets(_pcap(HELLO, PLAIN)[:-3]) == tcp_packets(_pcap(HELLO))


@pytest.mark.parametrize(
    ("data", "why"),
    [(b"", "not a pcap"), (b"GIF89a" + b"\x00" * 30, "not a pcap"),
     (_pcap(HELLO, linktype=113), "link type 113")],
)  # fmt: skip
def test_other_files_are_pcap_errors(data: bytes, why: str) -> None:
    with pytest.raises(PcapError, match=why):
        tcp_packets(data)


@given(st.integers(min_value=0, max_value=len(HELLO) + len(PLAIN) + 60))
def test_any_truncation_gives_a_prefix_or_a_pcap_error(cut: int) -> None:
    full = tcp_packets(_pcap(HELLO, PLAIN))
    try:
        got = tcp_packets(_pcap(HELLO, PLAIN)[:cut])
    except PcapError:
        return
    assert got == full[: len(got)]


@given(st.binary(max_size=80))
def test_any_frame_decodes_or_is_skipped(frame: bytes) -> None:
    got = decode_frame(frame)
    assert got is None or isinstance(got, TcpPacket)


@given(st.binary(max_size=200), st.integers(min_value=24, max_value=200))
def test_garbage_after_a_valid_header_never_escapes_as_another_error(
    junk: bytes, at: int
) -> None:
    data = bytearray(_pcap(HELLO, PLAIN) + junk)
    data[at % len(data)] ^= 0xFF
    try:
        got = tcp_packets(bytes(data))
    except PcapError:
        return
    assert all(isinstance(p, TcpPacket) for p in got)
