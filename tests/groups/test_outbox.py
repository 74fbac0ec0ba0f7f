"""Group sends survive an unreachable server: queued, then delivered once, in order."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from samizdat.client import group_outbox, groups, timers
from samizdat.errors import ConnectError
from tests.e2e.harness import ServerProcess
from tests.groups.helpers import befriend, drain, new_user


async def test_group_sends_while_the_server_is_down_arrive_once_after(
    tmp_path: Path, server: ServerProcess
) -> None:
    ann, bea, cid = [await new_user(tmp_path, n, server.link) for n in ("ann", "bea", "cid")]
    try:
        await befriend(ann, bea)
        await befriend(ann, cid)
        await groups.create(ann, "club", ["bea", "cid"])
        await groups.send(ann, "club", "before")
        for member in (bea, cid):
            assert [m.text for m in await drain(member)] == ["before"]

        server.stop()
        # A state change and a message while the server is down: both fail and stay queued,
        # in order. The first is sealed (its Megolm frames saved); the queue stopped there.
        with pytest.raises(ConnectError):
            await groups.rename(ann, "club", "society")
        with pytest.raises(ConnectError):
            await groups.send(ann, "society", "while down")
        queued = group_outbox.pending(ann)
        assert [bool(i.sealed) for i in queued] == [True, False]
        assert [h.text for h in groups.history(ann, "society")] == ["before"]

        server.start()
        assert await groups.flush(ann) == 2
        assert group_outbox.pending(ann) == []
        await groups.send(ann, "society", "after")
        for member in (bea, cid):
            got = await drain(member)
            assert [(m.group, m.text) for m in got] == [
                ("society", "while down"),
                ("society", "after"),
            ]
            assert [h.text for h in groups.history(member, "society")] == [
                "before",
                "while down",
                "after",
            ]
        assert [h.text for h in groups.history(ann, "society")] == ["before", "while down", "after"]

        # Exactly once even if a stored send goes out again (an answer lost on the way back):
        # the sealed frames come back as server duplicates; the message, sealed anew, is
        # stored again but every device drops it by (sender, msg_id).
        for intent in queued:
            group_outbox.enqueue(ann, msgspec.structs.replace(intent))
        assert await groups.flush(ann) == 2
        for member in (bea, cid):
            assert await drain(member) == []
            assert [h.text for h in groups.history(member, "society")] == [
                "before",
                "while down",
                "after",
            ]
    finally:
        for client in (ann, bea, cid):
            await client.close()


async def test_room_key_sharing_is_retried_after_a_failure(
    tmp_path: Path, server: ServerProcess
) -> None:
    """The first message of a group needs key sharing; it is queued unsealed and retried."""
    ann, bea = [await new_user(tmp_path, n, server.link) for n in ("ann", "bea")]
    try:
        await befriend(ann, bea)
        await groups.create(ann, "pair", ["bea"])
        assert [m.text for m in await drain(bea)] == []
        # A new Megolm session (as after a removal): its key must reach bea first.
        with ann._store.locked():
            ann._store.delete("gout", ann._store.get("gname", "pair") or b"")
        server.stop()
        with pytest.raises(ConnectError):
            await groups.send(ann, "pair", "needs a new key")
        assert [i.sealed for i in group_outbox.pending(ann)] == [None]
        server.start()
        stats = await groups.send(ann, "pair", "and one more")
        assert stats.room_keys_sent == 0  # shared by the retry of the first message
        assert [m.text for m in await drain(bea)] == ["needs a new key", "and one more"]
    finally:
        await ann.close()
        await bea.close()


async def test_a_group_on_an_unreachable_server_does_not_hold_up_the_others(
    tmp_path: Path, server: ServerProcess
) -> None:
    """Order is kept per group: another group's stuck send does not block this one."""
    other = ServerProcess(tmp_path / "other-server")
    other.start()
    try:
        ann, bea = [await new_user(tmp_path, n, server.link) for n in ("ann", "bea")]
        zed = await new_user(tmp_path, "zed", other.link)
        try:
            await befriend(ann, bea)
            await befriend(ann, zed)
            await groups.create(ann, "near", ["bea"])
            await groups.create(ann, "far", ["zed"])
            other.stop()
            with pytest.raises(ConnectError):
                await groups.send(ann, "far", "to zed")
            await groups.send(ann, "near", "to bea")  # not held up by "far"
            assert [m.text for m in await drain(bea)] == ["to bea"]
            assert [i.group_id for i in group_outbox.pending(ann)] == [
                ann._store.get("gname", "far")
            ]
            other.start()
            assert await groups.flush(ann) == 1
            assert [m.text for m in await drain(zed)] == ["to zed"]
        finally:
            for client in (ann, bea, zed):
                await client.close()
    finally:
        other.stop()


async def test_a_queued_disappearing_send_is_dropped_when_its_time_is_up(
    tmp_path: Path, server: ServerProcess
) -> None:
    """A timed message that never left must not outlive its timer in the sender's queue."""
    ann, bea = [await new_user(tmp_path, n, server.link) for n in ("ann", "bea")]
    try:
        await befriend(ann, bea)
        await groups.create(ann, "club", ["bea"])
        await timers.set_timer(ann, "club", 1, group=True)
        await groups.send(ann, "club", "before")
        assert [m.text for m in await drain(bea)] == ["before"]

        server.stop()
        with pytest.raises(ConnectError):
            await groups.send(ann, "club", "never sent")
        assert len(group_outbox.pending(ann)) == 1
        await asyncio.sleep(1.5)
        assert timers.sweep(ann) >= 1
        assert group_outbox.pending(ann) == []
        server.start()
        assert await groups.flush(ann) == 0
        assert await drain(bea) == []
    finally:
        for client in (ann, bea):
            await client.close()


async def test_listening_again_sends_what_was_queued(tmp_path: Path, server: ServerProcess) -> None:
    """No later send needed: once ``listen`` connects again, queued 1:1 and group sends go."""
    ann, bea = [await new_user(tmp_path, n, server.link) for n in ("ann", "bea")]
    try:
        await befriend(ann, bea)
        await groups.create(ann, "club", ["bea"])
        await groups.send(ann, "club", "before")
        assert [m.text for m in await drain(bea)] == ["before"]

        server.stop()
        with pytest.raises(ConnectError):
            await ann.send("bea", "queued 1:1")
        with pytest.raises(ConnectError):
            await groups.send(ann, "club", "queued to the group")
        server.start()
        await drain(ann)  # ann only listens
        got = await drain(bea)
        assert sorted(m.text for m in got) == ["queued 1:1", "queued to the group"]
        assert group_outbox.pending(ann) == []
    finally:
        for client in (ann, bea):
            await client.close()
