"""Where message actions and timers live in the client store (protocol §6.2).

Record kinds (every value encrypted like any other record, client/store.py):

=============  ===========================  =============================================
kind           lookup name                  value
=============  ===========================  =============================================
``mstate``     conversation key + msg id    ``protocol.actions.MessageState``
``expiring``   ``""``                       :class:`Expiring` list (disappearing messages)
``timer``      conversation key             the conversation's timer, seconds (4 bytes)
``unread``     conversation key             :class:`Unread` list (read receipts to send)
``rcpt``       ``""``                       :class:`PendingReceipt` list (delivery receipts)
``setting``    ``"read_receipts"``          ``b"\\x00"`` when switched off
``setting``    ``"delivery_receipts"``      ``b"\\x00"`` when switched off
``blobdel``    ``""``                       attachments whose blob we still must delete
=============  ===========================  =============================================

A conversation key is ``b"c"`` + the contact id or ``b"g"`` + the group id. The message
text itself stays in the history logs (``history``/``ghistory``); deleting a message
deletes its log row and its ``mstate`` record, then ``Store.scrub`` empties the WAL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from samizdat.client import records as rec
from samizdat.client.connection import now_ms
from samizdat.protocol.actions import MessageAction, MessageState, ReceiptKind
from samizdat.protocol.blobs import encode_attachment

if TYPE_CHECKING:
    from samizdat.client.app import Client

__all__ = [
    "Conv",
    "Row",
    "Expiring",
    "Unread",
    "PendingReceipt",
    "contact_conv",
    "group_conv",
    "load_state",
    "save_state",
    "lasting",
    "rows",
    "author_of",
    "purge",
    "add_expiring",
    "get_timer",
    "put_timer",
    "stamp",
    "read_receipts_on",
    "set_read_receipts_on",
    "delivery_receipts_on",
    "set_delivery_receipts_on",
    "add_unread",
    "take_unread",
    "queue_receipt",
    "pending_receipts",
    "save_pending",
    "sweep",
    "pending_blob_deletions",
    "save_blob_deletions",
]


@dataclass(frozen=True)
class Conv:
    """A conversation: a contact (by local contact id) or a group (by group id)."""

    group: bool
    ident: bytes

    @property
    def key(self) -> bytes:
        return (b"g" if self.group else b"c") + self.ident

    @staticmethod
    def from_key(key: bytes) -> Conv:
        return Conv(group=key[:1] == b"g", ident=key[1:])


def contact_conv(cid: bytes) -> Conv:
    return Conv(group=False, ident=cid)


def group_conv(group_id: bytes) -> Conv:
    return Conv(group=True, ident=group_id)


class Expiring(msgspec.Struct, frozen=True):
    conv: bytes
    msg_id: bytes
    expires_at: int


class Unread(msgspec.Struct, frozen=True):
    author: bytes
    msg_id: bytes


class PendingReceipt(msgspec.Struct):
    user_key: bytes
    group_id: bytes | None
    kind: ReceiptKind
    targets: list[bytes]


# -- per-message state -----------------------------------------------------------------------


def load_state(client: Client, conv: Conv, msg_id: bytes) -> MessageState | None:
    raw = client._store.get("mstate", conv.key + msg_id)
    return None if raw is None else msgspec.msgpack.decode(raw, type=MessageState)


def lasting(client: Client, conv: Conv, msg_id: bytes) -> bool:
    """Not a disappearing message (those are never copied to a newly linked device)."""
    state = load_state(client, conv, msg_id)
    return state is None or state.expires_at is None


def save_state(client: Client, conv: Conv, msg_id: bytes, state: MessageState) -> None:
    client._store.put("mstate", conv.key + msg_id, msgspec.msgpack.encode(state))


@dataclass(frozen=True)
class Row:
    """One history log row, 1:1 or group, with the user who wrote it."""

    row_id: int
    author: bytes
    direction: str
    text: str
    msg_id: bytes
    sent_at: int
    received_at: int


def rows(client: Client, conv: Conv) -> list[Row]:
    """The conversation's history rows in stored order."""
    from samizdat.client.groups import GroupHistoryRecord

    out: list[Row] = []
    if conv.group:
        for row_id, raw in client._store.read_log_rows("ghistory", conv.ident):
            g = msgspec.msgpack.decode(raw, type=GroupHistoryRecord)
            out.append(
                Row(row_id, g.author, g.direction, g.text, g.msg_id, g.sent_at, g.received_at)
            )
        return out
    cid_raw = client._store.get("contact", conv.ident)
    if cid_raw is None:
        return out
    peer_key = rec.decode(cid_raw, rec.Contact).user_key
    for row_id, raw in client._store.read_log_rows("history", conv.ident):
        h = rec.decode(raw, rec.HistoryRecord)
        author = client.own_user_key if h.direction == "out" else peer_key
        out.append(Row(row_id, author, h.direction, h.text, h.msg_id, h.sent_at, h.received_at))
    return out


def author_of(client: Client, conv: Conv, msg_id: bytes) -> bytes | None:
    """Who wrote ``msg_id`` in ``conv`` (its state, else its history row), or None."""
    state = load_state(client, conv, msg_id)
    if state is not None:
        return state.author
    for row in rows(client, conv):
        if row.msg_id == msg_id:
            return row.author
    return None


def purge(client: Client, conv: Conv, msg_ids: set[bytes], tombstone: bool) -> None:
    """Delete these messages' history rows; with ``tombstone`` leave an empty row in place.

    The empty row keeps "this message was deleted" in the conversation (no text, no
    reactions); an expired message leaves nothing.
    """
    from samizdat.client.attachments import forget
    from samizdat.client.groups import GroupHistoryRecord
    from samizdat.client.receiving import forget_ready

    doomed = [row for row in rows(client, conv) if row.msg_id in msg_ids]
    client._store.delete_log_rows([row.row_id for row in doomed])
    forget_ready(client, msg_ids)
    for msg_id in msg_ids:
        client._store.delete("outbox", msg_id)
        attachment = forget(client._store, msg_id)
        state = load_state(client, conv, msg_id)
        if attachment is not None and state is not None and state.author == client.own_user_key:
            # We uploaded it: delete the blob on the server too (timers.flush_blob_deletions).
            blobs = pending_blob_deletions(client)
            blobs.append(encode_attachment(attachment))
            client._store.put("blobdel", "", msgspec.msgpack.encode(blobs))
    if not tombstone:
        return
    for row in doomed:
        if conv.group:
            value = msgspec.msgpack.encode(
                GroupHistoryRecord(
                    author=row.author,
                    direction=row.direction,
                    text="",
                    msg_id=row.msg_id,
                    sent_at=row.sent_at,
                    received_at=row.received_at,
                )
            )
            client._store.append("ghistory", conv.ident, value)
        else:
            rec.append_history(
                client._store,
                conv.ident,
                row.direction,
                "",
                row.msg_id,
                row.sent_at,
                row.received_at,
            )


def pending_blob_deletions(client: Client) -> list[bytes]:
    """Encoded ``Attachment``s of our deleted or expired messages whose blob is not gone yet."""
    raw = client._store.get("blobdel", "")
    return [] if raw is None else msgspec.msgpack.decode(raw, type=list[bytes])


def save_blob_deletions(client: Client, items: list[bytes]) -> None:
    if items:
        client._store.put("blobdel", "", msgspec.msgpack.encode(items))
    else:
        client._store.delete("blobdel", "")


# -- disappearing messages ---------------------------------------------------------------------


def _expiring(client: Client) -> list[Expiring]:
    raw = client._store.get("expiring", "")
    return [] if raw is None else msgspec.msgpack.decode(raw, type=list[Expiring])


def add_expiring(client: Client, conv: Conv, msg_id: bytes, expires_at: int) -> None:
    items = _expiring(client)
    items.append(Expiring(conv=conv.key, msg_id=msg_id, expires_at=expires_at))
    client._store.put("expiring", "", msgspec.msgpack.encode(items))


def get_timer(client: Client, conv: Conv) -> int:
    raw = client._store.get("timer", conv.key)
    return 0 if raw is None else int.from_bytes(raw, "big")


def put_timer(client: Client, conv: Conv, seconds: int) -> None:
    client._store.put("timer", conv.key, seconds.to_bytes(4, "big"))


def stamp(client: Client, conv: Conv, action: MessageAction | None) -> MessageAction | None:
    """``action`` with ``expires_at`` set if the conversation has a timer and it is a message."""
    if action is not None and (not action.is_message or action.expires_at is not None):
        return action
    seconds = get_timer(client, conv)
    if not seconds:
        return action
    expires_at = now_ms() + seconds * 1000
    if action is None:
        return MessageAction(expires_at=expires_at)
    return msgspec.structs.replace(action, expires_at=expires_at)


def sweep(client: Client, now: int | None = None) -> int:
    """Delete every message whose time is up, from the store and the WAL; returns how many."""
    from samizdat.client.group_outbox import drop_expired

    now = now_ms() if now is None else now
    store = client._store
    unsent = drop_expired(client, now)
    with store.locked():
        items = _expiring(client)
        due = [i for i in items if i.expires_at <= now]
        if not due:
            if unsent:
                store.scrub()
            return unsent
        by_conv: dict[bytes, set[bytes]] = {}
        for item in due:
            by_conv.setdefault(item.conv, set()).add(item.msg_id)
        for key, ids in by_conv.items():
            conv = Conv.from_key(key)
            purge(client, conv, ids, tombstone=False)
            for msg_id in ids:
                store.delete("mstate", key + msg_id)
            unread = [u for u in _unread(client, conv) if u.msg_id not in ids]
            store.put("unread", key, msgspec.msgpack.encode(unread))
        rest = [i for i in items if i.expires_at > now]
        store.put("expiring", "", msgspec.msgpack.encode(rest))
    store.scrub()
    return len(due) + unsent


# -- receipts ------------------------------------------------------------------------------------


def read_receipts_on(client: Client) -> bool:
    return client._store.get("setting", "read_receipts") != b"\x00"


def set_read_receipts_on(client: Client, on: bool) -> None:
    client._store.put("setting", "read_receipts", b"\x01" if on else b"\x00")


def delivery_receipts_on(client: Client) -> bool:
    return client._store.get("setting", "delivery_receipts") != b"\x00"


def set_delivery_receipts_on(client: Client, on: bool) -> None:
    client._store.put("setting", "delivery_receipts", b"\x01" if on else b"\x00")


def _unread(client: Client, conv: Conv) -> list[Unread]:
    raw = client._store.get("unread", conv.key)
    return [] if raw is None else msgspec.msgpack.decode(raw, type=list[Unread])


#: Unread messages remembered per conversation for read receipts (the oldest are dropped).
_MAX_UNREAD = 1024


def add_unread(client: Client, conv: Conv, author: bytes, msg_id: bytes) -> None:
    items = _unread(client, conv)[-(_MAX_UNREAD - 1) :]
    items.append(Unread(author=author, msg_id=msg_id))
    client._store.put("unread", conv.key, msgspec.msgpack.encode(items))


def take_unread(client: Client, conv: Conv) -> list[Unread]:
    items = _unread(client, conv)
    client._store.delete("unread", conv.key)
    return items


#: Delivery receipts held for sending at most (the oldest are dropped beyond it).
_MAX_PENDING = 4096


def pending_receipts(client: Client) -> list[PendingReceipt]:
    raw = client._store.get("rcpt", "")
    return [] if raw is None else msgspec.msgpack.decode(raw, type=list[PendingReceipt])


def save_pending(client: Client, items: list[PendingReceipt]) -> None:
    if items:
        client._store.put("rcpt", "", msgspec.msgpack.encode(items))
    else:
        client._store.delete("rcpt", "")


def queue_receipt(
    client: Client, user_key: bytes, group_id: bytes | None, kind: ReceiptKind, msg_id: bytes
) -> None:
    items = pending_receipts(client)
    for item in items:
        if item.user_key == user_key and item.group_id == group_id and item.kind == kind:
            item.targets.append(msg_id)
            break
    else:
        items.append(PendingReceipt(user_key, group_id, kind, [msg_id]))
    total = sum(len(i.targets) for i in items)
    while total > _MAX_PENDING and items:
        total -= len(items.pop(0).targets)
    save_pending(client, items)
