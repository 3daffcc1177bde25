"""ZDS message encodings: golden bytes from the reference, round trips, and decoder robustness."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inmesh.errors import LocalProtocolError, RemoteProtocolError
from inmesh.zds.messages import (
    MAX_RECORD,
    Ack,
    AddWorkload,
    DelWorkload,
    Hello,
    KeepWorkload,
    SnapshotSent,
    WorkloadInfo,
    WorkloadRequest,
    ZdsDecodeError,
    decode_ack,
    decode_hello,
    decode_request,
    encode_ack,
    encode_hello,
    encode_request,
    nack_text,
)

from .helpers import field as _field
from .helpers import hand_add

GOLDEN_REQUESTS: list[tuple[WorkloadRequest, str]] = [
    (SnapshotSent(), "1a 00"),
    (DelWorkload("abc"), "12 05 12 03 61 62 63"),
    (KeepWorkload("abc"), "2a 05 0a 03 61 62 63"),
    (
        AddWorkload("u1", WorkloadInfo("web", "ns", "sa")),
        "0a 13 0a 02 75 31 12 0d 0a 03 77 65 62 12 02 6e 73 1a 02 73 61",
    ),
]


@pytest.mark.parametrize(("request_", "golden"), GOLDEN_REQUESTS)
def test_requests_encode_to_the_reference_bytes_and_back(request_: WorkloadRequest, golden: str) -> None:
    data = bytes.fromhex(golden)
    assert encode_request(request_) == data
    assert decode_request(data) == request_


def test_hand_built_add_matches_the_encoder() -> None:
    request = AddWorkload("6f1c-uid", WorkloadInfo("web-1", "default", "web"))
    assert encode_request(request) == hand_add("6f1c-uid", "web-1", "default", "web")
    assert decode_request(hand_add("6f1c-uid", "web-1", "default", "web")) == request


def test_hello_v1_is_08_01() -> None:
    assert encode_hello(Hello(1)) == b"\x08\x01"
    assert decode_hello(b"\x08\x01") == Hello(1)


@pytest.mark.parametrize(
    ("ack", "golden"), [(Ack(), "0a 00"), (Ack("x"), "0a 03 0a 01 78")]
)
def test_acks_encode_to_the_reference_bytes_and_back(ack: Ack, golden: str) -> None:
    assert encode_ack(ack) == bytes.fromhex(golden)
    assert decode_ack(bytes.fromhex(golden)) == ack
    assert ack.ok is (ack.error == "")


def test_add_without_workload_info_decodes_with_info_none() -> None:
    assert decode_request(_field(0x0A, _field(0x0A, b"u"))) == AddWorkload("u", None)
    assert encode_request(AddWorkload("u", None)) == bytes.fromhex("0a 03 0a 01 75")


def test_del_uid_is_field_2_and_field_1_is_ignored() -> None:
    """Field 1 of DelWorkload is unused: a peer that puts the uid there sends an empty uid."""
    assert decode_request(bytes.fromhex("12 05 0a 03 61 62 63")) == DelWorkload("")


@pytest.mark.parametrize(
    "data",
    [b"", b"\x22\x00", bytes.fromhex("0a 00 0a 00")[:1], b"\xff\xff\xff", b"\x12\x02\xff\xfe"],
    ids=["empty", "unused-field-4", "truncated", "garbage", "bad-utf8"],
)
def test_requests_without_a_known_payload_are_decode_errors(data: bytes) -> None:
    with pytest.raises(ZdsDecodeError):
        decode_request(data)


def test_response_without_ack_is_a_decode_error() -> None:
    with pytest.raises(ZdsDecodeError):
        decode_ack(b"")
    with pytest.raises(ZdsDecodeError, match="undecodable"):
        decode_ack(b"\x0a\x05\x0a")


def test_decode_error_is_a_remote_protocol_error() -> None:
    assert issubclass(ZdsDecodeError, RemoteProtocolError)


def test_records_over_the_limit_are_refused_both_ways() -> None:
    big = "x" * MAX_RECORD
    with pytest.raises(LocalProtocolError, match="1024-byte record limit"):
        encode_request(DelWorkload(big))
    with pytest.raises(LocalProtocolError):
        encode_request(AddWorkload("u", WorkloadInfo(big, "ns", "sa")))
    with pytest.raises(LocalProtocolError):
        encode_ack(Ack(big))
    with pytest.raises(ZdsDecodeError, match="exceeds"):
        decode_request(b"\x1a\x00" + b"\x00" * MAX_RECORD)


def test_largest_del_that_fits_is_exactly_one_record() -> None:
    uid = "u" * (MAX_RECORD - 6)  # 12 <len:2> 12 <len:2> uid
    assert len(encode_request(DelWorkload(uid))) == MAX_RECORD
    with pytest.raises(LocalProtocolError):
        encode_request(DelWorkload(uid + "u"))


def test_unencodable_text_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_request(KeepWorkload("\udc80"))
    with pytest.raises(LocalProtocolError):
        encode_hello(Hello(2**40))


@given(st.text(max_size=3000))
def test_nack_text_always_fits_in_one_record(text: str) -> None:
    assert len(encode_ack(Ack(nack_text(text)))) <= MAX_RECORD


# -- properties -------------------------------------------------------------------------------

_text = st.text(max_size=60)
_info = st.builds(WorkloadInfo, _text, _text, _text)
requests: st.SearchStrategy[WorkloadRequest] = st.one_of(
    st.builds(AddWorkload, _text, st.none() | _info),
    st.builds(KeepWorkload, _text),
    st.builds(DelWorkload, _text),
    st.just(SnapshotSent()),
)


@given(requests)
def test_every_request_round_trips(request_: WorkloadRequest) -> None:
    assert decode_request(encode_request(request_)) == request_


@given(st.text(max_size=200))
def test_every_ack_round_trips(error: str) -> None:
    assert decode_ack(encode_ack(Ack(error))) == Ack(error)


@given(st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_every_hello_version_round_trips(version: int) -> None:
    assert decode_hello(encode_hello(Hello(version))) == Hello(version)


def _decodes_or_decode_error(data: bytes) -> None:
    for decode in (decode_request, decode_ack, decode_hello):
        with contextlib.suppress(ZdsDecodeError):
            decode(data)


@given(st.binary(max_size=MAX_RECORD + 16))
def test_arbitrary_bytes_raise_only_zds_decode_error(data: bytes) -> None:
    _decodes_or_decode_error(data)


@given(requests, st.data())
def test_truncated_records_raise_only_zds_decode_error(request_: WorkloadRequest, data: st.DataObject) -> None:
    encoded = encode_request(request_)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded)))
    _decodes_or_decode_error(encoded[:cut])


@given(requests, st.data())
def test_mutated_records_raise_only_zds_decode_error(request_: WorkloadRequest, data: st.DataObject) -> None:
    encoded = bytearray(encode_request(request_))
    index = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    encoded[index] = data.draw(st.integers(min_value=0, max_value=255))
    _decodes_or_decode_error(bytes(encoded))
