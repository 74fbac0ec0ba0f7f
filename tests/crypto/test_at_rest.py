"""At-rest encryption: records bound to kind and lookup id, lookup HMACs, verifier."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samizdat.crypto.at_rest import AtRestKey, KdfParams
from samizdat.errors import DecryptionError, LocalError, WrongPassphrase

FAST = KdfParams(memory_kib=1024, iterations=1, lanes=1)
SALT = bytes(range(16))
KEY = AtRestKey.derive("correct horse", SALT, FAST)
NONCE = b"\x01" * 12


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=20), st.binary(max_size=40), st.binary(max_size=2000))
def test_round_trip(kind: str, lookup: bytes, plaintext: bytes) -> None:
    blob = KEY.encrypt(kind, lookup, plaintext, NONCE)
    assert KEY.decrypt(kind, lookup, blob) == plaintext


def test_record_is_bound_to_kind_and_lookup() -> None:
    blob = KEY.encrypt("contact", b"id-1", b"secret", NONCE)
    with pytest.raises(DecryptionError):
        KEY.decrypt("history", b"id-1", blob)
    with pytest.raises(DecryptionError):
        KEY.decrypt("contact", b"id-2", blob)
    with pytest.raises(DecryptionError):
        KEY.decrypt("contact", b"id-1", blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(DecryptionError):
        KEY.decrypt("contact", b"id-1", b"short")
    with pytest.raises(LocalError):
        KEY.encrypt("contact", b"", b"x", b"short nonce")


def test_lookup_ids_are_stable_keyed_and_kind_separated() -> None:
    assert KEY.lookup_id("name", "alice") == KEY.lookup_id("name", b"alice")
    assert KEY.lookup_id("name", "alice") != KEY.lookup_id("name", "bob")
    assert KEY.lookup_id("name", "alice") != KEY.lookup_id("user", "alice")
    other = AtRestKey.derive("another passphrase", SALT, FAST)
    assert other.lookup_id("name", "alice") != KEY.lookup_id("name", "alice")
    assert len(KEY.lookup_id("name", "alice")) == 32


def test_verifier_detects_wrong_passphrase_and_salt() -> None:
    verifier = KEY.make_verifier(NONCE)
    AtRestKey.derive("correct horse", SALT, FAST).check_verifier(verifier)
    with pytest.raises(WrongPassphrase):
        AtRestKey.derive("wrong horse", SALT, FAST).check_verifier(verifier)
    with pytest.raises(WrongPassphrase):
        AtRestKey.derive("correct horse", bytes(16), FAST).check_verifier(verifier)


def test_bad_parameters_and_repr() -> None:
    with pytest.raises(LocalError):
        KdfParams(memory_kib=1, iterations=1, lanes=1)
    with pytest.raises(LocalError):
        AtRestKey.derive("x", b"short", FAST)
    assert "<secret>" in repr(KEY)
    assert KEY.pickle_key.hex() not in repr(KEY)
