"""No delivery receipts in groups above ``actions.GROUP_RECEIPT_LIMIT`` members.

A real group of three on a real server; the limit is lowered to two for the test (a group
of 51 users would take minutes to build here), which is the same comparison the client
makes for a group of 51 against the default of 50.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from samizdat.client import actions, groups
from samizdat.client.app import Client
from tests.e2e.harness import ServerProcess
from tests.groups.helpers import befriend, drain, new_user


def _delivered(client: Client, msg_id: str) -> list[str]:
    views = actions.conversation(client, "trio", group=True)
    return next(v.delivered_to for v in views if v.id == msg_id)


async def test_group_delivery_receipts_stop_above_the_limit(
    tmp_path: Path, server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert actions.GROUP_RECEIPT_LIMIT == 50
    users = [await new_user(tmp_path, n, server.link) for n in ("ann", "bea", "cid")]
    ann, bea, cid = users
    try:
        await befriend(ann, bea)
        await befriend(ann, cid)
        await groups.create(ann, "trio", ["bea", "cid"])
        for client in users:
            await drain(client, idle=0.5)
        small = (await groups.send(ann, "trio", "three is not many")).msg_id
        for client in (bea, cid, ann):
            await drain(client, idle=0.5)
        assert _delivered(ann, small) == ["bea", "cid"]

        monkeypatch.setattr(actions, "GROUP_RECEIPT_LIMIT", 2)
        large = (await groups.send(ann, "trio", "three is too many now")).msg_id
        for client in (bea, cid, ann):
            await drain(client, idle=0.5)
        assert _delivered(ann, large) == []
        # Read receipts are not limited: reading still tells the author.
        await actions.mark_read(bea, "trio", group=True)
        await drain(ann, idle=0.5)
        views = {v.id: v for v in actions.conversation(ann, "trio", group=True)}
        assert views[large].read_by == ["bea"]
    finally:
        for client in users:
            await client.close()
