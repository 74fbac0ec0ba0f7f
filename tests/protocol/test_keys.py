"""Device lists and signed keys (docs/protocol.md §3)."""

from __future__ import annotations

import hashlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from samizdat.crypto.signing import SigningKey, signed_message
from samizdat.errors import ErrorCode, ProtocolError
from samizdat.protocol import limits
from samizdat.protocol.keys import (
    AUTH_CONTEXT,
    DEVICE_LIST_CONTEXT,
    ONE_TIME_KEY_CONTEXT,
    DeviceKeys,
    DeviceList,
    SignedDeviceList,
    SignedKey,
    auth_message,
    decode_device_list,
    device_id_for,
    one_time_key_message,
    verify_signed_key,
)
from tests.protocol import strategies as s


@given(s.signed_device_lists())
def test_signed_device_list_round_trip(signed: SignedDeviceList) -> None:
    device_list = decode_device_list(signed)
    assert msgspec.msgpack.encode(device_list) == signed.body
    wire = msgspec.msgpack.encode(signed)
    assert msgspec.msgpack.decode(wire, type=SignedDeviceList) == signed


@given(s.signed_device_lists(), st.data())
def test_tampered_device_list_body_is_rejected(
    signed: SignedDeviceList, data: st.DataObject
) -> None:
    body = bytearray(signed.body)
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    body[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(ProtocolError) as info:
        decode_device_list(SignedDeviceList(body=bytes(body), signature=signed.signature))
    # A flipped byte either breaks the encoding or the signature; never decodes as valid.
    assert info.value.code in {ErrorCode.BAD_FRAME, ErrorCode.BAD_SIGNATURE}


@given(s.signed_device_lists(), st.integers(min_value=0, max_value=63))
def test_tampered_device_list_signature_is_bad_signature(
    signed: SignedDeviceList, index: int
) -> None:
    signature = bytearray(signed.signature)
    signature[index] ^= 0x01
    with pytest.raises(ProtocolError) as info:
        decode_device_list(SignedDeviceList(body=signed.body, signature=bytes(signature)))
    assert info.value.code is ErrorCode.BAD_SIGNATURE


def test_device_list_signed_by_another_key_is_bad_signature() -> None:
    owner, other = s.KEYS[0], s.KEYS[1]
    device_list = DeviceList(
        user_key=owner.public_bytes, devices=[_device(owner)], version=1, issued_at=0
    )
    body = msgspec.msgpack.encode(device_list)
    forged = SignedDeviceList(body=body, signature=other.sign(DEVICE_LIST_CONTEXT, body))
    with pytest.raises(ProtocolError) as info:
        decode_device_list(forged)
    assert info.value.code is ErrorCode.BAD_SIGNATURE


def test_device_list_signature_is_bound_to_its_context() -> None:
    user = s.KEYS[0]
    device_list = DeviceList(
        user_key=user.public_bytes, devices=[_device(user)], version=1, issued_at=0
    )
    body = msgspec.msgpack.encode(device_list)
    wrong = SignedDeviceList(body=body, signature=user.sign(ONE_TIME_KEY_CONTEXT, body))
    with pytest.raises(ProtocolError) as info:
        decode_device_list(wrong)
    assert info.value.code is ErrorCode.BAD_SIGNATURE


def test_device_id_not_matching_its_key_is_rejected() -> None:
    user = s.KEYS[0]
    device = _device(s.KEYS[1])
    lying = DeviceKeys(
        device_id=device_id_for(s.KEYS[2].public_bytes),
        signing_key=device.signing_key,
        identity_key=device.identity_key,
        sealing_key=device.sealing_key,
    )
    signed = s.sign_device_list(
        DeviceList(user_key=user.public_bytes, devices=[device, lying], version=3, issued_at=5),
        user,
    )
    with pytest.raises(ProtocolError) as info:
        decode_device_list(signed)
    assert info.value.code is ErrorCode.BAD_FRAME


@pytest.mark.parametrize("count", [0, limits.MAX_DEVICES + 1])
def test_device_count_is_bounded(count: int) -> None:
    user = s.KEYS[0]
    device_list = DeviceList(
        user_key=user.public_bytes, devices=[_device(user)] * count, version=1, issued_at=0
    )
    with pytest.raises(ProtocolError) as info:
        decode_device_list(s.sign_device_list(device_list, user))
    assert info.value.code is ErrorCode.BAD_FRAME


@given(st.binary(max_size=300), s.sig64)
def test_garbage_device_list_raises_only_protocol_error(body: bytes, signature: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_device_list(SignedDeviceList(body=body, signature=signature))


def test_device_id_is_sha256_prefix_of_signing_key() -> None:
    key = s.KEYS[0].public_bytes
    assert device_id_for(key) == hashlib.sha256(key).digest()[:16]
    assert len(device_id_for(key)) == 16


@given(s.signed_keys(device=s.KEYS[0]))
def test_signed_key_round_trip_and_verify(key: SignedKey) -> None:
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(key), type=SignedKey)
    assert decoded == key
    verify_signed_key(s.KEYS[0].public_bytes, decoded)


@given(s.signed_keys(device=s.KEYS[0]))
def test_signed_key_by_another_device_is_bad_signature(key: SignedKey) -> None:
    with pytest.raises(ProtocolError) as info:
        verify_signed_key(s.KEYS[1].public_bytes, key)
    assert info.value.code is ErrorCode.BAD_SIGNATURE


@given(s.signed_keys(device=s.KEYS[0]))
def test_signed_key_fallback_flag_is_signed(key: SignedKey) -> None:
    flipped = SignedKey(
        key_id=key.key_id, key=key.key, signature=key.signature, fallback=not key.fallback
    )
    with pytest.raises(ProtocolError) as info:
        verify_signed_key(s.KEYS[0].public_bytes, flipped)
    assert info.value.code is ErrorCode.BAD_SIGNATURE


def test_signed_key_with_malformed_signing_key_is_bad_signature() -> None:
    key = s.sign_key(s.KEYS[0], "AAAAAQ", b"k" * 32, False)
    with pytest.raises(ProtocolError) as info:
        verify_signed_key(b"\x00" * 31, key)
    assert info.value.code is ErrorCode.BAD_SIGNATURE


def test_signed_bytes_are_as_specified() -> None:
    # §3: the exact bytes each signature covers; another implementation must match these.
    assert one_time_key_message("AAAAAQ", b"k" * 32, False) == b"AAAAAQ\x00" + b"k" * 32 + b"\x00"
    assert one_time_key_message("AAAAAQ", b"k" * 32, True) == b"AAAAAQ\x00" + b"k" * 32 + b"\x01"
    assert auth_message(b"s" * 32, b"n" * 32, b"d" * 16) == b"s" * 32 + b"n" * 32 + b"d" * 16
    assert signed_message(AUTH_CONTEXT, b"m") == b"samizdat/auth/v1\x00m"
    assert DEVICE_LIST_CONTEXT == b"samizdat/device-list/v1"
    assert ONE_TIME_KEY_CONTEXT == b"samizdat/one-time-key/v1"


def _device(signing: SigningKey) -> DeviceKeys:
    public = signing.public_bytes
    return DeviceKeys(
        device_id=device_id_for(public),
        signing_key=public,
        identity_key=b"i" * 32,
        sealing_key=b"s" * 32,
    )


def test_invalid_utf8_in_device_list_is_bad_frame() -> None:
    user = s.KEYS[0]
    device_list = DeviceList(
        user_key=user.public_bytes,
        devices=[_device(user)],
        version=1,
        issued_at=0,
        display_name="\x7f",
    )
    body = msgspec.msgpack.encode(device_list).replace(b"\xa1\x7f", b"\xa1\xff")
    signed = SignedDeviceList(body=body, signature=user.sign(DEVICE_LIST_CONTEXT, body))
    with pytest.raises(ProtocolError) as info:
        decode_device_list(signed)
    assert info.value.code is ErrorCode.BAD_FRAME
