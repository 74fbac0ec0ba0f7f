"""A group message that reaches a device before its room key waits for the key.

The sender's outbox shares a Megolm room key before it fans out the messages that need it,
so on an honest path the key is first in every mailbox. Here the entries are taken out of
the receiver's mailbox unread and put back with the fan-outs first (as a network, a relay or
a server could reorder them): the messages must be held, then shown once the key comes.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import msgspec

from samizdat.client import group_inbox, groups, msgstate
from samizdat.client.app import Client
from samizdat.client.groups import _own_card
from samizdat.client.receiving import Received, subscribe
from samizdat.protocol import frames
from samizdat.protocol.control import (
    GROUP_BOX_VERSION,
    GroupBox,
    decode_group_box,
    encode_group_box,
)
from tests.e2e.harness import PASSPHRASE, ServerProcess
from tests.groups.helpers import befriend, drain, users


async def _take_unread(client: Client) -> list[frames.Entry]:
    """Everything waiting in ``client``'s mailbox, acknowledged but not opened."""
    conn = await client._own()
    await subscribe(client, conn)
    entries: list[frames.Entry] = []
    while (deliver := await conn.next_delivery(1.0)) is not None:
        entries += deliver.entries
    await conn.call(frames.Ack(rid=0, up_to=entries[-1].seq), frames.Ok)
    return entries


async def _put_back(client: Client, bodies: list[bytes]) -> None:
    """Deposit ``bodies`` into ``client``'s own mailbox again, in this order."""
    card = await _own_card(client)
    conn = await client._own()
    for body in bodies:
        envelope = frames.Envelope(
            device_id=client._identity.device_id, msg_id=secrets.token_bytes(16), body=body
        )
        await conn.call(
            frames.Deposit(rid=0, token=card.token, envelopes=[envelope]), frames.DepositOk
        )


async def _two_messages_before_their_key(ann: Client, bea: Client) -> list[bytes]:
    """ann writes bea twice in a new group; bea's mailbox gets it back fan-outs first.

    Returns the fanned-out bodies (the group's state and both messages, in ann's Megolm
    session; the key and the invitation travel sealed, over Olm)."""
    name = await groups.create(ann, "pair", ["bea"])
    await groups.send(ann, name, "first words")
    await groups.send(ann, name, "second words")
    entries = await _take_unread(bea)
    fanned = [e.body for e in entries if decode_group_box(e.body) is not None]
    sealed = [e.body for e in entries if decode_group_box(e.body) is None]
    assert len(fanned) >= 2 and sealed
    await _put_back(bea, fanned + sealed)
    return fanned


async def test_group_messages_before_their_room_key_are_shown_when_it_comes(
    tmp_path: Path, server: ServerProcess
) -> None:
    async with users(tmp_path, server.link, "ann", "bea") as (ann, bea):
        await befriend(ann, bea)
        fanned = await _two_messages_before_their_key(ann, bea)
        shown = await drain(bea)

        assert [(m.group, m.sender, m.text) for m in shown] == [
            ("pair", "ann", "first words"),
            ("pair", "ann", "second words"),
        ]
        assert [m.name for m in groups.list_groups(bea)] == ["pair"]
        # Held no longer: the same entries again are duplicates, shown nowhere.
        await _put_back(bea, fanned)
        assert await drain(bea) == []


async def test_what_is_held_for_keys_that_never_come_is_bounded(
    tmp_path: Path, server: ServerProcess
) -> None:
    """Anyone who can deposit can make up session ids: the oldest sessions' messages go."""
    async with users(tmp_path, server.link, "bea") as (bea,):
        made_up = [
            encode_group_box(
                GroupBox(v=GROUP_BOX_VERSION, session_id=f"s{i:03}", megolm=b"\0" * 64)
            )
            for i in range(group_inbox.MAX_HELD_SESSIONS + 6)
        ]
        many = [made_up[-1]] * (group_inbox.MAX_HELD_PER_SESSION + 5)
        await _put_back(bea, made_up + many)
        assert await drain(bea) == []
        assert len(bea._store.values("gheld")) == group_inbox.MAX_HELD_SESSIONS
        assert bea._store.get("gheld", "s000") is None  # the oldest went first
        last = bea._store.get("gheld", f"s{len(made_up) - 1:03}")
        assert last is not None
        assert len(msgspec.msgpack.decode(last)) == group_inbox.MAX_HELD_PER_SESSION


async def test_a_new_members_message_before_the_state_that_adds_them_is_shown_after_it(
    tmp_path: Path, server: ServerProcess
) -> None:
    """cid's first message can reach bea before ann's state change that makes cid a member
    (ann's deposit to bea's server delayed or retried, cid quick to write): held, shown
    once the state comes."""
    async with users(tmp_path, server.link, "ann", "bea", "cid") as (ann, bea, cid):
        await befriend(ann, bea)
        await befriend(ann, cid)
        name = await groups.create(ann, "trio", ["bea"])
        await drain(bea)
        await groups.add(ann, name, ["cid"])
        await drain(cid)
        await groups.send(cid, "trio", "hello from cid")
        entries = await _take_unread(bea)
        anns = {
            box.session_id
            for e in entries
            if (box := decode_group_box(e.body)) is not None
            and bea._store.get("gin", box.session_id) is not None
        }
        first = [e.body for e in entries if _session(e.body) not in anns]  # cid's, Olm
        later = [e.body for e in entries if _session(e.body) in anns]  # ann's state change
        assert later and any(_session(b) for b in first)

        await _put_back(bea, first + later)

        shown = await drain(bea)
        assert [(m.group, m.sender, m.text) for m in shown] == [("trio", "cid", "hello from cid")]


def _session(body: bytes) -> str | None:
    box = decode_group_box(body)
    return None if box is None else box.session_id


async def test_listen_with_a_count_yields_no_more_than_it_and_keeps_the_rest(
    tmp_path: Path, server: ServerProcess
) -> None:
    """The room key's entry opens two held messages at once; ``count=1`` gets one of them,
    and the next call the other (here from the store reopened, as a new `samizdat listen
    --count 1` process would), though the server will not deliver that entry again."""
    async with users(tmp_path, server.link, "ann", "bea") as (ann, bea):
        await befriend(ann, bea)
        await _two_messages_before_their_key(ann, bea)
        first = [m.text async for m in bea.listen(count=1, timeout=2.0)]
        await bea.close()
        bea = await Client.open(tmp_path / "bea", PASSPHRASE)
        try:
            second = [m.text async for m in bea.listen(count=1, timeout=2.0)]
            rest = await drain(bea)
        finally:
            await bea.close()

        assert first == ["first words"]
        assert second == ["second words"]
        assert rest == []


async def test_a_message_deleted_before_listen_yields_it_is_not_yielded(
    tmp_path: Path, server: ServerProcess
) -> None:
    """What waits to be yielded goes with its history row (a timer ran out, a delete for
    everyone: ``msgstate.purge``), so no copy of a deleted message outlives it."""
    async with users(tmp_path, server.link, "ann", "bea") as (ann, bea):
        await befriend(ann, bea)
        await _two_messages_before_their_key(ann, bea)
        assert [m.text async for m in bea.listen(count=1, timeout=2.0)] == ["first words"]
        ((_, waiting),) = bea._store.read_log_rows("ready", "")
        second = msgspec.msgpack.decode(waiting, type=Received)
        assert second.text == "second words"

        with bea._store.locked():
            conv = msgstate.group_conv(groups._group_ids(bea)[0])
            msgstate.purge(bea, conv, {bytes.fromhex(second.id)}, tombstone=False)

        assert bea._store.read_log_rows("ready", "") == []
        assert [m.text async for m in bea.listen(count=1, timeout=1.0)] == []
