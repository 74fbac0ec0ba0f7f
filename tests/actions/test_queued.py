"""1:1 actions written while the server is down are queued and arrive once, in order.

Real server process (killed and restarted), real clients; alice has a linked laptop, so
the copies for her own other device go through the same durable outbox.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from samizdat.client import actions, sending
from samizdat.client import records as rec
from samizdat.client.app import Client
from samizdat.client.records import Contact
from samizdat.errors import ConnectError
from samizdat.protocol.envelope import Payload
from tests.actions.test_direct import Pair, _drain_all, _view, pair
from tests.e2e.harness import ServerProcess
from tests.groups.helpers import drain

__all__ = ["pair"]


def _kind(payload: Payload) -> str:
    action = payload.action
    if action is None or action.is_message:
        return f"message {payload.text}"
    if action.react is not None:
        return f"react {action.react.emoji}"
    if action.edit is not None:
        return f"edit {payload.text}"
    if action.delete is not None:
        return "delete"
    return "other"


async def _resend(client: Client) -> None:
    """Let ``listen`` (re)connect, and wait for the resend it starts on that connection."""
    await drain(client, idle=0.5)
    if client._resend is not None:
        await client._resend


async def test_actions_while_the_server_is_down_arrive_once_in_order(
    pair: Pair, server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = await pair.alice.send("bob", "original text")
    doomed = await pair.alice.send("bob", "sent by mistake")
    await _drain_all(pair)
    seen: list[str] = []
    received = actions.on_message

    def spy(client: Client, contact: Contact, payload: Payload) -> bool:
        if client is pair.bob:
            seen.append(_kind(payload))
        return received(client, contact, payload)

    monkeypatch.setattr(actions, "on_message", spy)

    server.kill()
    writes: list[Callable[[], Awaitable[object]]] = [
        lambda: actions.react(pair.alice, "bob", original, "👍"),
        lambda: actions.edit(pair.alice, "bob", original, "first edit"),
        lambda: pair.alice.send("bob", "a message between"),
        lambda: actions.edit(pair.alice, "bob", original, "second edit"),
        lambda: actions.delete(pair.alice, "bob", doomed),
        lambda: actions.react(pair.alice, "bob", original, "❤"),
    ]
    for write in writes:
        with pytest.raises(ConnectError):
            await write()
    # Applied here at once, and queued sealed (the Olm sessions exist).
    here = _view(pair.alice, "bob", original)
    assert (here.text, here.reactions) == ("second edit", {"alice": "❤"})
    queued = [raw for raw in pair.alice._store.values("outbox")]
    items = sending.pending(pair.alice)
    assert len(items) == 12  # six for bob, six copies for the laptop
    bob_lane = pair.alice._contact_by_name("bob").cid
    assert {i.cid for i in items} == {bob_lane, sending.OWN_LANE}
    # Only the message goes to the history once delivered; actions and copies never do.
    flags = [i.history for i in items if i.cid == bob_lane]
    assert flags == [False, False, True, False, False, False]
    assert not any(i.history for i in items if i.cid == sending.OWN_LANE)
    rows_before = len(pair.alice.history("bob"))

    server.start()
    await _resend(pair.alice)
    assert sending.pending(pair.alice) == []
    added = pair.alice.history("bob")[rows_before:]
    assert [(h.direction, h.text) for h in added] == [("out", "a message between")]
    got = await drain(pair.bob)
    assert [m.text for m in got] == ["a message between"]
    await drain(pair.laptop)
    assert seen == [
        "react 👍",
        "edit first edit",
        "message a message between",
        "edit second edit",
        "delete",
        "react ❤",
    ]
    # Delivered once: the same sealed items written again (a crash after the deposit,
    # before the outbox was cleared) and resent change nothing anywhere.
    with pair.alice._store.locked():
        for raw in queued:
            item = rec.decode(raw, rec.OutboxItem)
            pair.alice._store.put("outbox", item.msg_id, raw)
    await pair.alice._flush_outbox()
    assert sending.pending(pair.alice) == []
    assert await drain(pair.bob) == []
    assert len(seen) == 6
    for device, client in (("bob", pair.bob), ("laptop", pair.laptop)):
        view = _view(client, "alice" if device == "bob" else "bob", original)
        assert (view.text, view.edited) == ("second edit", True), device
        assert list(view.reactions.values()) == ["❤"], device
        gone = _view(client, "alice" if device == "bob" else "bob", doomed)
        assert (gone.deleted, gone.text) == (True, ""), device


async def test_receipts_while_the_server_is_down_are_sent_later(
    pair: Pair, server: ServerProcess
) -> None:
    first = await pair.alice.send("bob", "read me later")
    await drain(pair.bob)  # its delivery receipt goes at once
    server.kill()
    assert await actions.mark_read(pair.bob, "alice") == 2  # with "hi bob" from befriending
    server.start()
    await _resend(pair.bob)
    assert sending.pending(pair.bob) == []
    await drain(pair.alice)
    view = _view(pair.alice, "bob", first)
    assert (view.delivered_to, view.read_by) == (["bob"], ["bob"])


async def test_receipts_queued_past_their_lifetime_are_dropped_unsent(
    pair: Pair, server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await pair.alice.send("bob", "read me much later")
    await drain(pair.bob)
    server.kill()
    monkeypatch.setattr(actions, "RECEIPT_LIFETIME_MS", 0)  # "a week" passes at once
    assert await actions.mark_read(pair.bob, "alice") == 2
    server.start()
    await _resend(pair.bob)
    assert sending.pending(pair.bob) == []
    await drain(pair.alice)
    view = _view(pair.alice, "bob", first)
    assert (view.delivered_to, view.read_by) == (["bob"], [])


async def test_delivery_receipts_can_be_switched_off(pair: Pair, tmp_path: Path) -> None:
    assert actions.delivery_receipts(pair.bob)
    actions.set_delivery_receipts(pair.bob, False)
    assert not actions.delivery_receipts(pair.bob)
    quiet = await pair.alice.send("bob", "no receipt for this")
    await drain(pair.bob)
    await drain(pair.alice)
    assert _view(pair.alice, "bob", quiet).delivered_to == []
    actions.set_delivery_receipts(pair.bob, True)
    loud = await pair.alice.send("bob", "a receipt for this")
    await drain(pair.bob)
    await drain(pair.alice)
    assert _view(pair.alice, "bob", loud).delivered_to == ["bob"]
