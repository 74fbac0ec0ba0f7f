"""Sealed sender boxes: round trip, tamper detection, wrong key."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samizdat.client.messaging import open_entry, seal_to_device
from samizdat.crypto.sealing import SealingKey, seal
from samizdat.errors import DecryptionError, LocalError
from samizdat.protocol.envelope import decode_sealed_box, encode_struct
from samizdat.protocol.keys import DeviceKeys

KEY = SealingKey.generate()


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=5000))
def test_round_trip(plaintext: bytes) -> None:
    assert KEY.unseal(seal(KEY.public_bytes, plaintext)) == plaintext


@pytest.mark.parametrize("field", ["ephemeral_key", "ciphertext"])
def test_flipped_key_or_ciphertext_is_detected(field: str) -> None:
    parts = seal(KEY.public_bytes, b"attack at dawn")
    value = getattr(parts, field)
    flipped = value[:-1] + bytes([value[-1] ^ 0x01])
    with pytest.raises(DecryptionError):
        KEY.unseal(dataclasses.replace(parts, **{field: flipped}))


def test_wrong_key_and_bad_keys() -> None:
    parts = seal(KEY.public_bytes, b"for KEY only")
    with pytest.raises(DecryptionError):
        SealingKey.generate().unseal(parts)
    with pytest.raises(DecryptionError):
        seal(b"short", b"x")
    with pytest.raises(LocalError):
        SealingKey.from_secret_bytes(b"short")


def test_secret_round_trip_and_repr() -> None:
    again = SealingKey.from_secret_bytes(KEY.secret_bytes())
    assert again.public_bytes == KEY.public_bytes
    assert again.unseal(seal(KEY.public_bytes, b"hi")) == b"hi"
    text = repr(KEY) + str(KEY)
    assert KEY.secret_bytes().hex() not in text and "<secret>" in text


def test_envelope_layers_round_trip_and_tamper() -> None:
    device = DeviceKeys(
        device_id=bytes(16),
        signing_key=bytes(32),
        identity_key=bytes(32),
        sealing_key=KEY.public_bytes,
    )
    body = seal_to_device(device, b"\x07" * 32, 1, b"olm bytes")
    sealed = open_entry(KEY, body)
    assert (sealed.sender_identity_key, sealed.olm_type, sealed.olm) == (
        b"\x07" * 32,
        1,
        b"olm bytes",
    )
    with pytest.raises(DecryptionError):
        open_entry(KEY, body[:-1] + bytes([body[-1] ^ 1]))
    with pytest.raises(DecryptionError):
        open_entry(KEY, b"\x00not msgpack")
    with pytest.raises(DecryptionError):
        open_entry(SealingKey.generate(), body)


def test_every_flipped_ciphertext_byte_is_caught_by_the_box_itself() -> None:
    """The AEAD tag covers the whole ciphertext: the box is not malleable on its own."""
    device = DeviceKeys(
        device_id=bytes(16),
        signing_key=bytes(32),
        identity_key=bytes(32),
        sealing_key=KEY.public_bytes,
    )
    box = decode_sealed_box(seal_to_device(device, b"\x07" * 32, 0, b"first message"))
    for position in range(len(box.ciphertext)):
        ciphertext = bytearray(box.ciphertext)
        ciphertext[position] ^= 0x01
        body = encode_struct(msgspec.structs.replace(box, ciphertext=bytes(ciphertext)))
        with pytest.raises(DecryptionError):
            open_entry(KEY, body)
    assert open_entry(KEY, encode_struct(box)).olm == b"first message"
