"""Sending 1:1: the durable outbox every 1:1 message and message action goes through.

Delivery (protocol §5, §6; DESIGN §5): a payload is written to the outbox first, in the
same store transaction that records it locally, then sealed and deposited. A message,
a reaction, an edit, a deletion, a timer change, a read or delivery receipt, and the
copies of these for our own other devices (``SentCopy``) all take this path, so none of
them is lost when a server is unreachable or a connection breaks.

* An item is queued with its padded payload and sealed (Olm-encrypted per device of the
  newest device list we hold, then sealed to each device) at its first delivery attempt,
  in queue order. From then on the same sealed bytes are resent, so the server stores one
  copy (same envelope ids) and a receiver that already decrypted it cannot open it twice;
  receivers also deduplicate by the payload's msg_id.
* Items are delivered in lanes: one per contact (its id), one per other user (receipts to
  a group member who is not a contact), and :data:`OWN_LANE` for our own devices. Within
  a lane the oldest goes first and a failure stops the lane for this round: per-sender
  order is part of the delivery contract.
* What fails stays queued; the next send in that lane, ``listen`` on each (re)connection
  (and then again, with a growing pause, while anything stays queued), and delivery
  receipts after each received batch deliver it. A permanent refusal
  (:data:`PERMANENT`) drops the item; an item whose message expired is dropped unsent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import TYPE_CHECKING

from samizdat.client import actions as message_actions
from samizdat.client import attachments, msgstate, reach, verification
from samizdat.client import records as rec
from samizdat.client.connection import now_ms
from samizdat.client.peers import (
    Peer,
    claim_missing,
    control_payload,
    current_devices,
    other_devices,
    own_peer,
    peer_from_contact,
    seal_padded,
)
from samizdat.client.records import Contact, ContactState, OutboxItem
from samizdat.crypto.padding import pad
from samizdat.errors import (
    ConnectError,
    LocalError,
    RemoteError,
    SamizdatError,
    ServerRefused,
)
from samizdat.protocol import frames, limits
from samizdat.protocol.actions import MessageAction
from samizdat.protocol.blobs import Attachment
from samizdat.protocol.control import SentCopy
from samizdat.protocol.envelope import Payload, PayloadKind, encode_struct
from samizdat.protocol.keys import decode_device_list
from samizdat.protocol.links import ContactCard

if TYPE_CHECKING:
    from samizdat.client.app import Client

__all__ = [
    "OWN_LANE",
    "PERMANENT",
    "send",
    "send_to_contact",
    "card_for",
    "queue",
    "queue_copy",
    "flush",
    "deliver_queued",
    "resend_queued",
    "pending",
]

log = logging.getLogger(__name__)

#: The lane of copies to our own other devices (a contact id has 16 bytes, a user key 32).
OWN_LANE = b"own"
#: Refusals after which resending the same envelope can never succeed.
PERMANENT = {
    "bad_token",
    "unknown_device",
    "envelope_too_large",
    "bad_frame",
    "too_many_envelopes",
}


# -- queueing (under the store lock) -----------------------------------------------------------


def queue(
    client: Client,
    lane: bytes,
    peer: Peer,
    payload: Payload,
    *,
    text: str = "",
    history: bool = False,
    expires_at: int | None = None,
) -> None:
    """Write ``payload`` for every device of ``peer`` to the outbox (call under the lock)."""
    store = client._store
    raw = store.get("outseq", "")
    order = (int.from_bytes(raw, "big") if raw else 0) + 1
    store.put("outseq", "", order.to_bytes(8, "big"))
    item = OutboxItem(
        msg_id=payload.msg_id,
        cid=lane,
        token=peer.token,
        server_key=peer.server_key,
        server=peer.server,
        envelopes=[],
        text=text,
        sent_at=payload.sent_at,
        history=history,
        payload=pad(encode_struct(payload)),
        user_key=peer.user_key,
        devices=peer.devices,
        expires_at=expires_at,
        order=order,
    )
    store.put("outbox", payload.msg_id, rec.encode(item))


def queue_copy(client: Client, peer_user_key: bytes, payload: Payload) -> None:
    """Queue ``payload`` as sent to a contact for our own other devices (call under the lock)."""
    own = own_peer(client)
    if own is None or len(decode_device_list(client._identity.devices).devices) < 2:
        return
    copy = SentCopy(
        peer=peer_user_key,
        msg_id=payload.msg_id,
        sent_at=payload.sent_at,
        text=payload.text,
        action=payload.action,
        attachment=payload.attachment,
    )
    # A disappearing message's copies disappear from the server at the same time.
    expires_at = None if payload.action is None else payload.action.expires_at
    queue(client, OWN_LANE, own, control_payload(copy), expires_at=expires_at)


def pending(client: Client) -> list[OutboxItem]:
    """Everything queued and not delivered yet, in queue order."""
    items = [rec.decode(raw, OutboxItem) for raw in client._store.values("outbox")]
    # Items queued before there was an order field have 0: by send time, before the rest.
    return sorted(items, key=lambda item: (item.order, item.sent_at))


# -- delivering ----------------------------------------------------------------------------------


async def _seal(client: Client, key: bytes) -> OutboxItem | None:
    """The item, sealed now if it was not yet (None: delivered or dropped meanwhile)."""
    raw = client._store.get("outbox", key)
    if raw is None:
        return None
    item = rec.decode(raw, OutboxItem)
    if item.payload is None:
        return item
    assert item.devices is not None
    peer = Peer(item.user_key, item.devices, item.server_key, item.server, item.token)
    devices = other_devices(client, current_devices(client, peer))
    claimed = await claim_missing(client, peer, devices)
    with client._store.locked():
        raw = client._store.get("outbox", key)
        if raw is None:
            return None
        item = rec.decode(raw, OutboxItem)
        if item.payload is not None:
            item.envelopes = seal_padded(client, devices, claimed, [item.payload], item.expires_at)
            item.payload = None
            client._store.put("outbox", key, rec.encode(item))
    return item


async def _deposit(client: Client, item: OutboxItem) -> None:
    step = limits.MAX_ENVELOPES_PER_DEPOSIT
    for i in range(0, len(item.envelopes), step):
        deposit = frames.Deposit(rid=0, token=item.token, envelopes=item.envelopes[i : i + step])
        for attempt in range(2):
            conn = await client._connection(item.server_key, item.server)
            try:
                await conn.call(deposit, frames.DepositOk)
                break
            except ConnectError:
                await client._drop(item.server_key)
                if attempt:
                    raise


async def _deliver(client: Client, item: OutboxItem) -> None:
    try:
        await _deposit(client, item)
    except ServerRefused as exc:
        if exc.code in PERMANENT:
            with client._store.locked():
                client._store.delete("outbox", item.msg_id)
        raise
    with client._store.locked():
        if client._store.get("outbox", item.msg_id) is None:
            return  # delivered by another task or process meanwhile
        client._store.delete("outbox", item.msg_id)
        if item.history:
            rec.append_history(
                client._store, item.cid, "out", item.text, item.msg_id, item.sent_at, now_ms()
            )
    if item.history and item.envelopes:
        client._last_sent[item.cid] = item.envelopes[0].body


async def flush(client: Client, lane: bytes | None = None) -> None:
    """Deliver what is queued, oldest first; a lane whose oldest item fails stops there.

    With ``lane`` only that lane is delivered, and a failure is raised, so that a new item
    never overtakes an older one in its lane.
    """
    now = now_ms()
    stuck: set[bytes] = set()
    for item in pending(client):
        if item.cid in stuck or (lane is not None and item.cid != lane):
            continue
        if item.expires_at is not None and item.expires_at <= now:
            with client._store.locked():
                client._store.delete("outbox", item.msg_id)
            continue
        try:
            sealed = await _seal(client, item.msg_id)
            if sealed is not None:
                await _deliver(client, sealed)
        except ServerRefused as exc:
            if exc.code in PERMANENT:
                continue  # dropped from the outbox by _deliver; later ones may pass
            stuck.add(item.cid)
            if lane is not None:
                raise
        except RemoteError:
            stuck.add(item.cid)
            if lane is not None:
                raise


async def deliver_queued(client: Client, lane: bytes) -> None:
    """Deliver ``lane`` (raising if an item fails: it stays queued), then our devices' copies."""
    await flush(client, lane)
    try:
        await flush(client, OWN_LANE)
    except SamizdatError as exc:
        log.info("copies for our other devices stay queued: %s", type(exc).__name__)


async def resend_queued(client: Client, wake: asyncio.Event | None = None) -> None:
    """Deliver the 1:1 and group outboxes (never raises a delivery failure).

    With ``wake``, while something stays queued, try again after a growing pause (up to
    five minutes) or as soon as ``wake`` is set: ``listen`` runs this on its connection and
    sets it on each reconnection, so that what failed (here or in another process sharing
    the home) goes out once its server is back.
    """
    from samizdat.client import group_outbox

    failures = 0
    while True:
        try:
            await flush(client)
            await group_outbox.deliver(client)
        except SamizdatError as exc:
            log.info("resending queued messages failed: %s", type(exc).__name__)
        if wake is None or not (pending(client) or group_outbox.pending(client)):
            return
        failures += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), min(300.0, reach.backoff(failures) * failures))
        wake.clear()


# -- messages --------------------------------------------------------------------------------------


async def card_for(client: Client, contact: Contact) -> ContactCard:
    """Our card for this contact, with a per-contact token registered on our server."""
    if contact.our_token is None:
        token = secrets.token_bytes(32)
        conn = await client._own()
        await conn.call(frames.AddToken(rid=0, token=token), frames.Ok)
        with client._store.locked():
            fresh = client._contact(contact.cid)
            if fresh.our_token is None:
                fresh.our_token = token
                client._save_contact(fresh)
            contact.our_token = fresh.our_token
    assert contact.our_token is not None
    return client._own_card(contact.our_token)


async def send(
    client: Client,
    name: str,
    text: str,
    attachment: Attachment | None = None,
    action: MessageAction | None = None,
) -> str:
    """``Client.send``: queue the message (and its copy for our other devices), deliver."""
    contact = client._contact_by_name(name)
    return await send_to_contact(client, contact, PayloadKind.TEXT, text, action, attachment)


async def send_to_contact(
    client: Client,
    contact: Contact,
    kind: PayloadKind,
    text: str,
    action: MessageAction | None = None,
    attachment: Attachment | None = None,
) -> str:
    """Send a message (``TEXT``) or a message action (``ACTION``) to ``contact``.

    The one way a 1:1 payload is built and queued: applied here, queued for the contact's
    devices and (as ``SentCopy``) for our own other devices in one store transaction, then
    delivered behind what is older in the contact's lane. A message goes to the history
    once delivered; an action only changes the message it is about.

    Returns:
        The new payload's msg_id (hex); it stays queued if delivery failed.

    Raises:
        LocalError: the contact is blocked, or verified and its key changed since.
        ConnectError, ServerRefused: not delivered yet (see :func:`flush`).
    """
    if contact.state == ContactState.BLOCKED:
        raise LocalError("this contact is blocked")
    # A verified contact whose key changed gets nothing, reactions included, until consent.
    verification.check_can_send(contact)
    conv = msgstate.contact_conv(contact.cid)
    # A message gets the expiry the conversation's timer gives; a change comes with the
    # expiry of the message it is about (client/actions.py).
    action = msgstate.stamp(client, conv, action)
    card = None if contact.answered else await card_for(client, contact)
    msg_id = secrets.token_bytes(16)
    sent_at = now_ms()
    payload = Payload(
        msg_id=msg_id,
        sent_at=sent_at,
        kind=kind,
        text=text,
        card=card,
        attachment=attachment,
        action=action,
    )
    expires_at = None if action is None else action.expires_at
    with client._store.locked():
        message_actions.on_sent(client, conv.key, msg_id, sent_at, action, text)
        if attachment is not None:
            attachments.remember(client._store, msg_id, attachment)
        peer = peer_from_contact(contact)
        history = kind == PayloadKind.TEXT
        queue(client, contact.cid, peer, payload, text=text, history=history, expires_at=expires_at)
        queue_copy(client, contact.user_key, payload)
    # Older undelivered items to this contact go first; on failure this one stays queued
    # behind them and the next send (or a resend) delivers them in order.
    await deliver_queued(client, contact.cid)
    return msg_id.hex()
