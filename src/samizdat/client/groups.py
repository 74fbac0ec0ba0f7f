"""Group chats on Megolm with server-side fan-out (protocol §10.2, §10.3).

* **State.** A group's name, members and admins are a ``GroupState`` signed by an admin's
  user key (protocol/groups.py decides who may change what). A change travels like a
  message: Megolm-encrypted in the changer's session and fanned out once per server, with
  the cards (device list, server, a token that member issued) that let every member write
  to every other. A member receives each card once: when the group is created or it is
  added (every card), or when another member is added (that member's card). So creating a
  group of *n* devices costs the admin *n* small Olm room keys plus one state upload per
  server, not *n* copies of every card. Removed members get the new state over Olm. The
  server never sees a name or a member list.
* **Queue.** Every send goes through client/group_outbox.py, which retries it until it is
  stored, in order and exactly once.
* **Keys.** Each sending device has one outbound Megolm session per group. Before sending
  it hands the session key (``RoomKey``, over Olm) to every member device that does not
  have it yet — at the current index, so a member added later reads nothing older. It
  starts a new session when a device that had the key is no longer a recipient (a member
  removed or left, a device revoked), after ``ROTATE_AFTER_MESSAGES`` messages or after
  ``ROTATE_AFTER_MS``: a removed member reads nothing sent after its removal.
* **Messages.** One Megolm ciphertext (``GroupBox``) is uploaded once per server in a
  ``Fanout`` frame listing every recipient device with the token of its user; the server
  stores one entry per device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import msgspec

from samizdat.client import records as rec
from samizdat.client.connection import now_ms
from samizdat.client.peers import (
    Peer,
    call_own,
    current_devices,
    own_peer,
    peer_from_card,
    send_controls,
    verified_descriptor,
    verified_list,
)
from samizdat.crypto.megolm import MegolmOutbound
from samizdat.errors import LocalError, NotFound, RemoteError
from samizdat.protocol import frames
from samizdat.protocol.actions import MessageAction
from samizdat.protocol.blobs import Attachment
from samizdat.protocol.control import (
    GroupCard,
    GroupText,
    GroupUpdate,
    RoomKey,
    encode_group_text,
)
from samizdat.protocol.descriptor import SignedDescriptor
from samizdat.protocol.groups import (
    GROUP_STATE_CONTEXT,
    GroupMember,
    GroupState,
    SignedGroupState,
    check_state,
    decode_group_state,
    encode_group_state,
)
from samizdat.protocol.keys import DeviceKeys
from samizdat.protocol.links import ContactCard

if TYPE_CHECKING:
    from samizdat.client.app import Client

__all__ = [
    "ROTATE_AFTER_MESSAGES",
    "ROTATE_AFTER_MS",
    "outbound_is_fresh",
    "GroupInfo",
    "MemberInfo",
    "GroupHistoryItem",
    "SendStats",
    "create",
    "add",
    "remove",
    "leave",
    "rename",
    "promote",
    "members",
    "list_groups",
    "send",
    "history",
    "member_peers",
    "GroupRecord",
    "InboundRecord",
]

log = logging.getLogger(__name__)

ROTATE_AFTER_MESSAGES: Final = 100
ROTATE_AFTER_MS: Final = 7 * 24 * 3600 * 1000
#: Bytes of cards and state per state plaintext: with its fields it pads to 64 KiB at most.
_PART_BYTES: Final = 60_000
_TEXT_OVERHEAD: Final = 200
#: Peers written to at once when sharing keys.
_PARALLEL: Final = 16


# -- records ------------------------------------------------------------------------------


class GroupRecord(msgspec.Struct):
    state: SignedGroupState
    #: How to reach each member, by user key (verified on receipt).
    cards: list[ContactCard]
    name: str
    #: We were removed or left: nothing more is sent or accepted.
    gone: bool = False


class OutboundRecord(msgspec.Struct):
    pickle: str
    created_at: int
    count: int
    #: Identity keys of the devices that hold this session's key.
    shared: list[bytes]


class InboundRecord(msgspec.Struct):
    pickle: str
    group_id: bytes
    sender_user: bytes
    sender_identity: bytes


class GroupHistoryRecord(msgspec.Struct):
    author: bytes
    direction: str
    text: str
    msg_id: bytes
    sent_at: int
    received_at: int


@dataclass(frozen=True)
class GroupInfo:
    name: str
    members: int
    admin: bool
    active: bool


@dataclass(frozen=True)
class MemberInfo:
    name: str
    admin: bool
    you: bool


@dataclass(frozen=True)
class GroupHistoryItem:
    author: str
    direction: str
    text: str = field(repr=False)
    id: str = field(repr=False)
    sent_at: int = 0
    received_at: int = 0


@dataclass(frozen=True)
class SendStats:
    """What one group send cost (for bench/groups.py)."""

    msg_id: str
    devices: int
    room_keys_sent: int
    #: Bytes of the Deposit frames that carried the room keys (Olm, one per device).
    key_bytes: int
    #: Bytes of the Fanout frames (the Megolm body once per frame, plus the device list).
    message_bytes: int
    rotated: bool
    #: The fanned-out entry body (for tests that try to open it with other keys).
    body: bytes = field(repr=False, default=b"")


# -- store helpers ----------------------------------------------------------------------


def _load(client: Client, group_id: bytes) -> GroupRecord | None:
    raw = client._store.get("group", group_id)
    return None if raw is None else msgspec.msgpack.decode(raw, type=GroupRecord)


def _save(client: Client, group_id: bytes, record: GroupRecord) -> None:
    client._store.put("group", group_id, msgspec.msgpack.encode(record))
    client._store.put("gname", record.name, group_id)
    ids = _group_ids(client)
    if group_id not in ids:
        client._store.put("groups", "", msgspec.msgpack.encode([*ids, group_id]))


def _group_ids(client: Client) -> list[bytes]:
    raw = client._store.get("groups", "")
    return [] if raw is None else msgspec.msgpack.decode(raw, type=list[bytes])


def _by_name(client: Client, name: str) -> tuple[bytes, GroupRecord, GroupState]:
    group_id = client._store.get("gname", name.strip())
    record = None if group_id is None else _load(client, group_id)
    if group_id is None or record is None or record.name != name.strip():
        raise NotFound("no group with this name")
    return group_id, record, decode_group_state(record.state)


def _unique_group_name(client: Client, wanted: str, group_id: bytes) -> str:
    base = "".join(c for c in wanted if ord(c) >= 32).strip()[:60] or "group"
    name, n = base, 1
    while True:
        held = client._store.get("gname", name)
        if held is None or held == group_id:
            return name
        other = _load(client, held)
        if other is None or other.name != name:
            return name
        n += 1
        name = f"{base}-{n}"


def _sign(client: Client, state: GroupState) -> SignedGroupState:
    check_state(state)
    body = encode_group_state(state)
    return SignedGroupState(
        body=body,
        signer=client.own_user_key,
        signature=client._user_key.sign(GROUP_STATE_CONTEXT, body),
    )


def _card_user(card: ContactCard) -> bytes:
    return verified_list(card.devices).user_key


def _member_name(client: Client, record: GroupRecord, user_key: bytes) -> str:
    if user_key == client.own_user_key:
        return client.name
    cid = client._store.get("user", user_key)
    if cid is not None:
        return client._contact(cid).name
    for card in record.cards:
        if _card_user(card) == user_key:
            return card.name or user_key.hex()[:8]
    return user_key.hex()[:8]


def _peer_of(client: Client, card: ContactCard) -> Peer:
    return peer_from_card(card, verified_descriptor(card.server).server_key)


def _recipients(
    client: Client, record: GroupRecord, state: GroupState
) -> list[tuple[Peer, list[DeviceKeys]]]:
    """Every member device but this one: members by their card, our devices by self token."""
    own_key = client._own_identity_key()
    members = set(state.user_keys())
    out: list[tuple[Peer, list[DeviceKeys]]] = []
    for card in record.cards:
        user = _card_user(card)
        if user == client.own_user_key or user not in members:
            continue
        peer = _peer_of(client, card)
        out.append((peer, current_devices(client, peer)))
    own = own_peer(client)
    if own is not None:
        mine = [d for d in current_devices(client, own) if d.identity_key != own_key]
        if mine:
            out.append((own, mine))
    return out


def member_peers(client: Client) -> list[Peer]:
    """Every member of every group we are in (to tell them about our devices)."""
    peers: list[Peer] = []
    for group_id in _group_ids(client):
        record = _load(client, group_id)
        if record is None or record.gone:
            continue
        for card in record.cards:
            if _card_user(card) != client.own_user_key:
                with contextlib.suppress(RemoteError):
                    peers.append(_peer_of(client, card))
    return peers


# -- changing a group --------------------------------------------------------------------


async def _own_card(client: Client) -> ContactCard:
    """Our card for a group: our devices, our server and a token registered for it."""
    token = secrets.token_bytes(32)
    await call_own(client, frames.AddToken(rid=0, token=token), frames.Ok)
    return ContactCard(
        devices=client._identity.devices,
        server=client._identity.server,
        token=token,
        name=client.name,
    )


def _contact_card(client: Client, name: str) -> ContactCard:
    contact = client._contact_by_name(name)
    if contact.state == rec.ContactState.BLOCKED:
        raise LocalError("this contact is blocked")
    return ContactCard(
        devices=contact.devices, server=contact.server, token=contact.token, name=contact.name
    )


def _state_texts(
    group_id: bytes, signed: SignedGroupState | None, cards: Sequence[ContactCard]
) -> list[GroupText]:
    """A state change as Megolm plaintexts: the state in the first, cards packed after it.

    Each plaintext stays under ``_PART_BYTES`` (one padding bucket); a server descriptor is
    carried once per part, not once per card.
    """
    texts: list[GroupText] = []
    servers: list[SignedDescriptor] = []
    index: dict[bytes, int] = {}
    part: list[GroupCard] = []
    size = _TEXT_OVERHEAD + (len(signed.body) if signed is not None else 0)

    def close() -> None:
        texts.append(
            GroupText(
                group_id=group_id,
                msg_id=secrets.token_bytes(16),
                sent_at=now_ms(),
                text="",
                state=signed if not texts else None,
                servers=list(servers),
                cards=list(part),
            )
        )

    for card in cards:
        server_id = card.server.signature
        extra = 0 if server_id in index else len(msgspec.msgpack.encode(card.server))
        group_card = GroupCard(devices=card.devices, server=0, token=card.token, name=card.name)
        grows = len(msgspec.msgpack.encode(group_card)) + extra
        if part and size + grows > _PART_BYTES:
            close()
            servers, index, part, size = [], {}, [], _TEXT_OVERHEAD
            extra = len(msgspec.msgpack.encode(card.server))
            grows = len(msgspec.msgpack.encode(group_card)) + extra
        if server_id not in index:
            index[server_id] = len(servers)
            servers.append(card.server)
        part.append(msgspec.structs.replace(group_card, server=index[server_id]))
        size += grows
    if part or not texts:
        close()
    return texts


async def _publish(
    client: Client,
    group_id: bytes,
    texts: Sequence[GroupText],
    *,
    only: Sequence[bytes] | None = None,
    notice_to: Sequence[ContactCard] = (),
    notice: SignedGroupState | None = None,
    expires_at: int | None = None,
) -> SendStats:
    """Queue a group send (client/group_outbox.py) and deliver the queue."""
    from samizdat.client import group_outbox

    intent = group_outbox.Intent(
        key=group_outbox.new_key(),
        group_id=group_id,
        texts=[encode_group_text(t) for t in texts],
        only=None if only is None else list(only),
        notice=notice,
        notice_to=list(notice_to),
        expires_at=expires_at,
    )
    group_outbox.enqueue(client, intent)
    done, stuck = await group_outbox.deliver(client)
    if intent.key not in done:
        # Ours failed, or an older send to this group did: it stays queued.
        raise stuck[group_id]
    return done[intent.key]


async def flush(client: Client) -> int:
    """Deliver group sends queued by earlier calls that failed; returns how many went out.

    Raises:
        ConnectError, ServerRefused: the oldest still fails (it and later ones stay queued).
    """
    from samizdat.client import group_outbox

    return len(await group_outbox.flush(client))


async def _gather(
    client: Client,
    targets: Sequence[tuple[Peer, list[DeviceKeys] | None]],
    controls: Sequence[GroupUpdate | RoomKey],
) -> int:
    semaphore = asyncio.Semaphore(_PARALLEL)

    async def one(peer: Peer, devices: list[DeviceKeys] | None) -> int:
        async with semaphore:
            return await send_controls(client, peer, controls, devices)

    sizes = await asyncio.gather(*(one(p, d) for p, d in targets))
    return sum(sizes)


async def create(client: Client, name: str, member_names: Sequence[str]) -> str:
    """Create a group with us as its admin; returns its local name."""
    from samizdat.client.devices import ensure_self_token

    await ensure_self_token(client)
    group_id = secrets.token_bytes(16)
    cards = [await _own_card(client)]
    members = [GroupMember(user_key=client.own_user_key, admin=True)]
    for member in member_names:
        card = _contact_card(client, member)
        if _card_user(card) not in {m.user_key for m in members}:
            cards.append(card)
            members.append(GroupMember(user_key=_card_user(card)))
    state = GroupState(group_id=group_id, version=1, name=name.strip(), members=members)
    signed = _sign(client, state)
    with client._store.locked():
        record = GroupRecord(
            state=signed, cards=cards, name=_unique_group_name(client, state.name, group_id)
        )
        _save(client, group_id, record)
    # Every member device gets the room key over Olm, then the state and every card once,
    # Megolm-encrypted and fanned out by the server (protocol §10.2).
    await _publish(client, group_id, _state_texts(group_id, signed, cards))
    return record.name


async def _change(
    client: Client,
    name: str,
    build: Callable[[GroupState, GroupRecord], tuple[GroupState, list[ContactCard]]],
    *,
    admin: bool = True,
) -> tuple[GroupRecord, list[Peer]]:
    group_id, record, state = _by_name(client, name)
    if record.gone:
        raise LocalError("you are no longer in this group")
    if admin and not state.is_admin(client.own_user_key):
        raise LocalError("only a group admin can do this")
    new, cards = build(state, record)
    signed = _sign(client, msgspec.structs.replace(new, version=state.version + 1))
    departed = [
        _peer_of(client, c)
        for c in record.cards
        if _card_user(c) in set(state.user_keys()) - set(new.user_keys())
        and _card_user(c) != client.own_user_key
    ]
    with client._store.locked():
        record.state = signed
        record.cards = cards
        _save(client, group_id, record)
    return record, departed


async def add(client: Client, name: str, contact_names: Sequence[str]) -> None:
    """Add contacts to a group (admins only). They read nothing sent before."""

    def build(state: GroupState, record: GroupRecord) -> tuple[GroupState, list[ContactCard]]:
        members, cards = list(state.members), list(record.cards)
        for contact in contact_names:
            card = _contact_card(client, contact)
            user = _card_user(card)
            if state.member(user) is None and all(m.user_key != user for m in members):
                members.append(GroupMember(user_key=user))
                cards = [c for c in cards if _card_user(c) != user] + [card]
        return msgspec.structs.replace(state, members=members), cards

    _, _, old = _by_name(client, name)
    record, _ = await _change(client, name, build)
    group_id = old.group_id
    # New by membership, not by card: a member removed earlier may still have a card here.
    new_users = [u for u in decode_group_state(record.state).user_keys() if old.member(u) is None]
    new_cards = [c for c in record.cards if _card_user(c) in set(new_users)]
    # Members already in: the new state and the new members' cards only (a delta).
    await _publish(
        client,
        group_id,
        _state_texts(group_id, record.state, new_cards),
        only=[u for u in decode_group_state(record.state).user_keys() if u not in new_users],
    )
    # The new members: every card, once, at the current Megolm index (nothing older).
    if new_users:
        await _publish(
            client, group_id, _state_texts(group_id, record.state, record.cards), only=new_users
        )


async def remove(client: Client, name: str, contact_names: Sequence[str]) -> None:
    """Remove members (admins only); our next message uses a new Megolm session."""
    gone = {client._contact_by_name(n).user_key for n in contact_names}
    if client.own_user_key in gone:
        raise LocalError("use `group leave` to leave a group")

    def build(state: GroupState, record: GroupRecord) -> tuple[GroupState, list[ContactCard]]:
        members = [m for m in state.members if m.user_key not in gone]
        return msgspec.structs.replace(state, members=members), record.cards

    _, before, old = _by_name(client, name)
    departed = [
        c for c in before.cards if _card_user(c) in gone and old.member(_card_user(c)) is not None
    ]
    record, _ = await _change(client, name, build)
    # The removed members learn over Olm that they were removed, and nothing after; the
    # others get the state in a new Megolm session (their removed devices held the old one).
    await _publish(
        client,
        old.group_id,
        _state_texts(old.group_id, record.state, []),
        notice=record.state,
        notice_to=departed,
    )


async def promote(client: Client, name: str, contact_names: Sequence[str]) -> None:
    """Make members admins (admins only)."""
    users = {client._contact_by_name(n).user_key for n in contact_names}

    def build(state: GroupState, record: GroupRecord) -> tuple[GroupState, list[ContactCard]]:
        if any(state.member(u) is None for u in users):
            raise LocalError("only members can become admins")
        members = [GroupMember(m.user_key, m.admin or m.user_key in users) for m in state.members]
        return msgspec.structs.replace(state, members=members), record.cards

    record, _ = await _change(client, name, build)
    group_id = decode_group_state(record.state).group_id
    await _publish(client, group_id, _state_texts(group_id, record.state, []))


async def rename(client: Client, name: str, new_name: str) -> str:
    new_name = new_name.strip()
    if not new_name or len(new_name) > 64:
        raise LocalError("a group name must be 1 to 64 characters")

    def build(state: GroupState, record: GroupRecord) -> tuple[GroupState, list[ContactCard]]:
        return msgspec.structs.replace(state, name=new_name), record.cards

    record, _ = await _change(client, name, build)
    group_id = decode_group_state(record.state).group_id
    with client._store.locked():
        client._store.delete("gname", record.name)
        record.name = _unique_group_name(client, new_name, group_id)
        _save(client, group_id, record)
    await _publish(client, group_id, _state_texts(group_id, record.state, []))
    return record.name


async def leave(client: Client, name: str) -> None:
    """Leave a group; if we were its last admin, the first other member becomes admin."""

    def build(state: GroupState, record: GroupRecord) -> tuple[GroupState, list[ContactCard]]:
        members = [m for m in state.members if m.user_key != client.own_user_key]
        if not members:
            raise LocalError("you are the only member: nothing to leave")
        if not any(m.admin for m in members):
            members[0] = GroupMember(user_key=members[0].user_key, admin=True)
        return msgspec.structs.replace(state, members=members), record.cards

    group_id, record, state = _by_name(client, name)
    if not state.is_admin(client.own_user_key):
        # A member may sign its own departure: exactly the others, nothing else changed.
        members = [m for m in state.members if m.user_key != client.own_user_key]
        signed = _sign(
            client, msgspec.structs.replace(state, members=members, version=state.version + 1)
        )
        record.state = signed
    else:
        record, _ = await _change(client, name, build)
    with client._store.locked():
        record.gone = True
        _save(client, group_id, record)
    # The remaining members and our other devices learn it from our Megolm session.
    await _publish(client, group_id, _state_texts(group_id, record.state, []))


def members(client: Client, name: str) -> list[MemberInfo]:
    _, record, state = _by_name(client, name)
    return [
        MemberInfo(
            name=_member_name(client, record, m.user_key),
            admin=m.admin,
            you=m.user_key == client.own_user_key,
        )
        for m in state.members
    ]


def list_groups(client: Client) -> list[GroupInfo]:
    out: list[GroupInfo] = []
    for group_id in _group_ids(client):
        record = _load(client, group_id)
        if record is None:
            continue
        state = decode_group_state(record.state)
        out.append(
            GroupInfo(
                name=record.name,
                members=len(state.members),
                admin=state.is_admin(client.own_user_key),
                active=not record.gone,
            )
        )
    return sorted(out, key=lambda g: g.name)


# -- sending -----------------------------------------------------------------------------


def outbound_is_fresh(held: OutboundRecord, recipients: set[bytes], now: int) -> bool:
    """Whether the held outbound session may still be used for ``recipients``.

    No: after ROTATE_AFTER_MESSAGES messages or ROTATE_AFTER_MS, or once a device that
    holds its key is no longer a recipient (removed member, revoked device).
    """
    return (
        held.count < ROTATE_AFTER_MESSAGES
        and now - held.created_at < ROTATE_AFTER_MS
        and set(held.shared) <= recipients
    )


def _outbound(
    client: Client, group_id: bytes, recipients: set[bytes]
) -> tuple[MegolmOutbound, OutboundRecord, bool]:
    raw = client._store.get("gout", group_id)
    key = client._store.pickle_key
    if raw is not None:
        held = msgspec.msgpack.decode(raw, type=OutboundRecord)
        if outbound_is_fresh(held, recipients, now_ms()):
            return MegolmOutbound.from_pickle(held.pickle, key), held, False
    session = MegolmOutbound.create()
    record = OutboundRecord(pickle=session.pickle(key), created_at=now_ms(), count=0, shared=[])
    return session, record, True


async def send(
    client: Client,
    name: str,
    text: str,
    action: MessageAction | None = None,
    attachment: Attachment | None = None,
) -> SendStats:
    """Send ``text`` to every member device; returns once every server stored it.

    The message is queued first (client/group_outbox.py): if a server cannot be reached it
    stays queued behind any older group send, and the next group operation (or
    :func:`flush`) delivers it, exactly once.

    Raises:
        ConnectError, ServerRefused: not delivered yet (queued).
    """
    group_id, record, state = _by_name(client, name)
    if record.gone or state.member(client.own_user_key) is None:
        raise LocalError("you are no longer in this group")
    from samizdat.client import timers

    # A disappearing-message timer of the group stamps the expiry (client/timers.py).
    action = timers.stamp(client, b"g" + group_id, action)
    message = GroupText(
        group_id=group_id,
        msg_id=secrets.token_bytes(16),
        sent_at=now_ms(),
        text=text,
        action=action,
        attachment=attachment,
    )
    expires_at = None if action is None else action.expires_at
    return await _publish(client, group_id, [message], expires_at=expires_at)


def _append(
    client: Client,
    group_id: bytes,
    author: bytes,
    direction: str,
    text: str,
    msg_id: bytes,
    sent_at: int,
) -> bool:
    seen = b"g" + author + msg_id
    if client._store.get("seen", seen) is not None:
        return False
    client._store.put("seen", seen, b"")
    client._store.append(
        "ghistory",
        group_id,
        msgspec.msgpack.encode(
            GroupHistoryRecord(
                author=author,
                direction=direction,
                text=text,
                msg_id=msg_id,
                sent_at=sent_at,
                received_at=now_ms(),
            )
        ),
    )
    return True


def _history_records(client: Client, group_id: bytes) -> list[GroupHistoryRecord]:
    records = [
        msgspec.msgpack.decode(v, type=GroupHistoryRecord)
        for v in client._store.read_log("ghistory", group_id)
    ]
    # One order on every device: by the sender's time, ties by message id.
    return sorted(records, key=lambda r: (r.sent_at, r.msg_id))


def history(client: Client, name: str) -> list[GroupHistoryItem]:
    group_id, record, _ = _by_name(client, name)
    return [
        GroupHistoryItem(
            author=_member_name(client, record, r.author),
            direction=r.direction,
            text=r.text,
            id=r.msg_id.hex(),
            sent_at=r.sent_at,
            received_at=r.received_at,
        )
        for r in _history_records(client, group_id)
    ]
