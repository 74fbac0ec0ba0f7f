"""Server descriptors (docs/protocol.md §4)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from samizdat.errors import ErrorCode, ProtocolError
from samizdat.protocol import limits
from samizdat.protocol.descriptor import (
    DESCRIPTOR_CONTEXT,
    Descriptor,
    Endpoint,
    SignedDescriptor,
    open_descriptor,
    sign_descriptor,
)
from tests.protocol import strategies as s

SERVER = s.KEYS[0]
OTHER = s.KEYS[1]


def _descriptor(**changes: object) -> Descriptor:
    base = Descriptor(
        server_key=SERVER.public_bytes,
        seq=1,
        endpoints=[Endpoint(url="wss://127.0.0.1:8443/v1/ws")],
        tls_ca=b"ca",
        tls_pin=b"p" * 32,
        issued_at=1_000,
        expires_at=2_000,
    )
    return msgspec.structs.replace(base, **changes)


@given(s.descriptors(SERVER))
def test_sign_open_round_trip(descriptor: Descriptor) -> None:
    signed = sign_descriptor(descriptor, SERVER)
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(signed), type=SignedDescriptor)
    now = descriptor.expires_at - 1
    assert open_descriptor(wire, now) == descriptor
    assert open_descriptor(wire, now, expected_key=SERVER.public_bytes) == descriptor


@given(s.descriptors(SERVER), st.data())
def test_tampered_body_is_rejected(descriptor: Descriptor, data: st.DataObject) -> None:
    signed = sign_descriptor(descriptor, SERVER)
    body = bytearray(signed.body)
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    body[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(ProtocolError) as info:
        open_descriptor(SignedDescriptor(body=bytes(body), signature=signed.signature), 0)
    assert info.value.code in {ErrorCode.BAD_FRAME, ErrorCode.BAD_SIGNATURE}


@given(st.integers(min_value=0, max_value=63))
def test_tampered_signature_is_bad_signature(index: int) -> None:
    signed = sign_descriptor(_descriptor(), SERVER)
    signature = bytearray(signed.signature)
    signature[index] ^= 0x80
    with pytest.raises(ProtocolError) as info:
        open_descriptor(SignedDescriptor(body=signed.body, signature=bytes(signature)), 0)
    assert info.value.code is ErrorCode.BAD_SIGNATURE


def test_descriptor_signed_by_another_key_is_rejected() -> None:
    # Claims SERVER's key but is signed by OTHER: the signature check fails.
    forged = sign_descriptor(_descriptor(), OTHER)
    with pytest.raises(ProtocolError) as info:
        open_descriptor(forged, 0)
    assert info.value.code is ErrorCode.BAD_SIGNATURE


def test_valid_descriptor_of_another_server_is_rejected() -> None:
    # Properly self-signed by OTHER, but the client already trusts SERVER for this server.
    other = sign_descriptor(_descriptor(server_key=OTHER.public_bytes), OTHER)
    assert open_descriptor(other, 0).server_key == OTHER.public_bytes
    with pytest.raises(ProtocolError) as info:
        open_descriptor(other, 0, expected_key=SERVER.public_bytes)
    assert info.value.code is ErrorCode.BAD_SIGNATURE


def test_signature_is_bound_to_the_descriptor_context() -> None:
    body = msgspec.msgpack.encode(_descriptor())
    wrong = SignedDescriptor(body=body, signature=SERVER.sign(b"samizdat/device-list/v1", body))
    with pytest.raises(ProtocolError):
        open_descriptor(wrong, 0)
    right = SignedDescriptor(body=body, signature=SERVER.sign(DESCRIPTOR_CONTEXT, body))
    assert open_descriptor(right, 0) == _descriptor()


@pytest.mark.parametrize("now", [2_000, 2_001, 2**53])
def test_expired_descriptor_is_rejected(now: int) -> None:
    signed = sign_descriptor(_descriptor(expires_at=2_000), SERVER)
    assert open_descriptor(signed, 1_999).expires_at == 2_000
    with pytest.raises(ProtocolError) as info:
        open_descriptor(signed, now)
    assert info.value.code is ErrorCode.BAD_FRAME


@pytest.mark.parametrize(
    "changes",
    [
        {"endpoints": []},
        {"endpoints": [Endpoint(url="wss://x")] * (limits.MAX_ENDPOINTS + 1)},
        {"endpoints": [Endpoint(url="x" * (limits.MAX_URL + 1))]},
        {"tls_ca": b"c" * (limits.MAX_CERT + 1)},
        {"tls_pin": b"p" * 31},
        {"server_key": b"k" * 33},
    ],
)
def test_out_of_bounds_descriptor_is_bad_frame(changes: dict[str, object]) -> None:
    signed = sign_descriptor(_descriptor(**changes), SERVER)
    with pytest.raises(ProtocolError) as info:
        open_descriptor(signed, 0)
    assert info.value.code is ErrorCode.BAD_FRAME


@given(st.binary(max_size=400), s.sig64, st.none() | s.key32)
def test_garbage_raises_only_protocol_error(
    body: bytes, signature: bytes, expected: bytes | None
) -> None:
    with pytest.raises(ProtocolError):
        open_descriptor(SignedDescriptor(body=body, signature=signature), 0, expected)
