"""client.messaging.decrypt_olm: the client's Olm receive path (found by fuzz/sessions.py)."""

from __future__ import annotations

import pytest

from samizdat.client.messaging import decrypt_olm
from samizdat.crypto.olm import OLM_PRE_KEY, OlmAccount, OlmSession
from samizdat.errors import DecryptionError
from samizdat.protocol.envelope import Sealed


def _receive(account: OlmAccount, sessions: list[OlmSession], sealed: Sealed) -> bytes:
    return decrypt_olm(sessions, sealed, lambda: account, lambda _: None)


def _over_fallback() -> tuple[OlmAccount, OlmAccount, OlmSession]:
    """alice, bob, and alice's session to bob on his fallback key, which a session does
    not consume: replays and late pre-key messages can reuse it."""
    alice, bob = OlmAccount.create(), OlmAccount.create()
    fallback = bob.generate_fallback_key()
    bob.mark_keys_as_published()
    return alice, bob, alice.create_outbound_session(bob.identity_key, fallback.key)


def test_a_replayed_fallback_pre_key_message_is_refused_and_the_session_goes_on() -> None:
    alice, bob, outbound = _over_fallback()
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


def test_a_late_pre_key_message_of_a_retired_session_opens_without_a_copy_taking_over() -> None:
    """bob let session S with alice go (past KEEP_OLM_SESSIONS; T is first now). A pre-key
    message of S that comes late is read with a copy of S that is not kept: kept first, the
    copy would carry bob's next message, which alice's S (its ratchet moved on) cannot read.
    Found by fuzz/sessions.py (seed 20261204, 3 devices)."""
    alice, bob, s_alice = _over_fallback()
    one_time = bob.generate_one_time_keys(1)[0]
    bob.mark_keys_as_published()
    late = Sealed(alice.identity_key, *s_alice.encrypt(b"sent long ago"))
    first = Sealed(alice.identity_key, *s_alice.encrypt(b"first"))
    bob_sessions: list[OlmSession] = []
    assert _receive(bob, bob_sessions, first) == b"first"
    s_id = bob_sessions[0].session_id
    assert s_alice.decrypt(*bob_sessions[0].encrypt(b"ratchet turns")) == b"ratchet turns"
    t_alice = alice.create_outbound_session(bob.identity_key, one_time.key)
    assert _receive(bob, bob_sessions, Sealed(alice.identity_key, *t_alice.encrypt(b"t"))) == b"t"
    del bob_sessions[1:]  # S let go, as Client._save_sessions does past KEEP_OLM_SESSIONS

    plaintext = decrypt_olm(bob_sessions, late, lambda: bob, lambda _: None, lambda: [s_id])

    assert plaintext == b"sent long ago"
    assert [s.session_id for s in bob_sessions] == [t_alice.session_id]
    assert t_alice.decrypt(*bob_sessions[0].encrypt(b"still readable")) == b"still readable"


def test_without_the_retired_ids_the_copy_takes_over_and_alice_cannot_read_bob() -> None:
    """The failure the retired ids prevent, shown on the same path without them."""
    alice, bob, s_alice = _over_fallback()
    late = Sealed(alice.identity_key, *s_alice.encrypt(b"sent long ago"))
    bob_sessions: list[OlmSession] = []
    assert _receive(bob, bob_sessions, Sealed(alice.identity_key, *s_alice.encrypt(b"1"))) == b"1"
    assert s_alice.decrypt(*bob_sessions[0].encrypt(b"ratchet turns")) == b"ratchet turns"
    bob_sessions.clear()

    assert _receive(bob, bob_sessions, late) == b"sent long ago"

    with pytest.raises(DecryptionError):
        s_alice.decrypt(*bob_sessions[0].encrypt(b"lost"))
