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
