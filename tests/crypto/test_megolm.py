"""What vodozemac's Megolm authenticates, as the group inbox relies on it."""

from __future__ import annotations

import pytest

from samizdat.crypto.megolm import MegolmInbound, MegolmOutbound
from samizdat.errors import DecryptionError

_INDEX_TAG = 1  # after the version byte: protobuf field 1, a varint (0x08)


def test_a_flip_that_changes_only_the_encoding_opens_to_the_same_message() -> None:
    """vodozemac checks the MAC and signature of the message it re-encodes after parsing,
    not of the bytes received: tag 0x08 -> 0x18 turns an index of 0 into an unknown field,
    skipped, and the index defaults to the same 0. So two byte strings open to one message,
    and a receiver must recognise a message it has shown by its msg_id inside the
    plaintext, never by a hash of the ciphertext (what client/group_inbox.py does)."""
    outbound = MegolmOutbound.create()
    inbound = MegolmInbound.from_session_key(outbound.session_key())
    sent = outbound.encrypt(b"first words")
    assert sent[_INDEX_TAG] == 0x08 and sent[_INDEX_TAG + 1] == 0  # index 0

    flipped = bytearray(sent)
    flipped[_INDEX_TAG] ^= 0x10

    assert bytes(flipped) != sent
    assert inbound.decrypt(bytes(flipped)) == (b"first words", 0)


@pytest.mark.parametrize("where", ["version", "ciphertext", "mac", "signature"])
def test_a_flip_anywhere_that_is_authenticated_does_not_open(where: str) -> None:
    outbound = MegolmOutbound.create()
    inbound = MegolmInbound.from_session_key(outbound.session_key())
    outbound.encrypt(b"index 0")
    sent = outbound.encrypt(b"index 1: no default to fall back on")
    position = {"version": 0, "ciphertext": 6, "mac": len(sent) - 70, "signature": len(sent) - 1}
    flipped = bytearray(sent)
    flipped[position[where]] ^= 0x01

    with pytest.raises(DecryptionError):
        inbound.decrypt(bytes(flipped))
    assert inbound.decrypt(sent) == (b"index 1: no default to fall back on", 1)
