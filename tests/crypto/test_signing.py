"""Ed25519 signatures with domain separation (docs/protocol.md §3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from samizdat.crypto.signing import SigningKey, signed_message, verify
from samizdat.errors import SignatureError

KEY = SigningKey.generate()
OTHER = SigningKey.generate()
contexts = st.binary(min_size=1, max_size=40).filter(lambda c: b"\x00" not in c)


@given(contexts, st.binary(max_size=200))
def test_sign_verify_round_trip(context: bytes, message: bytes) -> None:
    verify(KEY.public_bytes, context, message, KEY.sign(context, message))


@given(contexts, contexts, st.binary(max_size=100))
def test_signature_is_bound_to_context(a: bytes, b: bytes, message: bytes) -> None:
    signature = KEY.sign(a, message)
    if a != b:
        with pytest.raises(SignatureError):
            verify(KEY.public_bytes, b, message, signature)


@given(st.binary(max_size=100), st.binary(min_size=1, max_size=100))
def test_signature_is_bound_to_message(message: bytes, suffix: bytes) -> None:
    signature = KEY.sign(b"ctx", message)
    with pytest.raises(SignatureError):
        verify(KEY.public_bytes, b"ctx", message + suffix, signature)


def test_other_key_does_not_verify() -> None:
    with pytest.raises(SignatureError):
        verify(OTHER.public_bytes, b"ctx", b"m", KEY.sign(b"ctx", b"m"))


@given(st.binary(max_size=40), st.binary(max_size=80))
def test_malformed_keys_and_signatures_raise_signature_error(key: bytes, signature: bytes) -> None:
    with pytest.raises(SignatureError):
        verify(key, b"ctx", b"m", signature)


def test_signed_message_is_context_nul_message() -> None:
    assert signed_message(b"samizdat/descriptor/v1", b"body") == b"samizdat/descriptor/v1\x00body"


def test_secret_round_trip() -> None:
    restored = SigningKey.from_secret_bytes(KEY.secret_bytes())
    assert restored.public_bytes == KEY.public_bytes
    assert len(KEY.secret_bytes()) == 32
    assert len(KEY.public_bytes) == 32
    assert len(KEY.sign(b"c", b"m")) == 64


def test_repr_and_str_show_no_secret() -> None:
    secret = KEY.secret_bytes()
    for text in (repr(KEY), str(KEY)):
        assert secret.hex() not in text
        assert secret.hex().upper() not in text
        assert KEY.public_bytes.hex() not in text
        assert "secret" in text.lower()


# -- strictness (verification through vodozemac, i.e. ed25519-dalek's strict mode) ---------

#: The group order ℓ: adding it to ``S`` gives another encoding of the same scalar.
_ORDER = 2**252 + 27742317777372353535851937790883648493
#: The identity point, and another (non-canonical: y = 1 + p) encoding of it.
_IDENTITY = bytes([1]) + bytes(31)
_IDENTITY_NON_CANONICAL = bytes([0xEE]) + b"\xff" * 30 + bytes([0x7F])


def _openssl_accepts(key: bytes, data: bytes, signature: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


@pytest.mark.parametrize("key", [_IDENTITY, _IDENTITY_NON_CANONICAL])
@given(st.binary(max_size=64))
def test_small_order_key_forgery_is_refused(key: bytes, message: bytes) -> None:
    # R = identity, S = 0 satisfies the cofactorless equation for every message under this
    # key: a signature anyone can make. OpenSSL accepts it; we must not.
    forged = _IDENTITY + bytes(32)
    assert _openssl_accepts(key, signed_message(b"ctx", message), forged)
    with pytest.raises(SignatureError):
        verify(key, b"ctx", message, forged)


def test_small_order_key_vector_is_refused() -> None:
    # Case 0 of "Taming the many EdDSAs" (Chalkias, Garillot, Nikolaenko, 2020): S = 0,
    # A and R of small order. The message's byte 13 is NUL, which splits it into our
    # context and message.
    key = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa")
    signature = bytes.fromhex(
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"
    ) + bytes(32)
    data = bytes.fromhex("8c93255d71dcab10e8f379c26200f3c7bd5f09d9bc3068d3ef4edeb4853022b6")
    context, message = data[:13], data[14:]
    assert signed_message(context, message) == data
    assert _openssl_accepts(key, data, signature)
    with pytest.raises(SignatureError):
        verify(key, context, message, signature)


@given(st.binary(max_size=100))
def test_non_canonical_s_is_refused(message: bytes) -> None:
    signature = KEY.sign(b"ctx", message)
    s = int.from_bytes(signature[32:], "little") + _ORDER
    malleated = signature[:32] + s.to_bytes(32, "little")
    with pytest.raises(SignatureError):
        verify(KEY.public_bytes, b"ctx", message, malleated)


@given(st.binary(max_size=100), st.integers(min_value=0, max_value=(32 + 64) * 8 - 1))
def test_any_flipped_bit_of_key_or_signature_is_refused(message: bytes, bit: int) -> None:
    signed = bytearray(KEY.public_bytes + KEY.sign(b"ctx", message))
    signed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(SignatureError):
        verify(bytes(signed[:32]), b"ctx", message, bytes(signed[32:]))


@given(st.binary(min_size=1, max_size=100), st.data())
def test_any_flipped_bit_of_message_is_refused(message: bytes, data: st.DataObject) -> None:
    signature = KEY.sign(b"ctx", message)
    bit = data.draw(st.integers(min_value=0, max_value=len(message) * 8 - 1))
    flipped = bytearray(message)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(SignatureError):
        verify(KEY.public_bytes, b"ctx", bytes(flipped), signature)


@given(
    st.binary(min_size=32, max_size=32),
    st.binary(max_size=100),
    st.binary(min_size=64, max_size=64),
)
def test_never_accepts_what_openssl_refuses(key: bytes, message: bytes, signature: bytes) -> None:
    # Hypothesis finds OpenSSL accepting e.g. the all-zero key and signature (a point of
    # order 4, S = 0): the one direction in which the two may differ.
    try:
        verify(key, b"ctx", message, signature)
    except SignatureError:
        return
    assert _openssl_accepts(key, signed_message(b"ctx", message), signature)


@given(st.binary(max_size=100))
def test_honest_signatures_of_fresh_keys_verify_in_both(message: bytes) -> None:
    key = SigningKey.generate()
    signature = key.sign(b"ctx", message)
    assert _openssl_accepts(key.public_bytes, signed_message(b"ctx", message), signature)
    verify(key.public_bytes, b"ctx", message, signature)
