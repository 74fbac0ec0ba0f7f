"""Linked devices against a real server: link, fan-out to every device, revoke."""

from __future__ import annotations

from pathlib import Path

from samizdat.client import devices
from samizdat.errors import ServerRefused
from tests.e2e.harness import ServerProcess
from tests.groups.helpers import befriend, drain, link, users


async def test_link_confirms_same_code_and_messages_reach_every_device(
    tmp_path: Path, server: ServerProcess
) -> None:
    async with users(tmp_path, server.link, "alice", "bob") as (alice, bob):
        await befriend(alice, bob)
        await alice.send("bob", "before linking")
        await drain(bob)
        laptop, code_old, code_new = await link(alice, tmp_path / "alice-laptop")
        try:
            assert code_old == code_new
            assert len(devices.list_devices(alice)) == 2
            assert [d.current for d in devices.list_devices(laptop)].count(True) == 1
            # Recent history came along, encrypted, from the phone.
            assert "before linking" in [h.text for h in laptop.history("bob")]
            # Bob picks up the new list from the update alice broadcast.
            await drain(bob)
            await bob.send("alice", "to both of you")
            assert [m.text for m in await drain(alice)] == ["to both of you"]
            assert [m.text for m in await drain(laptop)] == ["to both of you"]
            # Sent messages appear on the sender's other device.
            await alice.send("bob", "sent from the phone")
            await drain(laptop)
            assert "sent from the phone" in [
                h.text for h in laptop.history("bob") if h.direction == "out"
            ]
            # The laptop can write too, and bob knows it is alice.
            await laptop.send("bob", "sent from the laptop")
            got = await drain(bob)
            assert [(m.sender, m.text) for m in got][-1] == ("alice", "sent from the laptop")
        finally:
            await laptop.close()


async def test_revoked_device_gets_nothing_new_and_its_keys_are_rejected(
    tmp_path: Path, server: ServerProcess
) -> None:
    async with users(tmp_path, server.link, "alice", "bob") as (alice, bob):
        await befriend(alice, bob)
        laptop, _, _ = await link(alice, tmp_path / "alice-laptop")
        await drain(bob)
        laptop_id = laptop._identity.device_id.hex()
        await devices.revoke(alice, laptop_id[:10])
        assert [d.id for d in devices.list_devices(alice)] == [alice._identity.device_id.hex()]
        await drain(bob)
        await bob.send("alice", "after revocation")
        assert [m.text for m in await drain(alice)] == ["after revocation"]
        # The server no longer knows the laptop: it cannot log in or be written to.
        try:
            got = await drain(laptop)
        except ServerRefused as exc:
            assert exc.code == "unknown_device"
        else:
            assert got == []
        # Its Olm identity is no longer alice's for bob: what it sends is dropped.
        await laptop.send("bob", "from a revoked device")
        assert await drain(bob) == []
        await laptop.close()
