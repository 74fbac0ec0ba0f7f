"""client.messaging.decrypt_olm: the client's Olm receive path (found by fuzz/sessions.py)."""

from __future__ import annotations

import pytest

from samizdat.client.messaging import decrypt_olm
from samizdat.crypto.olm import OLM_PRE_KEY, OlmAccount, OlmSession
from samizdat.errors import DecryptionError
from samizdat.protocol.envelope import Sealed


def _receive(account: OlmAccount, sessions: list[OlmSession], sealed: Sealed) -> bytes:
    return decrypt_olm(sessions, sealed, lambda: account, lambda _: None)


def test_a_replayed_fallback_pre_key_message_is_refused_and_the_session_goes_on() -> None:
    alice, bob = OlmAccount.create(), OlmAccount.create()
    fallback = bob.generate_fallback_key()  # not consumed by a claim: replays could reuse it
    bob.mark_keys_as_published()
    outbound = alice.create_outbound_session(bob.identity_key, fallback.key)
    olm_type, olm = outbound.encrypt(b"hello")
    assert olm_type == OLM_PRE_KEY
    first = Sealed(sender_identity_key=alice.identity_key, olm_type=olm_type, olm=olm)
    bob_sessions: list[OlmSession] = []
    assert _receive(bob, bob_sessions, first) == b"hello"
    reply_type, reply = bob_sessions[0].encrypt(b"hi alice")
    assert outbound.decrypt(reply_type, reply) == b"hi alice"

    with pytest.raises(DecryptionError, match="replayed"):
        _receive(bob, bob_sessions, first)
    assert len(bob_sessions) == 1  # no copy of the session was made from the replay

    # Both directions still work; a copy at the front would have answered undecryptably.
    again_type, again = bob_sessions[0].encrypt(b"still here")
    assert outbound.decrypt(again_type, again) == b"still here"
    next_type, nxt = outbound.encrypt(b"good")
    assert _receive(bob, bob_sessions, Sealed(alice.identity_key, next_type, nxt)) == b"good"


def test_a_second_pre_key_message_of_the_same_session_still_opens() -> None:
    alice, bob = OlmAccount.create(), OlmAccount.create()
    key = bob.generate_one_time_keys(1)[0]
    bob.mark_keys_as_published()
    outbound = alice.create_outbound_session(bob.identity_key, key.key)
    one = Sealed(alice.identity_key, *outbound.encrypt(b"one"))
    two = Sealed(alice.identity_key, *outbound.encrypt(b"two"))
    sessions: list[OlmSession] = []
    # Out of order: the second creates the session, the first matches it and opens.
    assert _receive(bob, sessions, two) == b"two"
    assert _receive(bob, sessions, one) == b"one"
    assert len(sessions) == 1
