"""Receiving 1:1: ``Client.listen`` and what it does with each mailbox entry (protocol §5, §6).

``listen`` subscribes on our own server and takes entries as they come; each entry is
opened, deduplicated and stored in one store transaction (:func:`process`), then the batch
is acknowledged, so an interrupted ``listen`` loses nothing. On each (re)connection it
resends what is queued (client/sending.py, client/group_outbox.py); after each batch it
sends delivery receipts and deletes what expired (client/actions.py).

Group fan-out entries go to client/group_inbox.py, control messages to
client/dispatch.py, message actions and receipts to client/actions.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from samizdat.client import actions as message_actions
from samizdat.client import attachments, group_inbox, reach
from samizdat.client import records as rec
from samizdat.client.attachments import AttachmentInfo
from samizdat.client.connection import Connection, now_ms
from samizdat.client.dispatch import on_control
from samizdat.client.messaging import decrypt_olm, open_entry, verify_card
from samizdat.client.records import Contact, ContactState
from samizdat.crypto.padding import unpad
from samizdat.errors import ConnectError, DecryptionError, ErrorCode, ProtocolError, RemoteError
from samizdat.protocol import frames
from samizdat.protocol.control import decode_group_box
from samizdat.protocol.envelope import Payload, PayloadKind, decode_payload
from samizdat.protocol.keys import decode_device_list

if TYPE_CHECKING:
    from samizdat.client.app import Client

__all__ = [
    "Received",
    "forget_ready",
    "listen",
    "subscribe",
    "process",
    "open_mailbox_entry",
    "sender_contact",
]

log = logging.getLogger(__name__)

#: The store's log of messages stored and readable that ``listen`` has not yielded yet.
_READY = "ready"


@dataclass(frozen=True)
class Received:
    """A message yielded by :meth:`Client.listen`."""

    sender: str
    text: str = field(repr=False)
    id: str
    sent_at: int
    request: bool
    #: The group's local name for a group message (client/groups.py), else None.
    group: str | None = None
    #: The file this message carries; fetch it with ``attachments.download(client, id)``.
    attachment: AttachmentInfo | None = None


async def listen(
    client: Client,
    count: int | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - the documented API
) -> AsyncGenerator[Received, None]:
    """Yield messages as they arrive on our server.

    Stops after ``count`` messages, or once no message arrived for ``timeout``
    seconds (an idle timeout; None waits forever). Entries are acknowledged once
    stored, and what they made readable waits in the encrypted store until yielded
    (``process``), so an interrupted ``listen`` loses nothing: beyond ``count`` (a room
    key opens every message held for it) or across a crash, the next call yields it.
    """
    yielded = 0
    failures = 0
    since = asyncio.get_running_loop().time()
    resent_on: Connection | None = None
    while True:
        for row_id, value in client._store.read_log_rows(_READY, ""):
            if count is not None and yielded >= count:
                return
            with client._store.locked():
                client._store.delete_log_rows([row_id])
            yielded += 1
            yield msgspec.msgpack.decode(value, type=Received)
        if count is not None and yielded >= count:
            return
        try:
            # The backoff grows while the server cannot be reached. Once it answered (a
            # login), losing the connection starts it over: a network or a censor that
            # cuts connections costs the shortest pause each time, not a longer one for
            # every cut after an outage that left the count high.
            conn = await client._own()
            failures = 0
            await subscribe(client, conn)
            if conn is not resent_on:
                # (Re)connected: what failed to go out before goes now, unprompted.
                resent_on = conn
                client._start_resend()
            if conn.backlog:
                entries, conn.backlog = conn.backlog, []
            else:
                deliver = await conn.next_delivery(timeout)
                if deliver is None:
                    return
                entries = list(deliver.entries)
        except ConnectError as exc:
            # Dropped or blocked: reconnect for as long as we run, with jittered backoff
            # (DESIGN §6); unacknowledged entries come again on the new subscription.
            # Replaced by another listener: stop, or the two would take turns forever.
            # With an idle timeout, give up once that long passed without a connection.
            await client._drop(client._identity.server_key)
            failures += 1
            elapsed = asyncio.get_running_loop().time() - since
            if ErrorCode.REPLACED.value in str(exc) or (timeout is not None and elapsed > timeout):
                raise
            await asyncio.sleep(reach.backoff(failures))
            continue
        since = asyncio.get_running_loop().time()
        readable = 0
        last = 0
        for index, entry in enumerate(entries):
            if count is not None and yielded + readable >= count:
                # Delivered on this subscription but not consumed: the server will not
                # send them again on this connection, so keep them for the next call.
                conn.backlog = entries[index:]
                break
            readable += len(process(client, entry))
            last = entry.seq
        if last:
            with contextlib.suppress(RemoteError):
                await conn.call(frames.Ack(rid=0, up_to=last), frames.Ok)
            # Delivery receipts for what was stored; expired messages go (§6.2).
            await message_actions.after_batch(client)
            if client.on_stored is not None:
                client.on_stored()


def forget_ready(client: Client, msg_ids: set[bytes]) -> None:
    """Drop these messages from what ``listen`` has yet to yield (deleted or expired:
    ``msgstate.purge``), so that no copy of them outlives their history rows."""
    ids = {msg_id.hex() for msg_id in msg_ids}
    doomed = [
        row_id
        for row_id, value in client._store.read_log_rows(_READY, "")
        if msgspec.msgpack.decode(value, type=Received).id in ids
    ]
    if doomed:
        client._store.delete_log_rows(doomed)


async def subscribe(client: Client, conn: Connection) -> None:
    """Subscribe ``conn`` after our cursor, unless it is already."""
    if not conn.subscribed:
        raw = client._store.get("cursor", "")
        after = int.from_bytes(raw, "big") if raw else 0
        await conn.call(frames.Subscribe(rid=0, after=after), frames.Ok)
        conn.subscribed = True


def process(client: Client, entry: frames.Entry) -> list[Received]:
    """Decrypt, store and dedupe one entry (in one locked transaction); returns the
    messages to show: its own, or those a room key in it made readable. They wait in the
    store's ``ready`` log, written in the same transaction, until ``listen`` yields them."""
    with client._store.locked():
        raw = client._store.get("cursor", "")
        if raw and entry.seq <= int.from_bytes(raw, "big"):
            return []
        client._store.put("cursor", "", entry.seq.to_bytes(8, "big"))
        try:
            box = decode_group_box(entry.body)
            if box is not None:
                shown = group_inbox.on_group_box(client, box)
            else:
                shown = open_mailbox_entry(client, entry)
        except (DecryptionError, ProtocolError, msgspec.ValidationError) as exc:
            log.info("dropped a mailbox entry that does not open: %s", type(exc).__name__)
            return []
        for received in shown:
            client._store.append(_READY, "", msgspec.msgpack.encode(received))
        return shown


def open_mailbox_entry(client: Client, entry: frames.Entry) -> list[Received]:
    sealed = open_entry(client._sealing, entry.body)
    sender_key = sealed.sender_identity_key
    sessions = client._load_sessions(sender_key)
    plaintext = decrypt_olm(
        sessions,
        sealed,
        client._load_account,
        client._save_account,
        functools.partial(client._retired_sessions, sender_key),
    )
    client._save_sessions(sender_key, sessions)
    payload = decode_payload(unpad(plaintext))
    if payload.kind == PayloadKind.CONTROL and payload.control is not None:
        return on_control(client, sender_key, payload.control)
    if payload.action is not None and payload.action.receipt is not None:
        # Receipts also come from group members who are not contacts.
        message_actions.on_receipt(client, sender_key, payload)
        return []
    contact = sender_contact(client, sender_key, payload)
    if contact is None or contact.state == ContactState.BLOCKED:
        return []
    if not contact.answered:
        contact.answered = True
        client._save_contact(contact)
    seen = contact.user_key + payload.msg_id
    if client._store.get("seen", seen) is not None:
        return []
    client._store.put("seen", seen, b"")
    if not message_actions.on_message(client, contact, payload):
        return []  # a reaction, edit, deletion or timer change, or already expired
    if payload.attachment is not None:
        attachments.remember(client._store, payload.msg_id, payload.attachment)
    rec.append_history(
        client._store,
        contact.cid,
        "in",
        payload.text,
        payload.msg_id,
        payload.sent_at,
        entry.received_at,
    )
    received = Received(
        sender=contact.name,
        text=payload.text,
        id=payload.msg_id.hex(),
        sent_at=payload.sent_at,
        request=contact.state == ContactState.REQUEST,
        attachment=attachments.summary(payload.attachment) if payload.attachment else None,
    )
    return [received]


def sender_contact(client: Client, sender_key: bytes, payload: Payload) -> Contact | None:
    """Who wrote: a contact by identity key, else a new request from the card."""
    cid = client._store.get("ident", sender_key)
    if cid is not None:
        return client._contact(cid)
    if payload.card is None:
        log.info("dropped a message from an unknown sender without a card")
        return None
    verified = verify_card(payload.card, now_ms())
    if verified.device(sender_key) is None:
        log.info("dropped a message whose card does not list its sender")
        return None
    user_key = verified.device_list.user_key
    cid = client._store.get("user", user_key)
    if cid is not None:
        # A known user with a new device list: keep the newer one.
        contact = client._contact(cid)
        if verified.device_list.version > contact.device_list_version:
            contact.devices = payload.card.devices
            contact.device_list_version = verified.device_list.version
            client._save_contact(contact)
            client._index_contact(contact)
        listed = {d.identity_key for d in decode_device_list(contact.devices).devices}
        return contact if sender_key in listed else None
    name = client._unique_name(payload.card.name or verified.device_list.display_name)
    return client._new_contact(verified, name, ContactState.REQUEST)
