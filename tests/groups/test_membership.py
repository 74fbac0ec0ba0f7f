"""Promote, rename by the new admin, leave: state changes in Megolm reach every member."""

from __future__ import annotations

from pathlib import Path

from samizdat.client import groups
from samizdat.protocol.control import decode_group_box
from tests.e2e.harness import ServerProcess
from tests.groups.helpers import befriend, drain, new_user


async def test_promote_rename_leave(tmp_path: Path, server: ServerProcess) -> None:
    ann, bea, cid = [await new_user(tmp_path, n, server.link) for n in ("ann", "bea", "cid")]
    everyone = (ann, bea, cid)
    try:
        await befriend(ann, bea)
        await befriend(ann, cid)
        await groups.create(ann, "club", ["bea", "cid"])
        first = await groups.send(ann, "club", "hello")
        for member in (bea, cid):
            assert [m.text for m in await drain(member)] == ["hello"]
            # bea and cid learnt each other's cards from ann's state, not from ann's contacts.
            assert {m.name for m in groups.members(member, "club")} == {"ann", "bea", "cid"}

        await groups.promote(ann, "club", ["bea"])
        await drain(bea)
        # bea, now an admin, renames the group: her own Megolm session carries the state.
        assert await groups.rename(bea, "club", "society") == "society"
        for member in (ann, cid):
            await drain(member)
            assert [g.name for g in groups.list_groups(member)] == ["society"]
            assert [(m.name, m.admin) for m in groups.members(member, "society")] == [
                ("ann", True),
                ("bea", True),
                ("cid", False),
            ]

        await groups.leave(cid, "society")
        for member in (ann, bea):
            await drain(member)
            assert {m.name for m in groups.members(member, "society")} == {"ann", "bea"}
        assert not [g for g in groups.list_groups(cid) if g.active]
        after = await groups.send(ann, "society", "without cid")
        # cid's device held ann's session: ann starts a new one it never gets.
        before_box, after_box = decode_group_box(first.body), decode_group_box(after.body)
        assert before_box is not None and after_box is not None
        assert after.rotated and after_box.session_id != before_box.session_id
        assert [m.text for m in await drain(bea)] == ["without cid"]
        assert await drain(cid) == []
    finally:
        for client in everyone:
            await client.close()
