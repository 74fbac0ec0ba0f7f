"""The vodozemac wrapper: raw keys and signatures, sessions, pickles, errors."""

from __future__ import annotations

import pytest

from samizdat.client.messaging import sign_one_time_key
from samizdat.crypto.olm import OLM_NORMAL, OLM_PRE_KEY, OlmAccount, OlmSession
from samizdat.crypto.signing import verify
from samizdat.errors import DecryptionError, LocalError, ProtocolError, SignatureError
from samizdat.protocol.keys import SignedKey, verify_signed_key

PICKLE_KEY = bytes(range(32))


def _pair() -> tuple[OlmAccount, OlmAccount, OlmSession]:
    alice, bob = OlmAccount.create(), OlmAccount.create()
    otk = bob.generate_one_time_keys(1)[0]
    return alice, bob, alice.create_outbound_session(bob.identity_key, otk.key)


def test_raw_keys_and_signatures_verify_with_crypto_signing() -> None:
    account = OlmAccount.create()
    assert len(account.identity_key) == 32
    assert len(account.signing_key) == 32
    signature = account.sign(b"ctx", b"message")
    assert len(signature) == 64
    verify(account.signing_key, b"ctx", b"message", signature)
    with pytest.raises(SignatureError):
        verify(account.signing_key, b"other", b"message", signature)


def test_one_time_and_fallback_keys_are_accepted_by_protocol_keys() -> None:
    account = OlmAccount.create()
    keys = account.generate_one_time_keys(5)
    assert len(keys) == 5 and len({k.key_id for k in keys}) == 5
    fallback = account.generate_fallback_key()
    assert fallback.fallback
    for key in [*keys, fallback]:
        signed = sign_one_time_key(account, key)
        verify_signed_key(account.signing_key, signed)
        forged = SignedKey(signed.key_id, bytes(32), signed.signature, signed.fallback)
        with pytest.raises(ProtocolError):
            verify_signed_key(account.signing_key, forged)
    account.mark_keys_as_published()
    assert account.generate_one_time_keys(0) == []
    assert account.unpublished_fallback_key() is None


def test_session_round_trip_both_ways() -> None:
    alice, bob, outbound = _pair()
    olm_type, ciphertext = outbound.encrypt(b"hello")
    assert olm_type == OLM_PRE_KEY
    inbound, plaintext = bob.create_inbound_session(alice.identity_key, olm_type, ciphertext)
    assert plaintext == b"hello"
    assert inbound.session_id == outbound.session_id
    assert outbound.matches(olm_type, ciphertext)
    reply_type, reply = inbound.encrypt(b"back")
    assert reply_type == OLM_NORMAL
    assert outbound.decrypt(reply_type, reply) == b"back"
    # Once answered, Alice sends normal messages.
    assert outbound.encrypt(b"again")[0] == OLM_NORMAL


def test_replay_tamper_and_wrong_type_raise_decryption_error() -> None:
    alice, bob, outbound = _pair()
    olm_type, ciphertext = outbound.encrypt(b"hello")
    inbound, _ = bob.create_inbound_session(alice.identity_key, olm_type, ciphertext)
    reply_type, reply = inbound.encrypt(b"once")
    assert outbound.decrypt(reply_type, reply) == b"once"
    with pytest.raises(DecryptionError):
        outbound.decrypt(reply_type, reply)  # replay
    reply_type, reply = inbound.encrypt(b"twice")
    tampered = reply[:-1] + bytes([reply[-1] ^ 1])
    with pytest.raises(DecryptionError):
        outbound.decrypt(reply_type, tampered)
    with pytest.raises(DecryptionError):
        bob.create_inbound_session(alice.identity_key, OLM_NORMAL, reply)
    with pytest.raises(DecryptionError):
        bob.create_inbound_session(alice.identity_key, OLM_PRE_KEY, b"garbage")
    with pytest.raises(DecryptionError):
        alice.create_outbound_session(b"short", bob.identity_key)
    assert not outbound.matches(OLM_PRE_KEY, b"garbage")
    assert not outbound.matches(OLM_NORMAL, reply)


def test_one_time_key_is_consumed() -> None:
    alice, bob, outbound = _pair()
    carol = OlmAccount.create()
    olm_type, ciphertext = outbound.encrypt(b"hello")
    bob.create_inbound_session(alice.identity_key, olm_type, ciphertext)
    with pytest.raises(DecryptionError):
        bob.create_inbound_session(alice.identity_key, olm_type, ciphertext)
    # A pre-key message claiming another sender identity does not open either.
    with pytest.raises(DecryptionError):
        bob.create_inbound_session(carol.identity_key, olm_type, ciphertext)


def test_pickles_round_trip_and_need_the_key() -> None:
    alice, bob, outbound = _pair()
    restored = OlmAccount.from_pickle(alice.pickle(PICKLE_KEY), PICKLE_KEY)
    assert restored.identity_key == alice.identity_key
    assert restored.signing_key == alice.signing_key
    session = OlmSession.from_pickle(outbound.pickle(PICKLE_KEY), PICKLE_KEY)
    olm_type, ciphertext = session.encrypt(b"after restore")
    _, plaintext = bob.create_inbound_session(alice.identity_key, olm_type, ciphertext)
    assert plaintext == b"after restore"
    with pytest.raises(DecryptionError):
        OlmAccount.from_pickle(alice.pickle(PICKLE_KEY), bytes(32))
    with pytest.raises(DecryptionError):
        OlmSession.from_pickle(outbound.pickle(PICKLE_KEY), bytes(32))
    with pytest.raises(LocalError):
        alice.pickle(b"short")


def test_repr_shows_no_secret() -> None:
    alice, _, outbound = _pair()
    for obj in (alice, outbound):
        text = repr(obj) + str(obj)
        assert "<secret>" in text
        assert alice.identity_key.hex() not in text
