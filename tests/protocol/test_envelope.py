"""Envelope layers inside a mailbox entry (docs/protocol.md §6)."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from samizdat.errors import DecryptionError
from samizdat.protocol import limits
from samizdat.protocol.envelope import (
    MAX_MESSAGE_TEXT,
    Payload,
    PayloadKind,
    Sealed,
    SealedBox,
    decode_payload,
    decode_sealed,
    decode_sealed_box,
    encode_struct,
)
from tests.protocol import strategies as s

DECODERS: list[Callable[[bytes], object]] = [decode_sealed_box, decode_sealed, decode_payload]


@given(s.sealed_boxes)
def test_sealed_box_round_trip(box: SealedBox) -> None:
    assert decode_sealed_box(encode_struct(box)) == box


@given(s.sealeds)
def test_sealed_round_trip(sealed: Sealed) -> None:
    assert decode_sealed(encode_struct(sealed)) == sealed


@given(s.payloads)
def test_payload_round_trip(payload: Payload) -> None:
    assert decode_payload(encode_struct(payload)) == payload


def test_wire_layouts() -> None:
    box = SealedBox(version=1, ephemeral_key=b"e" * 32, ciphertext=b"c")
    assert set(msgspec.msgpack.decode(encode_struct(box))) == {
        "version",
        "ephemeral_key",
        "ciphertext",
    }
    sealed = Sealed(sender_identity_key=b"i" * 32, olm_type=0, olm=b"o")
    assert set(msgspec.msgpack.decode(encode_struct(sealed))) == {
        "sender_identity_key",
        "olm_type",
        "olm",
    }
    payload = Payload(msg_id=b"m" * 16, sent_at=1, kind=PayloadKind.TEXT, text="hi")
    assert msgspec.msgpack.decode(encode_struct(payload)) == {
        "msg_id": b"m" * 16,
        "sent_at": 1,
        "kind": "text",
        "text": "hi",
        "card": None,
        "control": None,
        "action": None,
        "attachment": None,
    }


@pytest.mark.parametrize(
    ("decode", "value"),
    [
        (decode_sealed, {"sender_identity_key": b"i" * 32, "olm_type": 2, "olm": b""}),
        (decode_sealed, {"sender_identity_key": b"i" * 31, "olm_type": 0, "olm": b""}),
        (
            decode_sealed_box,
            {"version": 1, "ephemeral_key": b"e" * 31, "ciphertext": b""},
        ),
        (
            decode_sealed_box,
            {
                "version": 1,
                "ephemeral_key": b"e" * 32,
                "ciphertext": b"c" * (limits.MAX_ENVELOPE_BODY + 1),
            },
        ),
        (decode_payload, {"msg_id": b"m" * 16, "sent_at": 0, "kind": "file"}),
        (
            decode_payload,
            {
                "msg_id": b"m" * 16,
                "sent_at": 0,
                "kind": "text",
                "text": "x" * (MAX_MESSAGE_TEXT + 1),
            },
        ),
    ],
)
def test_out_of_bounds_is_decryption_error(
    decode: Callable[[bytes], object], value: object
) -> None:
    with pytest.raises(DecryptionError):
        decode(msgspec.msgpack.encode(value))


@given(st.binary(max_size=400))
def test_garbage_raises_only_decryption_error(data: bytes) -> None:
    for decode in DECODERS:
        try:
            decode(data)
        except DecryptionError:
            pass


@given(s.payloads, st.data())
def test_mutated_payload_raises_only_decryption_error(
    payload: Payload, data: st.DataObject
) -> None:
    raw = bytearray(encode_struct(payload))
    index = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[index] = data.draw(st.integers(min_value=0, max_value=255))
    try:
        decode_payload(bytes(raw))
    except DecryptionError:
        pass


def test_invalid_utf8_is_decryption_error() -> None:
    payload = Payload(msg_id=b"m" * 16, sent_at=1, kind=PayloadKind.TEXT, text="\x7f")
    raw = encode_struct(payload).replace(b"\xa1\x7f", b"\xa1\xff")
    with pytest.raises(DecryptionError):
        decode_payload(raw)
