"""Frames (docs/protocol.md §5): round trips, wire layout, limits, and a fuzzer."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from samizdat.errors import ErrorCode, ProtocolError
from samizdat.protocol import frames, limits
from tests.protocol import strategies as s

# The wire names of §5.3, pinned so that the spec and the code cannot drift apart.
CLIENT_LAYOUT: dict[str, set[str]] = {
    "hello": {"versions", "client"},
    "register": {"rid", "device", "devices", "proof"},
    "auth": {"rid", "device_id", "proof"},
    "upload_keys": {"rid", "one_time_keys", "fallback_key"},
    "claim_keys": {"rid", "token", "device_id"},
    "add_token": {"rid", "token"},
    "revoke_token": {"rid", "token"},
    "deposit": {"rid", "token", "envelopes"},
    "fanout": {"rid", "msg_id", "body", "targets", "expires_at"},
    "subscribe": {"rid", "after"},
    "ack": {"rid", "up_to"},
    "blob_open": {"rid", "blob_id", "size", "read_hash", "ttl_ms"},
    "blob_write": {"rid", "blob_id", "offset", "data"},
    "blob_read": {"rid", "blob_id", "secret", "offset"},
    "blob_delete": {"rid", "blob_id"},
}
SERVER_LAYOUT: dict[str, set[str]] = {
    "welcome": {"version", "nonce", "descriptor", "server_time", "limits"},
    "auth_ok": {"rid", "device_id", "one_time_keys", "has_fallback_key"},
    "key_bundle": {"rid", "devices", "device_id", "key"},
    "deposit_ok": {"rid", "stored", "duplicates"},
    "deliver": {"entries"},
    "ok": {"rid"},
    "error": {"rid", "code", "message"},
    "descriptor": {"descriptor"},
    "blob_status": {"rid", "size", "received", "expires_at"},
    "blob_data": {"rid", "offset", "size", "data"},
}

# Arbitrary msgpack values, to reach the decoder past the outer map with plausible shapes.
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)
tags = st.sampled_from(sorted(CLIENT_LAYOUT) + sorted(SERVER_LAYOUT) + ["", "nope"])
field_names = st.sampled_from(sorted(set().union(*CLIENT_LAYOUT.values(), *SERVER_LAYOUT.values())))
frame_like_maps = st.builds(
    lambda tag, fields: {"t": tag, **fields},
    tags,
    st.dictionaries(field_names, msgpack_values, max_size=6),
)


def _wire_map(frame: frames.ClientFrame | frames.ServerFrame) -> dict[str, Any]:
    value = msgspec.msgpack.decode(frames.encode(frame))
    assert isinstance(value, dict)
    return value


@given(s.client_frames)
def test_client_frames_round_trip(frame: frames.ClientFrame) -> None:
    assert frames.decode_client_frame(frames.encode(frame)) == frame


@given(s.server_frames)
def test_server_frames_round_trip(frame: frames.ServerFrame) -> None:
    assert frames.decode_server_frame(frames.encode(frame)) == frame


@given(s.client_frames)
def test_client_frame_wire_layout(frame: frames.ClientFrame) -> None:
    wire = _wire_map(frame)
    tag = wire.pop("t")
    assert set(wire) == CLIENT_LAYOUT[tag]


@given(s.server_frames)
def test_server_frame_wire_layout(frame: frames.ServerFrame) -> None:
    wire = _wire_map(frame)
    tag = wire.pop("t")
    assert set(wire) == SERVER_LAYOUT[tag]


def test_every_frame_type_has_a_layout() -> None:
    client_tags = {cls.__struct_config__.tag for cls in frames.ClientFrame.__args__}
    server_tags = {cls.__struct_config__.tag for cls in frames.ServerFrame.__args__}
    assert client_tags == set(CLIENT_LAYOUT)
    assert server_tags == set(SERVER_LAYOUT)


def test_hello_bytes_are_a_plain_msgpack_map() -> None:
    # §5.1: a frame is one msgpack map; any msgpack library can produce it.
    raw = msgspec.msgpack.encode({"t": "hello", "versions": [1]})
    assert frames.decode_client_frame(raw) == frames.Hello(versions=[1], client="")


@given(st.binary(max_size=512))
@example(b"")
@example(b"\xc1")
@example(b"\x81\xa1t\xa5hello")
def test_random_bytes_raise_only_protocol_error(data: bytes) -> None:
    for decode in (frames.decode_client_frame, frames.decode_server_frame):
        try:
            decode(data)
        except ProtocolError as exc:
            assert exc.code is ErrorCode.BAD_FRAME


@given(frame_like_maps)
def test_frame_shaped_maps_raise_only_protocol_error(value: dict[str, Any]) -> None:
    data = msgspec.msgpack.encode(value)
    for decode in (frames.decode_client_frame, frames.decode_server_frame):
        try:
            decode(data)
        except ProtocolError as exc:
            assert exc.code is ErrorCode.BAD_FRAME


@given(s.client_frames, st.data())
def test_mutated_frames_raise_only_protocol_error(frame: frames.ClientFrame, data: Any) -> None:
    raw = bytearray(frames.encode(frame))
    index = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[index] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    try:
        frames.decode_client_frame(bytes(raw[:cut]))
    except ProtocolError as exc:
        assert exc.code is ErrorCode.BAD_FRAME


def test_oversized_frame_is_frame_too_large() -> None:
    data = b"\x00" * (limits.MAX_FRAME + 1)
    for decode in (frames.decode_client_frame, frames.decode_server_frame):
        with pytest.raises(ProtocolError) as info:
            decode(data)
        assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_size_is_checked_before_parsing_against_the_given_limit() -> None:
    frame = frames.Deposit(
        rid=1, token=b"t" * 32, envelopes=[frames.Envelope(b"d" * 16, b"m" * 16, b"x" * 1000)]
    )
    raw = frames.encode(frame)
    assert frames.decode_client_frame(raw, max_frame=len(raw)) == frame
    with pytest.raises(ProtocolError) as info:
        frames.decode_client_frame(raw, max_frame=len(raw) - 1)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_largest_envelope_fits_in_a_frame() -> None:
    # §8: one envelope at the envelope limit, with its fields, must fit in MAX_FRAME.
    frame = frames.Deposit(
        rid=2**31 - 1,
        token=b"t" * 32,
        envelopes=[frames.Envelope(b"d" * 16, b"m" * 16, b"x" * limits.MAX_ENVELOPE_BODY)],
    )
    assert len(frames.encode(frame)) <= limits.MAX_FRAME


@pytest.mark.parametrize(
    "value",
    [
        {"t": "hello", "versions": []},
        {"t": "hello", "versions": [1], "client": "x" * (limits.MAX_TEXT + 1)},
        {"t": "deposit", "rid": 1, "token": b"t" * 32, "envelopes": []},
        {"t": "auth", "rid": 1, "device_id": b"d" * 15, "proof": b"p" * 64},
        {"t": "auth", "rid": -1, "device_id": b"d" * 16, "proof": b"p" * 64},
        {"t": "auth", "rid": 2**31, "device_id": b"d" * 16, "proof": b"p" * 64},
        {"t": "ack", "rid": 1, "up_to": -1},
        {"t": "ack", "rid": 1},
        {"t": "subscribe", "rid": 1, "after": "0"},
        {"t": "welcome"},
        {"rid": 1, "up_to": 1},
        [1, 2, 3],
    ],
)
def test_invalid_client_frames_are_bad_frame(value: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        frames.decode_client_frame(msgspec.msgpack.encode(value))
    assert info.value.code is ErrorCode.BAD_FRAME


def test_server_frames_are_not_client_frames() -> None:
    raw = frames.encode(frames.Ok(rid=1))
    with pytest.raises(ProtocolError):
        frames.decode_client_frame(raw)
    with pytest.raises(ProtocolError):
        frames.decode_server_frame(frames.encode(frames.Ack(rid=1, up_to=1)))


def test_deliver_carries_at_most_the_entry_limit() -> None:
    entry = frames.Entry(seq=1, msg_id=b"m" * 16, body=b"", received_at=0)
    too_many = frames.Deliver(entries=[entry] * (limits.MAX_ENTRIES_PER_DELIVER + 1))
    with pytest.raises(ProtocolError):
        frames.decode_server_frame(frames.encode(too_many))


def test_unknown_error_codes_still_decode() -> None:
    # §7: a client MUST accept codes it does not know, so servers can add codes.
    raw = msgspec.msgpack.encode({"t": "error", "rid": None, "code": "future_code"})
    assert frames.decode_server_frame(raw) == frames.Error(rid=None, code="future_code")


def test_unknown_fields_are_ignored() -> None:
    raw = msgspec.msgpack.encode({"t": "ok", "rid": 3, "extension": [1, 2]})
    assert frames.decode_server_frame(raw) == frames.Ok(rid=3)


def test_request_id() -> None:
    assert frames.request_id(frames.Hello(versions=[1])) is None
    assert frames.request_id(frames.Ack(rid=7, up_to=1)) == 7


def test_default_limits_are_the_protocol_limits() -> None:
    assert frames.Limits() == frames.Limits(
        max_frame=limits.MAX_FRAME,
        max_envelope_body=limits.MAX_ENVELOPE_BODY,
        max_envelopes_per_deposit=limits.MAX_ENVELOPES_PER_DEPOSIT,
        max_mailbox_entries=limits.MAX_MAILBOX_ENTRIES,
        max_keys_per_upload=limits.MAX_KEYS_PER_UPLOAD,
    )


def test_invalid_utf8_is_bad_frame() -> None:
    # msgspec raises UnicodeDecodeError, not DecodeError, for this; found by the fuzzer.
    raw = msgspec.msgpack.encode({"t": "hello", "versions": [1], "client": "\x7f"})
    raw = raw.replace(b"\xa1\x7f", b"\xa1\xff")
    for decode in (frames.decode_client_frame, frames.decode_server_frame):
        with pytest.raises(ProtocolError) as info:
            decode(raw)
        assert info.value.code is ErrorCode.BAD_FRAME
