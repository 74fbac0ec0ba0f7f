"""Receiving group traffic and syncing groups to a new device (protocol §10.2, §10.3).

The other half of client/groups.py: applying ``GroupUpdate`` and ``RoomKey`` control
messages from member devices, decrypting fanned-out ``GroupBox`` entries, and the group
part of what a newly linked device receives.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Final

import msgspec

from samizdat.client.actions import on_group_text
from samizdat.client.connection import now_ms
from samizdat.client.groups import (
    GroupRecord,
    InboundRecord,
    _append,
    _card_user,
    _group_ids,
    _history_records,
    _load,
    _member_name,
    _save,
    _unique_group_name,
)
from samizdat.client.messaging import verify_card
from samizdat.client.msgstate import group_conv, lasting
from samizdat.client.peers import Peer, current_devices, remember_devices
from samizdat.crypto.megolm import MegolmInbound
from samizdat.crypto.padding import unpad
from samizdat.errors import DecryptionError, ProtocolError, RemoteError
from samizdat.protocol.control import (
    GroupBox,
    GroupText,
    GroupUpdate,
    RoomKey,
    SyncGroup,
    SyncHistory,
    decode_group_text,
)
from samizdat.protocol.groups import apply_update, decode_group_state
from samizdat.protocol.links import ContactCard

if TYPE_CHECKING:
    from samizdat.client.app import Client, Received
    from samizdat.client.attachments import AttachmentInfo
    from samizdat.protocol.blobs import Attachment

__all__ = [
    "MAX_HELD_PER_SESSION",
    "MAX_HELD_SESSIONS",
    "on_group_update",
    "on_room_key",
    "on_group_box",
    "sync_groups",
    "sync_group_history",
    "install_synced_group",
    "append_synced_group_history",
]

log = logging.getLogger(__name__)

#: Room keys held for groups (or senders) we do not know yet.
_MAX_PENDING_KEYS = 256
#: Group messages held until their room key comes: per Megolm session, and sessions.
MAX_HELD_PER_SESSION: Final = 64
MAX_HELD_SESSIONS: Final = 64
#: A synced group entry's size; below the sync message budget of client/devices.py.
_SYNC_GROUP_BYTES = 38_000


# -- receiving ---------------------------------------------------------------------------


def _sender_user(client: Client, record: GroupRecord | None, sender_key: bytes) -> bytes | None:
    """The user whose current device list holds ``sender_key`` (us, a member, a contact)."""
    from samizdat.client.devices import is_own_device

    if is_own_device(client, sender_key):
        return client.own_user_key
    cards = [] if record is None else record.cards
    for card in cards:
        peer = Peer(_card_user(card), card.devices, b"", card.server, card.token)
        if any(d.identity_key == sender_key for d in current_devices(client, peer)):
            return peer.user_key
    cid = client._store.get("ident", sender_key)
    if cid is not None:
        return client._contact(cid).user_key
    return None


def on_group_update(client: Client, sender_key: bytes, update: GroupUpdate) -> list[Received]:
    """Apply a signed state from a member device (dropped if not allowed); returns the
    held messages of senders it made members (``_hold_box``), now opened and stored."""
    try:
        incoming = decode_group_state(update.state)
    except ProtocolError:
        log.info("dropped a group update that does not verify")
        return []
    group_id = incoming.group_id
    record = _load(client, group_id)
    held = None if record is None else decode_group_state(record.state)
    verified_cards: list[ContactCard] = []
    for card in update.cards:
        with contextlib.suppress(RemoteError):
            verify_card(card, now_ms())
            remember_devices(client, card.devices)
            verified_cards.append(card)
    probe = GroupRecord(state=update.state, cards=verified_cards, name="")
    signer = _sender_user(client, record if record is not None else probe, sender_key)
    if signer is None and record is not None:
        signer = _sender_user(client, probe, sender_key)
    if signer != update.state.signer:
        log.info("dropped a group update not sent by its signer")
        return []
    if held is not None and incoming.version == held.version:
        # Another part of an update we hold: only its cards are new.
        if record is None or update.state.body != record.state.body:
            return []
        state = held
    else:
        try:
            state = apply_update(held, update.state)
        except ProtocolError:
            log.info("dropped a group update that is not allowed")
            return []
    members_now = set(state.user_keys())
    with client._store.locked():
        if record is None:
            if client.own_user_key not in members_now:
                return []
            record = GroupRecord(
                state=update.state,
                cards=[],
                name=_unique_group_name(client, state.name, group_id),
            )
        if held is None or state.name != held.name:
            client._store.delete("gname", record.name)
            record.name = _unique_group_name(client, state.name, group_id)
        record.state = update.state
        by_user = {_card_user(c): c for c in record.cards}
        for card in verified_cards:
            if _card_user(card) in members_now:
                by_user[_card_user(card)] = card
        record.cards = [c for u, c in by_user.items() if u in members_now]
        record.gone = client.own_user_key not in members_now
        _save(client, group_id, record)
        return [] if record.gone else _replay_group(client, group_id)


def on_room_key(client: Client, sender_key: bytes, key: RoomKey) -> list[Received]:
    """Keep a member's room key; returns the messages held for it (``_hold_box``), now
    opened and stored."""
    record = _load(client, key.group_id)
    sender = b""  # not known yet: the key may come before the state (see _hold_pending)
    if record is not None and not record.gone:
        user = _sender_user(client, record, sender_key)
        if user is not None and decode_group_state(record.state).member(user) is not None:
            sender = user
    try:
        inbound = MegolmInbound.from_session_key(key.session_key)
    except DecryptionError:
        return []
    if inbound.session_id != key.session_id:
        return []
    with client._store.locked():
        raw = client._store.get("gin", key.session_id)
        if raw is not None:
            held = msgspec.msgpack.decode(raw, type=InboundRecord)
            if held.sender_identity != sender_key:
                return []
            current = MegolmInbound.from_pickle(held.pickle, client._store.pickle_key)
            if current.first_known_index <= inbound.first_known_index:
                return []
        if not sender:
            _hold_pending(client, key.session_id)
        client._store.put(
            "gin",
            key.session_id,
            msgspec.msgpack.encode(
                InboundRecord(
                    pickle=inbound.pickle(client._store.pickle_key),
                    group_id=key.group_id,
                    sender_user=sender,
                    sender_identity=sender_key,
                )
            ),
        )
        return _replay_held(client, key.session_id)


def _hold_pending(client: Client, session_id: str) -> None:
    """Remember a key not yet bound to a member; the oldest beyond the cap are dropped.

    A group's state arrives in the Megolm session of the member who made the change, so its
    room key comes first, from a device we cannot yet tie to a member (an invitation, or a
    member added since our last state). The cap bounds what a stranger can make us store.
    """
    for old in _newest_sessions(client, "gpend", session_id, _MAX_PENDING_KEYS):
        stale = client._store.get("gin", old)
        if stale is not None and not msgspec.msgpack.decode(stale, type=InboundRecord).sender_user:
            client._store.delete("gin", old)


def _session_list(client: Client, kind: str) -> list[str]:
    raw = client._store.get(kind, "")
    return [] if raw is None else msgspec.msgpack.decode(raw, type=list[str])


def _newest_sessions(client: Client, kind: str, session_id: str, cap: int) -> list[str]:
    """Move ``session_id`` to the newest end of the list kept under ``kind``, keep the
    newest ``cap``; returns the ones that fell off, for the caller to forget."""
    order = [s for s in _session_list(client, kind) if s != session_id] + [session_id]
    client._store.put(kind, "", msgspec.msgpack.encode(order[-cap:]))
    return order[:-cap]


def _forget_session(client: Client, kind: str, session_id: str) -> None:
    order = _session_list(client, kind)
    if session_id in order:
        order.remove(session_id)
        client._store.put(kind, "", msgspec.msgpack.encode(order))


def _hold_box(client: Client, box: GroupBox) -> None:
    """Keep a group message we cannot open or place yet: its room key has not come
    (``on_room_key`` replays it), or its sender is not yet a member in the state we hold
    (``on_group_update`` replays the group's held messages).

    The sender's outbox stores the key before the message, so on an honest path the key
    is first, but a path that delays or reorders entries can put the message first; and a
    new member's first message comes from them, while the state that adds them comes from
    whoever added them, over another path. The caps bound what a stranger's made-up session
    ids can make us store; the oldest session's messages go first.
    """
    if not box.session_id:
        return
    raw = client._store.get("gheld", box.session_id)
    boxes = [] if raw is None else msgspec.msgpack.decode(raw, type=list[GroupBox])
    if len(boxes) >= MAX_HELD_PER_SESSION:
        log.info("dropped a group message we cannot open yet (too many held)")
        return
    boxes.append(box)
    client._store.put("gheld", box.session_id, msgspec.msgpack.encode(boxes))
    for old in _newest_sessions(client, "gheldq", box.session_id, MAX_HELD_SESSIONS):
        client._store.delete("gheld", old)
        log.info("dropped held group messages that never opened")
    log.info("holding a group message until its key or its sender's membership comes")


def _replay_held(client: Client, session_id: str) -> list[Received]:
    """Open the messages held for ``session_id`` now that its key is here, in the order
    they came (a state change before the messages that need it)."""
    raw = client._store.get("gheld", session_id)
    if raw is None:
        return []
    client._store.delete("gheld", session_id)
    _forget_session(client, "gheldq", session_id)
    shown: list[Received] = []
    for box in msgspec.msgpack.decode(raw, type=list[GroupBox]):
        try:
            shown += on_group_box(client, box)
        except (DecryptionError, ProtocolError, msgspec.ValidationError) as exc:
            log.info("dropped a held group message that does not open: %s", type(exc).__name__)
    return shown


def _replay_group(client: Client, group_id: bytes) -> list[Received]:
    """Open again what is held in ``group_id``'s sessions whose key we have (messages from
    senders that were not yet members when they came)."""
    shown: list[Received] = []
    for session_id in _session_list(client, "gheldq"):
        key = client._store.get("gin", session_id)
        if key is not None and msgspec.msgpack.decode(key, type=InboundRecord).group_id == group_id:
            shown += _replay_held(client, session_id)
    return shown


def _bind_sender(client: Client, session_id: str, held: InboundRecord) -> InboundRecord | None:
    """The session's record with its sender's user, once that sender is a known member."""
    if held.sender_user:
        return held
    record = _load(client, held.group_id)
    if record is None or record.gone:
        return None
    sender = _sender_user(client, record, held.sender_identity)
    if sender is None or decode_group_state(record.state).member(sender) is None:
        return None
    bound = msgspec.structs.replace(held, sender_user=sender)
    client._store.put("gin", session_id, msgspec.msgpack.encode(bound))
    return bound


def _on_state_text(client: Client, held: InboundRecord, text: GroupText) -> list[Received]:
    """A state change or cards in a member's Megolm session: applied like a GroupUpdate."""
    state = text.state
    if state is None:
        record = _load(client, held.group_id)
        if record is None:
            return []
        state = record.state
    cards = [
        ContactCard(devices=c.devices, server=text.servers[c.server], token=c.token, name=c.name)
        for c in text.cards
        if c.server < len(text.servers)
    ]
    return on_group_update(client, held.sender_identity, GroupUpdate(state=state, cards=cards))


def on_group_box(client: Client, box: GroupBox) -> list[Received]:
    """Decrypt a fanned-out group message (called with the store locked); returns what it
    made readable: itself, or, for a state change, the held messages it lets in."""
    from samizdat.client.app import Received

    raw = client._store.get("gin", box.session_id)
    if raw is None:
        _hold_box(client, box)
        return []
    held = msgspec.msgpack.decode(raw, type=InboundRecord)
    inbound = MegolmInbound.from_pickle(held.pickle, client._store.pickle_key)
    plaintext, _index = inbound.decrypt(box.megolm)
    text = decode_group_text(unpad(plaintext))
    if text.group_id != held.group_id:
        return []
    if text.state is not None or text.cards:
        return _on_state_text(client, held, text)
    bound = _bind_sender(client, box.session_id, held)
    record = _load(client, held.group_id)
    if record is not None and record.gone:
        return []
    if bound is None or record is None:
        # The state that makes its sender a member (or us one) can come after it, from
        # another member over another path: kept until a state change lets it in.
        _hold_box(client, box)
        return []
    held = bound
    state = decode_group_state(record.state)
    if state.member(held.sender_user) is None:
        log.info("dropped a group message from a former member")
        return []
    own = held.sender_user == client.own_user_key
    if not on_group_text(client, held.group_id, held.sender_user, text, len(state.members)):
        return []  # a reaction, edit, deletion, timer change or a duplicate (client/actions.py)
    if text.attachment is not None:
        from samizdat.client import attachments

        attachments.remember(client._store, text.msg_id, text.attachment)
    fresh = _append(
        client,
        held.group_id,
        held.sender_user,
        "out" if own else "in",
        text.text,
        text.msg_id,
        text.sent_at,
    )
    if not fresh or own:
        return []
    received = Received(
        sender=_member_name(client, record, held.sender_user),
        text=text.text,
        id=text.msg_id.hex(),
        sent_at=text.sent_at,
        request=False,
        group=record.name,
        attachment=_summary(text.attachment),
    )
    return [received]


def _summary(attachment: Attachment | None) -> AttachmentInfo | None:
    from samizdat.client import attachments

    return None if attachment is None else attachments.summary(attachment)


# -- sync to a new device ----------------------------------------------------------------


def sync_groups(client: Client) -> list[SyncGroup]:
    """Our groups for a new device; a big group's cards are split over several entries
    (each with the state), so that every entry fits one sync message."""
    out: list[SyncGroup] = []
    for group_id in _group_ids(client):
        record = _load(client, group_id)
        if record is None or record.gone:
            continue
        size = len(msgspec.msgpack.encode(record.state))
        part: list[ContactCard] = []
        used = size
        for card in record.cards:
            cost = len(msgspec.msgpack.encode(card))
            if part and used + cost > _SYNC_GROUP_BYTES:
                out.append(SyncGroup(state=record.state, cards=part))
                part, used = [], size
            part.append(card)
            used += cost
        out.append(SyncGroup(state=record.state, cards=part))
    return out


def sync_group_history(client: Client, limit: int) -> list[SyncHistory]:
    out: list[SyncHistory] = []
    for group_id in _group_ids(client):
        for r in _history_records(client, group_id)[-limit:]:
            if not lasting(client, group_conv(group_id), r.msg_id):
                continue  # a disappearing message is not copied to a new device
            out.append(
                SyncHistory(
                    peer=group_id,
                    group=True,
                    direction=r.direction,
                    text=r.text,
                    msg_id=r.msg_id,
                    sent_at=r.sent_at,
                    author=r.author,
                )
            )
    return out


def install_synced_group(client: Client, synced: SyncGroup) -> None:
    try:
        state = decode_group_state(synced.state)
    except ProtocolError:
        return
    cards: list[ContactCard] = []
    for card in synced.cards:
        with contextlib.suppress(RemoteError):
            verify_card(card, now_ms())
            cards.append(card)
    held = _load(client, state.group_id)
    if held is not None and held.state.body == synced.state.body:
        # Another part of the same group (sync_groups splits big ones): add its cards.
        known = {_card_user(c) for c in held.cards}
        held.cards += [c for c in cards if _card_user(c) not in known]
        _save(client, state.group_id, held)
        return
    record = GroupRecord(
        state=synced.state,
        cards=cards,
        name=_unique_group_name(client, state.name, state.group_id),
    )
    _save(client, state.group_id, record)


def append_synced_group_history(client: Client, item: SyncHistory) -> None:
    if _load(client, item.peer) is None:
        return
    _append(client, item.peer, item.author, item.direction, item.text, item.msg_id, item.sent_at)
