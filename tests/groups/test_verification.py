"""Safety numbers, SAS verification and key changes, against a real server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from samizdat.client import actions, verification
from samizdat.client.app import Client
from samizdat.errors import KeyChanged, LocalError
from tests.e2e.harness import PASSPHRASE, ServerProcess
from tests.groups.helpers import Codes, befriend, drain, new_user, users


async def test_sas_verification_over_the_encrypted_channel(
    tmp_path: Path, server: ServerProcess
) -> None:
    async with users(tmp_path, server.link, "alice", "bob") as (alice, bob):
        await befriend(alice, bob)
        a_codes, b_codes = Codes(), Codes()
        await asyncio.gather(
            verification.verify(alice, "bob", a_codes, 30.0),
            verification.verify(bob, "alice", b_codes, 30.0),
        )
        assert a_codes.seen == b_codes.seen and len(a_codes.seen) == 1
        assert len(a_codes.seen[0].emoji) == 7
        assert alice._contact_by_name("bob").verified
        assert bob._contact_by_name("alice").verified


async def test_sas_refused_by_one_user_verifies_nobody(
    tmp_path: Path, server: ServerProcess
) -> None:
    async with users(tmp_path, server.link, "alice", "bob") as (alice, bob):
        await befriend(alice, bob)
        results = await asyncio.gather(
            verification.verify(alice, "bob", Codes(answer=False), 10.0),
            verification.verify(bob, "alice", Codes(), 5.0),
            return_exceptions=True,
        )
        assert all(isinstance(r, LocalError) for r in results)
        assert not alice._contact_by_name("bob").verified
        assert not bob._contact_by_name("alice").verified


async def test_key_change_changes_safety_number_and_blocks_until_trust(
    tmp_path: Path, server: ServerProcess
) -> None:
    alice = await new_user(tmp_path, "alice", server.link)
    bob = await new_user(tmp_path, "bob", server.link)
    try:
        await befriend(alice, bob)
        before = alice.safety_number("bob")
        qr_before = verification.safety_qr_text(alice, "bob")
        assert qr_before.endswith(before) and bob.safety_number("alice") == before
        verification.mark_verified(alice, "bob")
        sent = await alice.send("bob", "while verified")
        # Bob re-creates his identity (a new user key) and sends alice a new invite.
        await bob.close()
        new_bob = await Client.create(tmp_path / "bob2", PASSPHRASE, server.link, "bob")
        bob = new_bob
        assert verification.replace_contact(alice, await new_bob.invite(), "bob")
        after = alice.safety_number("bob")
        assert after != before and verification.safety_qr_text(alice, "bob") != qr_before
        with pytest.raises(KeyChanged):
            await alice.send("bob", "must wait for consent")
        with pytest.raises(KeyChanged):  # message actions wait as well
            await actions.react(alice, "bob", sent, "+1")
        verification.trust(alice, "bob")
        await alice.send("bob", "after consent")
        got = await drain(new_bob)
        assert [m.text for m in got] == ["after consent"]
    finally:
        await alice.close()
        await bob.close()


async def test_unverified_key_change_does_not_block(tmp_path: Path, server: ServerProcess) -> None:
    alice = await new_user(tmp_path, "alice", server.link)
    bob = await new_user(tmp_path, "bob", server.link)
    try:
        await befriend(alice, bob)
        await bob.close()
        bob = await Client.create(tmp_path / "bob2", PASSPHRASE, server.link, "bob")
        assert not verification.replace_contact(alice, await bob.invite(), "bob")
        await alice.send("bob", "not verified, not blocked")
    finally:
        await alice.close()
        await bob.close()
