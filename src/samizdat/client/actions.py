"""Replies, reactions, edits, delete-for-everyone and receipts (protocol §6.2).

Every action is a ``protocol.actions.MessageAction``, end-to-end encrypted like a message:
in ``Payload.action`` over Olm to a contact's devices (and in ``SentCopy.action`` to our
own other devices), in ``GroupText.action`` over Megolm to every device of every group
member. Each device folds what it receives into a per-message state (client/msgstate.py)
with ``protocol.actions.apply``, which gives the same result whatever the arrival order.

Rules (the same on every device, enforced by the receiver):

* only the author of a message may edit or delete it; a deletion empties it everywhere
  (text, edits and reactions; an empty row stays: "this message was deleted");
* one reaction per person per message, the newest wins; an empty emoji removes it;
* the author's devices keep every edit, other devices only the newest text;
* receipts go over Olm to the author's devices only, never to a whole group. Delivery
  receipts are sent for every message shown (not to message requests, and not in groups
  of more than :data:`GROUP_RECEIPT_LIMIT` members) unless switched off
  (:func:`set_delivery_receipts`); read receipts when :func:`mark_read` is called, unless
  switched off, in which case we send none and, as in Signal, show none of other
  people's either.

1:1 actions and every receipt go through the durable 1:1 outbox (client/sending.py), to
the peer's devices and (as ``SentCopy``) to our own other devices: written first, in the
same transaction that applies them here, then delivered in order and resent until
they are. Group actions go through the group outbox (client/group_outbox.py).

Actions on a message must arrive after it (true per sender, protocol §5); one about a
message this device never held is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from samizdat.client import msgstate as ms
from samizdat.client.connection import now_ms
from samizdat.client.msgstate import Conv
from samizdat.client.peers import Peer, peer_from_contact
from samizdat.client.records import Contact, ContactState
from samizdat.errors import LocalError, NotFound, RemoteError, SamizdatError
from samizdat.protocol.actions import (
    MAX_RECEIPT_IDS,
    Event,
    MessageAction,
    MessageState,
    Reaction,
    Receipt,
    ReceiptKind,
    apply,
    view_text,
)
from samizdat.protocol.control import GroupText, SentCopy
from samizdat.protocol.envelope import Payload, PayloadKind

if TYPE_CHECKING:
    from samizdat.client.app import Client
    from samizdat.client.attachments import AttachmentInfo

__all__ = [
    "MessageView",
    "reply",
    "react",
    "edit",
    "delete",
    "mark_read",
    "read_receipts",
    "set_read_receipts",
    "delivery_receipts",
    "set_delivery_receipts",
    "GROUP_RECEIPT_LIMIT",
    "conversation",
    "flush_receipts",
    "flush_blob_deletions",
    "after_batch",
    "send_change",
    "on_sent",
    "on_message",
    "on_receipt",
    "on_group_text",
    "on_sent_copy",
]

log = logging.getLogger(__name__)

#: Seconds ``listen`` spends at most on sending delivery receipts between two batches
#: (what is not sent by then stays queued in the outbox).
RECEIPT_BUDGET = 5.0
#: How long a queued receipt waits for its server before it is dropped unsent.
RECEIPT_LIFETIME_MS: Final = 7 * 24 * 3600 * 1000
#: Groups with more members than this get no delivery receipts: each message would bring
#: one receipt per member device back to its sender.
GROUP_RECEIPT_LIMIT = 50


@dataclass(frozen=True)
class MessageView:
    """One message of a conversation as it should be shown now."""

    id: str
    author: str
    direction: str  # "in" or "out"
    text: str = field(repr=False)
    sent_at: int
    reply_to: str | None = None
    #: Each reacting person's name and emoji.
    reactions: dict[str, str] = field(default_factory=dict)
    edited: bool = False
    #: Earlier texts, oldest first (only on the author's devices).
    edits: list[str] = field(default_factory=list, repr=False)
    deleted: bool = False
    delivered_to: list[str] = field(default_factory=list)
    #: Empty while our own read receipts are off.
    read_by: list[str] = field(default_factory=list)
    expires_at: int | None = None
    received_at: int = 0
    #: The file the message carries (client/attachments.py), if any.
    attachment: AttachmentInfo | None = None


# -- resolving names -------------------------------------------------------------------------


def _conv(client: Client, name: str, group: bool) -> Conv:
    if group:
        from samizdat.client.groups import _by_name

        group_id, _, _ = _by_name(client, name)
        return ms.group_conv(group_id)
    return ms.contact_conv(client._contact_by_name(name).cid)


def _msg_id(hex_id: str) -> bytes:
    try:
        raw = bytes.fromhex(hex_id.strip())
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise LocalError("a message id is 32 hexadecimal digits")
    return raw


def _name_of(client: Client, conv: Conv, user_key: bytes) -> str:
    if user_key == client.own_user_key:
        return client.name
    if conv.group:
        from samizdat.client.groups import _load, _member_name

        record = _load(client, conv.ident)
        if record is not None:
            return _member_name(client, record, user_key)
    cid = client._store.get("user", user_key)
    return client._contact(cid).name if cid is not None else user_key.hex()[:8]


def _member_peer(client: Client, group_id: bytes, user_key: bytes) -> Peer | None:
    from samizdat.client.groups import _card_user, _load, _peer_of

    record = _load(client, group_id)
    if record is None or record.gone:
        return None
    for card in record.cards:
        if _card_user(card) == user_key:
            return _peer_of(client, card)
    return None


def _peer_for(client: Client, user_key: bytes, group_id: bytes | None) -> Peer | None:
    if group_id is not None:
        return _member_peer(client, group_id, user_key)
    cid = client._store.get("user", user_key)
    if cid is None:
        return None
    contact = client._contact(cid)
    return None if contact.state == ContactState.BLOCKED else peer_from_contact(contact)


# -- sending -----------------------------------------------------------------------------------


async def send_change(client: Client, conv: Conv, action: MessageAction, text: str = "") -> str:
    """Send an action to everyone in ``conv`` and our other devices; apply it here first."""
    if conv.group:
        from samizdat.client import groups
        from samizdat.client.groups import _load

        record = _load(client, conv.ident)
        if record is None:
            raise NotFound("no such group")
        stats = await groups.send(client, record.name, text, action=action)
        return stats.msg_id
    from samizdat.client import sending

    contact = client._contact(conv.ident)
    return await sending.send_to_contact(client, contact, PayloadKind.ACTION, text, action)


def _target_expiry(client: Client, conv: Conv, target: bytes) -> int | None:
    """A change to a disappearing message disappears with it (also from the server)."""
    state = ms.load_state(client, conv, target)
    return None if state is None else state.expires_at


async def reply(client: Client, name: str, msg_id: str, text: str, group: bool = False) -> str:
    """Send ``text`` quoting ``msg_id``; returns the new message id (hex)."""
    action = MessageAction(reply_to=_msg_id(msg_id))
    if group:
        from samizdat.client import groups

        return (await groups.send(client, name, text, action=action)).msg_id
    return await client.send(name, text, action=action)


async def react(client: Client, name: str, msg_id: str, emoji: str, group: bool = False) -> str:
    """Set our reaction to ``msg_id`` (one per person: it replaces ours); "" removes it."""
    conv = _conv(client, name, group)
    target = _msg_id(msg_id)
    if len(emoji.encode()) > 32 or any(ord(c) < 32 for c in emoji):
        raise LocalError("a reaction is one emoji")
    if ms.author_of(client, conv, target) is None:
        raise NotFound("no such message in this conversation")
    action = MessageAction(
        react=Reaction(target=target, emoji=emoji), expires_at=_target_expiry(client, conv, target)
    )
    return await send_change(client, conv, action)


def _own_message(client: Client, conv: Conv, target: bytes) -> None:
    author = ms.author_of(client, conv, target)
    if author is None:
        raise NotFound("no such message in this conversation")
    if author != client.own_user_key:
        raise LocalError("only the author of a message can change it")
    state = ms.load_state(client, conv, target)
    if state is not None and state.deleted:
        raise LocalError("this message was deleted")


async def edit(client: Client, name: str, msg_id: str, text: str, group: bool = False) -> str:
    """Replace the text of our message ``msg_id`` everywhere (we keep the earlier texts)."""
    conv = _conv(client, name, group)
    target = _msg_id(msg_id)
    _own_message(client, conv, target)
    action = MessageAction(edit=target, expires_at=_target_expiry(client, conv, target))
    return await send_change(client, conv, action, text)


async def delete(client: Client, name: str, msg_id: str, group: bool = False) -> str:
    """Delete our message ``msg_id`` for everyone in the conversation."""
    conv = _conv(client, name, group)
    target = _msg_id(msg_id)
    _own_message(client, conv, target)
    action = MessageAction(delete=target, expires_at=_target_expiry(client, conv, target))
    sent = await send_change(client, conv, action)
    await flush_blob_deletions(client)
    return sent


# -- receipts ----------------------------------------------------------------------------------


def read_receipts(client: Client) -> bool:
    """Whether we send read receipts (and show other people's); on by default."""
    return ms.read_receipts_on(client)


def set_read_receipts(client: Client, on: bool) -> None:
    with client._store.locked():
        ms.set_read_receipts_on(client, on)


def delivery_receipts(client: Client) -> bool:
    """Whether we send delivery receipts (other people's are shown either way); on by default."""
    return ms.delivery_receipts_on(client)


def set_delivery_receipts(client: Client, on: bool) -> None:
    with client._store.locked():
        ms.set_delivery_receipts_on(client, on)


def _queue_receipts(
    client: Client, user_key: bytes, group_id: bytes | None, kind: ReceiptKind, ids: list[bytes]
) -> bytes | None:
    """Queue receipts to ``user_key``'s devices (under the lock); returns the outbox lane."""
    from samizdat.client import sending

    peer = _peer_for(client, user_key, group_id)
    if peer is None:
        return None
    # The contact's lane (after what we wrote them), else one of the member's own.
    lane = client._store.get("user", user_key) or user_key
    for i in range(0, len(ids), MAX_RECEIPT_IDS):
        receipt = Receipt(kind=kind, targets=ids[i : i + MAX_RECEIPT_IDS], group_id=group_id)
        payload = Payload(
            msg_id=secrets.token_bytes(16),
            sent_at=now_ms(),
            kind=PayloadKind.ACTION,
            action=MessageAction(receipt=receipt),
        )
        # A receipt is worth little late: it leaves the queue (and the server's mailbox)
        # unsent after RECEIPT_LIFETIME_MS, so a server that never comes back does not
        # make receipts pile up.
        expires_at = payload.sent_at + RECEIPT_LIFETIME_MS
        sending.queue(client, lane, peer, payload, expires_at=expires_at)
    return lane


async def _deliver_lanes(client: Client, lanes: set[bytes]) -> None:
    """Deliver these outbox lanes now if we can; what fails stays queued (never raises)."""
    from samizdat.client import sending

    for lane in lanes:
        try:
            await sending.flush(client, lane)
        except SamizdatError as exc:
            log.info("receipts stay queued: %s", type(exc).__name__)


async def flush_receipts(client: Client) -> None:
    """Queue the delivery receipts noted while receiving in the outbox, and deliver them.

    What cannot be sent now stays queued (client/sending.py) and goes with the next
    resend, so that an unreachable server never holds up receiving (``listen`` calls
    this between batches) and no receipt is lost.
    """
    lanes: set[bytes] = set()
    with client._store.locked():
        for item in ms.pending_receipts(client):
            lane = _queue_receipts(client, item.user_key, item.group_id, item.kind, item.targets)
            if lane is not None:
                lanes.add(lane)
        ms.save_pending(client, [])
    await _deliver_lanes(client, lanes)


async def flush_blob_deletions(client: Client) -> None:
    """Delete on the server the blobs of our deleted or expired messages (kept on failure)."""
    from samizdat.client.attachments import delete_blob
    from samizdat.protocol.blobs import decode_attachment

    with client._store.locked():
        items = ms.pending_blob_deletions(client)
        ms.save_blob_deletions(client, [])
    failed: list[bytes] = []
    for raw in items:
        try:
            await delete_blob(client, decode_attachment(raw))
        except RemoteError as exc:
            log.info("could not delete a blob yet: %s", type(exc).__name__)
            failed.append(raw)
    if failed:
        with client._store.locked():
            ms.save_blob_deletions(client, failed + ms.pending_blob_deletions(client))


async def after_batch(client: Client) -> None:
    """After ``listen`` stored a batch: send delivery receipts, delete what expired."""
    try:
        async with asyncio.timeout(RECEIPT_BUDGET):
            await flush_receipts(client)
    except TimeoutError:
        log.info("delivery receipts took too long; the rest are dropped")
    ms.sweep(client)
    if ms.pending_blob_deletions(client):
        await flush_blob_deletions(client)


async def mark_read(client: Client, name: str, group: bool = False) -> int:
    """Mark the conversation read; sends read receipts unless they are off. Returns how many."""
    conv = _conv(client, name, group)
    lanes: set[bytes] = set()
    with client._store.locked():
        unread = ms.take_unread(client, conv)
        if not ms.read_receipts_on(client) or not unread:
            return len(unread)
        by_author: dict[bytes, list[bytes]] = {}
        for u in unread:
            by_author.setdefault(u.author, []).append(u.msg_id)
        group_id = conv.ident if conv.group else None
        for author, ids in by_author.items():
            lane = _queue_receipts(client, author, group_id, ReceiptKind.READ, ids)
            if lane is not None:
                lanes.add(lane)
    await _deliver_lanes(client, lanes)
    return len(unread)


# -- receiving (called inside the store transaction of the entry) ------------------------------


def _apply(client: Client, conv: Conv, target: bytes, event: Event) -> None:
    state = ms.load_state(client, conv, target)
    if state is None:
        author = ms.author_of(client, conv, target)
        if author is None:
            log.info("dropped an action about a message this device does not hold")
            return
        state = MessageState(author=author)
    if event.action.receipt is not None and state.author != client.own_user_key:
        return
    new = apply(state, event, keep_edits=state.author == client.own_user_key)
    if new.deleted and not state.deleted:
        ms.purge(client, conv, {target}, tombstone=True)
    ms.save_state(client, conv, target, new)


def _change(
    client: Client,
    conv: Conv,
    author: bytes,
    msg_id: bytes,
    sent_at: int,
    text: str,
    action: MessageAction,
) -> None:
    if action.timer is not None:
        ms.put_timer(client, conv, action.timer)
        return
    event = Event(author=author, msg_id=msg_id, sent_at=sent_at, action=action, text=text)
    if action.receipt is not None:
        for acknowledged in action.receipt.targets:
            _apply(client, conv, acknowledged, event)
        return
    target: bytes | None = (
        action.edit or action.delete or (action.react.target if action.react else None)
    )
    if target is not None:
        _apply(client, conv, target, event)


def _new_message(
    client: Client, conv: Conv, author: bytes, msg_id: bytes, action: MessageAction | None
) -> bool:
    """Record a shown message's state; False if it already expired (never shown)."""
    expires_at = None if action is None else action.expires_at
    if expires_at is not None and expires_at <= now_ms():
        return False
    reply_to = None if action is None else action.reply_to
    ms.save_state(
        client, conv, msg_id, MessageState(author=author, reply_to=reply_to, expires_at=expires_at)
    )
    if expires_at is not None:
        ms.add_expiring(client, conv, msg_id, expires_at)
    return True


def on_sent(
    client: Client,
    conv_key: bytes,
    msg_id: bytes,
    sent_at: int,
    action: MessageAction | None,
    text: str = "",
) -> bool:
    """Something we sent (from this or another own device); True if it is a shown message."""
    conv = Conv.from_key(conv_key)
    if action is None or action.is_message:
        return _new_message(client, conv, client.own_user_key, msg_id, action)
    _change(client, conv, client.own_user_key, msg_id, sent_at, text, action)
    return False


def _incoming(
    client: Client,
    conv: Conv,
    author: bytes,
    msg_id: bytes,
    sent_at: int,
    text: str,
    action: MessageAction | None,
    receipts: bool,
) -> bool:
    if action is None or action.is_message:
        if not _new_message(client, conv, author, msg_id, action):
            return False
        ms.add_unread(client, conv, author, msg_id)
        if receipts and ms.delivery_receipts_on(client):
            group_id = conv.ident if conv.group else None
            ms.queue_receipt(client, author, group_id, ReceiptKind.DELIVERED, msg_id)
        return True
    if action.receipt is None:
        _change(client, conv, author, msg_id, sent_at, text, action)
    return False


def on_message(client: Client, contact: Contact, payload: Payload) -> bool:
    """A 1:1 payload from ``contact`` (deduplicated); True if it is a message to show."""
    if payload.kind == PayloadKind.ACTION and payload.action is None:
        return False
    return _incoming(
        client,
        ms.contact_conv(contact.cid),
        contact.user_key,
        payload.msg_id,
        payload.sent_at,
        payload.text,
        payload.action,
        receipts=contact.state == ContactState.CONTACT,
    )


def on_receipt(client: Client, sender_key: bytes, payload: Payload) -> None:
    """A receipt from a contact's or group member's device, about messages we wrote."""
    assert payload.action is not None and payload.action.receipt is not None
    receipt = payload.action.receipt
    conv: Conv
    if receipt.group_id is None:
        cid = client._store.get("ident", sender_key)
        if cid is None:
            return
        contact = client._contact(cid)
        if contact.state == ContactState.BLOCKED:
            return
        conv, author = ms.contact_conv(cid), contact.user_key
    else:
        from samizdat.client.group_inbox import _sender_user
        from samizdat.client.groups import _load
        from samizdat.protocol.groups import decode_group_state

        record = _load(client, receipt.group_id)
        if record is None:
            return
        sender = _sender_user(client, record, sender_key)
        if sender is None or decode_group_state(record.state).member(sender) is None:
            return
        conv, author = ms.group_conv(receipt.group_id), sender
    _change(client, conv, author, payload.msg_id, payload.sent_at, "", payload.action)


def on_group_text(
    client: Client, group_id: bytes, sender_user: bytes, text: GroupText, members: int = 0
) -> bool:
    """A group message from a member (or our other device); True if it is one to show.

    Deduplicated here for actions (``groups._append`` does it for messages, same key).
    ``members``: how many the group has (no delivery receipts above the limit).
    """
    conv = ms.group_conv(group_id)
    seen = b"g" + sender_user + text.msg_id
    if client._store.get("seen", seen) is not None:
        return False
    if text.action is not None and not text.action.is_message:
        client._store.put("seen", seen, b"")
    if sender_user == client.own_user_key:
        return on_sent(client, conv.key, text.msg_id, text.sent_at, text.action, text.text)
    receipts = members <= GROUP_RECEIPT_LIMIT
    return _incoming(
        client, conv, sender_user, text.msg_id, text.sent_at, text.text, text.action, receipts
    )


def on_sent_copy(client: Client, cid: bytes, copy: SentCopy) -> bool:
    """What our other device sent to a contact; True if it is a message to show."""
    return on_sent(
        client, ms.contact_conv(cid).key, copy.msg_id, copy.sent_at, copy.action, copy.text
    )


# -- the conversation as shown ------------------------------------------------------------------


def conversation(client: Client, name: str, group: bool = False) -> list[MessageView]:
    """The conversation with replies, reactions, edits, deletions and receipts applied."""
    from samizdat.client.attachments import stored_summary

    ms.sweep(client)
    conv = _conv(client, name, group)
    show_read = ms.read_receipts_on(client)
    names: dict[bytes, str] = {}

    def named(key: bytes) -> str:
        if key not in names:
            names[key] = _name_of(client, conv, key)
        return names[key]

    out: list[MessageView] = []
    for row in sorted(ms.rows(client, conv), key=lambda r: (r.sent_at, r.msg_id)):
        state = ms.load_state(client, conv, row.msg_id) or MessageState(author=row.author)
        own = state.author == client.own_user_key
        earlier = [row.text, *(e.text for e in state.edits[:-1])] if state.edits else []
        out.append(
            MessageView(
                id=row.msg_id.hex(),
                author=named(row.author),
                direction=row.direction,
                text=view_text(state, row.text),
                sent_at=row.sent_at,
                reply_to=None if state.reply_to is None else state.reply_to.hex(),
                reactions={named(u): m.emoji for u, m in state.reactions if m.emoji},
                edited=bool(state.edits),
                edits=earlier if own else [],
                deleted=state.deleted,
                delivered_to=sorted(named(u) for u in state.delivered),
                read_by=sorted(named(u) for u in state.read) if show_read else [],
                expires_at=state.expires_at,
                received_at=row.received_at,
                attachment=None if state.deleted else stored_summary(client._store, row.msg_id),
            )
        )
    return out
