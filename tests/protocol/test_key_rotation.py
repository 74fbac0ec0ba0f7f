"""Server key rotation signed by the old key (docs/protocol.md §4)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from samizdat.crypto.signing import SigningKey
from samizdat.errors import ErrorCode, ProtocolError
from samizdat.protocol.descriptor import (
    MAX_ROTATIONS,
    ROTATION_CONTEXT,
    Descriptor,
    Endpoint,
    KeyRotation,
    SignedDescriptor,
    SignedRotation,
    open_descriptor,
    open_rotation,
    sign_descriptor,
    sign_rotation,
)
from tests.protocol import strategies as s

OLD, NEW, THIRD, STRANGER = s.KEYS[0], s.KEYS[1], s.KEYS[2], s.KEYS[3]
NOW = 1_500


def _signed(signer: SigningKey, rotations: list[SignedRotation]) -> SignedDescriptor:
    descriptor = Descriptor(
        server_key=signer.public_bytes,
        seq=2,
        endpoints=[Endpoint(url="wss://127.0.0.1:8443/v1/ws")],
        tls_ca=b"ca",
        tls_pin=b"p" * 32,
        issued_at=1_000,
        expires_at=2_000,
        rotations=rotations,
    )
    return sign_descriptor(descriptor, signer)


def _rejected(signed: SignedDescriptor, expected: bytes) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        open_descriptor(signed, NOW, expected_key=expected)
    return info.value.code


def test_rotation_lets_the_old_key_trust_the_new_one() -> None:
    signed = _signed(NEW, [sign_rotation(OLD, NEW, 1_000)])
    opened = open_descriptor(signed, NOW, expected_key=OLD.public_bytes)
    assert opened.server_key == NEW.public_bytes
    # Those who already trust the new key, or nothing yet, accept it too.
    assert open_descriptor(signed, NOW, expected_key=NEW.public_bytes) == opened
    assert open_descriptor(signed, NOW) == opened


def test_descriptor_without_rotations_decodes_as_before() -> None:
    # An older encoder never wrote the field: it decodes with rotations = [].
    class Old(msgspec.Struct):
        server_key: bytes
        seq: int
        endpoints: list[Endpoint]
        tls_ca: bytes
        tls_pin: bytes
        issued_at: int
        expires_at: int

    body = msgspec.msgpack.encode(
        Old(OLD.public_bytes, 1, [Endpoint(url="wss://127.0.0.1:1/v1/ws")], b"", b"p" * 32, 1, 2)
    )
    signed = SignedDescriptor(body=body, signature=OLD.sign(b"samizdat/descriptor/v1", body))
    assert open_descriptor(signed, 1, expected_key=OLD.public_bytes).rotations == []


def test_unrelated_key_without_rotation_is_rejected() -> None:
    assert _rejected(_signed(STRANGER, []), OLD.public_bytes) is ErrorCode.BAD_SIGNATURE


def test_rotation_not_signed_by_the_old_key_is_rejected() -> None:
    # The stranger claims OLD handed over to it, signing the "old" half itself.
    body = msgspec.msgpack.encode(
        KeyRotation(old_key=OLD.public_bytes, new_key=STRANGER.public_bytes, issued_at=1)
    )
    forged = SignedRotation(
        body=body,
        old_signature=STRANGER.sign(ROTATION_CONTEXT, body),
        new_signature=STRANGER.sign(ROTATION_CONTEXT, body),
    )
    assert _rejected(_signed(STRANGER, [forged]), OLD.public_bytes) is ErrorCode.BAD_SIGNATURE


def test_rotation_without_the_new_keys_cross_signature_is_rejected() -> None:
    # OLD's genuine handover to NEW, but the cross-signature is not NEW's: whoever
    # presents it cannot prove it holds NEW (or NEW never agreed).
    genuine = sign_rotation(OLD, NEW, 1)
    missing = msgspec.structs.replace(genuine, new_signature=bytes(64))
    wrong = msgspec.structs.replace(
        genuine, new_signature=STRANGER.sign(ROTATION_CONTEXT, genuine.body)
    )
    for rotation in (missing, wrong):
        assert _rejected(_signed(NEW, [rotation]), OLD.public_bytes) is ErrorCode.BAD_SIGNATURE


def test_rotation_to_another_key_does_not_vouch_for_the_signer() -> None:
    # A genuine OLD -> NEW rotation pasted into a stranger's descriptor proves nothing.
    signed = _signed(STRANGER, [sign_rotation(OLD, NEW, 1)])
    assert _rejected(signed, OLD.public_bytes) is ErrorCode.BAD_SIGNATURE


def test_rotation_from_another_key_does_not_help() -> None:
    signed = _signed(NEW, [sign_rotation(STRANGER, NEW, 1)])
    assert _rejected(signed, OLD.public_bytes) is ErrorCode.BAD_SIGNATURE


def test_chain_of_rotations_is_followed_from_any_link() -> None:
    chain = [sign_rotation(OLD, NEW, 1), sign_rotation(NEW, THIRD, 2)]
    signed = _signed(THIRD, chain)
    for trusted in (OLD, NEW, THIRD):
        assert open_descriptor(signed, NOW, trusted.public_bytes).server_key == THIRD.public_bytes


def test_broken_chain_is_rejected() -> None:
    # OLD -> NEW, then STRANGER -> THIRD: the second hop does not start where the first ends.
    chain = [sign_rotation(OLD, NEW, 1), sign_rotation(STRANGER, THIRD, 2)]
    assert _rejected(_signed(THIRD, chain), OLD.public_bytes) is ErrorCode.BAD_SIGNATURE


def test_too_many_rotations_do_not_decode() -> None:
    keys = [OLD, NEW] * MAX_ROTATIONS
    chain = [sign_rotation(a, b, 1) for a, b in zip(keys, keys[1:], strict=False)]
    assert len(chain) > MAX_ROTATIONS
    assert _rejected(_signed(NEW, chain), OLD.public_bytes) is ErrorCode.BAD_FRAME


@given(st.data())
def test_tampered_rotation_is_rejected(data: st.DataObject) -> None:
    rotation = sign_rotation(OLD, NEW, 1_000)
    field = data.draw(st.sampled_from(["body", "old_signature", "new_signature"]))
    raw = bytearray(getattr(rotation, field))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= data.draw(st.integers(1, 255))
    tampered = msgspec.structs.replace(rotation, **{field: bytes(raw)})
    with pytest.raises(ProtocolError):
        open_rotation(tampered)
    code = _rejected(_signed(NEW, [tampered]), OLD.public_bytes)
    assert code in {ErrorCode.BAD_FRAME, ErrorCode.BAD_SIGNATURE}
