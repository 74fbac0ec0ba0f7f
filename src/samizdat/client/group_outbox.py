"""Group traffic through a durable queue: messages, state changes, room keys (protocol §10.3).

Every group send — a message, a state change (client/groups.py), a removal notice — is
first written to the store as an :class:`Intent`, then :func:`flush` delivers intents
oldest first, stopping at the first failure so that nothing overtakes an older intent.
An intent moves through two phases:

1. **Unsealed.** The Megolm room key is shared over Olm with every recipient device that
   lacks it (batched: one ``deposit`` per member user, ``_PARALLEL`` at once). A failure
   here leaves the intent as it was; the retry shares again with whoever still lacks the
   key (a duplicate ``RoomKey`` is ignored by its receiver).
2. **Sealed.** The plaintexts are Megolm-encrypted once and the resulting ``fanout``
   frames are saved in the intent in the same store transaction as the Megolm ratchet.
   A retry resends those exact frames: their ``msg_id`` makes the server store each entry
   once (protocol §5.3.10), and receivers deduplicate by (sender, ``msg_id``) anyway, so a
   message is shown exactly once however often it is resent.

Once every frame is stored, the intent is deleted and a message enters our history.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from samizdat.client.connection import now_ms
from samizdat.client.groups import (
    SendStats,
    _append,
    _load,
    _outbound,
    _peer_of,
    _recipients,
)
from samizdat.client.messaging import seal_to_device
from samizdat.client.peers import Peer, _claim, call_on, control_payload, send_controls
from samizdat.crypto.padding import pad
from samizdat.errors import ConnectError, ProtocolError, RemoteError, ServerRefused
from samizdat.protocol import frames, limits
from samizdat.protocol.control import (
    GROUP_BOX_VERSION,
    GroupBox,
    GroupText,
    GroupUpdate,
    RoomKey,
    encode_group_box,
)
from samizdat.protocol.descriptor import SignedDescriptor
from samizdat.protocol.envelope import Payload, encode_struct
from samizdat.protocol.groups import SignedGroupState, decode_group_state
from samizdat.protocol.keys import DeviceKeys
from samizdat.protocol.links import ContactCard

if TYPE_CHECKING:
    from samizdat.client.app import Client

__all__ = ["Intent", "enqueue", "flush", "deliver", "pending", "share", "fanout_frames", "new_key"]

log = logging.getLogger(__name__)

#: Key claims and deposits in flight at once when sharing a room key.
_PARALLEL = 32

_QUEUE = "gqueue"
#: Refusals after which resending the same frames can never succeed.
_PERMANENT = frozenset(
    {"bad_token", "unknown_device", "envelope_too_large", "bad_frame", "too_many_envelopes"}
)


class Sealed(msgspec.Struct):
    """A fan-out frame ready to resend unchanged, and the server it goes to."""

    server_key: bytes
    server: SignedDescriptor
    frame: frames.Fanout


class Intent(msgspec.Struct):
    #: Store key: the time it was queued and a random tail (the queue is sorted by it).
    key: bytes
    group_id: bytes
    #: Plaintexts (``GroupText`` msgpack) to Megolm-encrypt, in order.
    texts: list[bytes] = []
    #: Only these users' devices receive ``texts`` (None: every member device).
    only: list[bytes] | None = None
    #: A state sent over Olm (not Megolm) to ``notice_to``: members just removed.
    notice: SignedGroupState | None = None
    notice_to: list[ContactCard] = []
    #: The server deletes the fanned-out entries then (a disappearing message).
    expires_at: int | None = None
    #: Set once the texts are encrypted: the frames to (re)send.
    sealed: list[Sealed] | None = None
    #: What this intent cost, filled in when sealed (for SendStats).
    devices: int = 0
    room_keys_sent: int = 0
    key_bytes: int = 0
    rotated: bool = False
    body: bytes = b""


def new_key() -> bytes:
    return now_ms().to_bytes(8, "big") + secrets.token_bytes(8)


def enqueue(client: Client, intent: Intent) -> None:
    with client._store.locked():
        client._store.put(_QUEUE, intent.key, msgspec.msgpack.encode(intent))


def pending(client: Client) -> list[Intent]:
    """Queued intents, oldest first."""
    items = [msgspec.msgpack.decode(v, type=Intent) for v in client._store.values(_QUEUE)]
    return sorted(items, key=lambda i: i.key)


def drop_expired(client: Client, now: int) -> int:
    """Delete queued disappearing sends whose time is up (their text must not outlive it)."""
    with client._store.locked():
        gone = [i for i in pending(client) if i.expires_at is not None and i.expires_at <= now]
        for intent in gone:
            client._store.delete(_QUEUE, intent.key)
    return len(gone)


async def flush(client: Client) -> dict[bytes, SendStats]:
    """Deliver queued intents, oldest first; stats by intent key.

    Order is kept per group: once an intent of a group fails, that group's later intents
    wait for the next flush, while other groups (perhaps on other servers) go on.

    Raises:
        ConnectError, ServerRefused: the first failure, after every group was tried; the
            failed intents and those behind them stay queued (except refusals that can
            never succeed, which are dropped).
    """
    done, stuck = await deliver(client)
    if stuck:
        raise next(iter(stuck.values()))
    return done


async def deliver(client: Client) -> tuple[dict[bytes, SendStats], dict[bytes, RemoteError]]:
    """:func:`flush` without raising: stats by intent key, and the failure by group id."""
    async with client.group_send_lock:
        return await _deliver_all(client)


async def _deliver_all(
    client: Client,
) -> tuple[dict[bytes, SendStats], dict[bytes, RemoteError]]:
    done: dict[bytes, SendStats] = {}
    stuck: dict[bytes, RemoteError] = {}
    drop_expired(client, now_ms())
    for intent in pending(client):
        if intent.group_id in stuck:
            continue
        try:
            done[intent.key] = await _deliver(client, intent)
        except RemoteError as exc:
            stuck[intent.group_id] = exc
            if isinstance(exc, ServerRefused) and exc.code in _PERMANENT:
                # Resending the same frames can never succeed: drop it, or it would block
                # every later send to the group (as the 1:1 outbox does).
                log.info("dropped a queued group send the server refused (%s)", exc.code)
                with client._store.locked():
                    client._store.delete(_QUEUE, intent.key)
    return done, stuck


async def _seal(client: Client, intent: Intent) -> Intent:
    """Share the room key with devices that lack it, then encrypt and save the frames."""
    record = _load(client, intent.group_id)
    if record is None or not intent.texts:
        intent.sealed = []
        return intent
    state = decode_group_state(record.state)
    recipients = _recipients(client, record, state)
    all_keys = {d.identity_key for _, devices in recipients for d in devices}
    if intent.only is not None:
        only = set(intent.only)
        recipients = [(p, d) for p, d in recipients if p.user_key in only]
    with client._store.locked():
        session, out, rotated = _outbound(client, intent.group_id, all_keys)
        room_key = RoomKey(
            group_id=intent.group_id,
            session_id=session.session_id,
            session_key=session.session_key(),
        )
        if rotated:
            # Saved before any key leaves: a retry shares this same session, not another.
            client._store.put("gout", intent.group_id, msgspec.msgpack.encode(out))
    shared = set(out.shared)
    need = [
        (peer, [d for d in devices if d.identity_key not in shared]) for peer, devices in recipients
    ]
    need = [(peer, devices) for peer, devices in need if devices]
    key_bytes, reached = await share(client, need, [control_payload(room_key)])
    # A device the server would not give a key for (gone from its user's list) gets neither
    # the key nor the message (a fan-out naming it would be refused whole).
    missed = {d.identity_key for _, ds in need for d in ds} - reached
    if missed:
        recipients = [(p, [d for d in ds if d.identity_key not in missed]) for p, ds in recipients]
    with client._store.locked():
        bodies = [
            encode_group_box(
                GroupBox(
                    v=GROUP_BOX_VERSION,
                    session_id=session.session_id,
                    megolm=session.encrypt(pad(text)),
                )
            )
            for text in intent.texts
        ]
        out.pickle = session.pickle(client._store.pickle_key)
        out.count += len(intent.texts)
        out.shared = sorted(set(out.shared) | reached)
        client._store.put("gout", intent.group_id, msgspec.msgpack.encode(out))
        by_server: dict[bytes, list[tuple[Peer, list[DeviceKeys]]]] = {}
        for peer, devices in recipients:
            by_server.setdefault(peer.server_key, []).append((peer, devices))
        intent.sealed = [
            Sealed(server_key=targets[0][0].server_key, server=targets[0][0].server, frame=frame)
            for body in bodies
            for targets in by_server.values()
            for frame in fanout_frames(targets, body, intent.expires_at)
        ]
        intent.devices = len({d.identity_key for _, ds in recipients for d in ds})
        intent.room_keys_sent = len(reached)
        intent.key_bytes = key_bytes
        intent.rotated = rotated
        intent.body = bodies[-1]
        client._store.put(_QUEUE, intent.key, msgspec.msgpack.encode(intent))
    return intent


async def _deliver(client: Client, intent: Intent) -> SendStats:
    if intent.notice is not None:
        # Removed members first, each on its own: one that revoked its token or devices
        # must not stop the state from reaching those who stay.
        notice = GroupUpdate(state=intent.notice)
        for card in intent.notice_to:
            try:
                await send_controls(client, _peer_of(client, card), [notice])
            except (ServerRefused, ProtocolError) as exc:
                log.info("a removed member was not told (%s)", type(exc).__name__)
        intent.notice = None
        enqueue(client, intent)
    if intent.sealed is None:
        intent = await _seal(client, intent)
    assert intent.sealed is not None
    message_bytes = 0
    for sealed in intent.sealed:
        await _call(client, sealed)
        message_bytes += len(frames.encode(sealed.frame))
    msg_id = b""
    with client._store.locked():
        client._store.delete(_QUEUE, intent.key)
        for raw in intent.texts:
            text = msgspec.msgpack.decode(raw, type=GroupText)
            if text.state is None and not text.cards:
                msg_id = text.msg_id
                _sent(client, intent.group_id, text)
    return SendStats(
        msg_id=msg_id.hex(),
        devices=intent.devices,
        room_keys_sent=intent.room_keys_sent,
        key_bytes=intent.key_bytes,
        message_bytes=message_bytes,
        rotated=intent.rotated,
        body=intent.body,
    )


async def share(
    client: Client,
    targets: Sequence[tuple[Peer, Sequence[DeviceKeys]]],
    payloads: Sequence[Payload],
) -> tuple[int, set[bytes]]:
    """Olm-encrypt ``payloads`` for many devices of many users.

    Returns the bytes deposited and the identity keys of the devices they went to.

    Like ``peers.send_payloads`` per peer, but batched for a group of any size: missing
    one-time keys are claimed ``_PARALLEL`` at a time, every Olm encryption happens in one
    store transaction (one commit and one account load, not one per member), then the
    deposits go out ``_PARALLEL`` at a time, up to MAX_ENVELOPES_PER_DEPOSIT each. A device
    whose key the server refuses to hand out (gone from its list), or whose key does not
    verify, is skipped: it is not marked as holding the key, so a later send tries again.
    """
    own = client._own_identity_key()
    wanted = [(p, [d for d in ds if d.identity_key != own]) for p, ds in targets]
    wanted = [(p, ds) for p, ds in wanted if ds]
    if not wanted or not payloads:
        return 0, set()
    semaphore = asyncio.Semaphore(_PARALLEL)

    async def claim(peer: Peer, device: DeviceKeys) -> tuple[bytes, bytes | None]:
        async with semaphore:
            try:
                return device.identity_key, await _claim(client, peer, device)
            except ConnectError:
                raise
            except RemoteError as exc:  # refused, or a key that does not verify
                log.info("no key for a member device (%s); skipped", type(exc).__name__)
                return device.identity_key, None

    missing = [
        (p, d)
        for p, ds in wanted
        for d in ds
        if client._store.get("session", d.identity_key) is None
    ]
    claimed = dict(await asyncio.gather(*(claim(p, d) for p, d in missing)))
    deposits: list[tuple[Peer, frames.Deposit]] = []
    reached: set[bytes] = set()
    step = limits.MAX_ENVELOPES_PER_DEPOSIT
    with client._store.locked():
        account = client._load_account()
        for peer, devices in wanted:
            envelopes: list[frames.Envelope] = []
            for device in devices:
                sessions = client._load_sessions(device.identity_key)
                if not sessions:
                    one_time = claimed.get(device.identity_key)
                    if one_time is None:
                        continue
                    sessions = [account.create_outbound_session(device.identity_key, one_time)]
                for payload in payloads:
                    olm_type, olm = sessions[0].encrypt(pad(encode_struct(payload)))
                    body = seal_to_device(device, account.identity_key, olm_type, olm)
                    envelopes.append(
                        frames.Envelope(
                            device_id=device.device_id, msg_id=secrets.token_bytes(16), body=body
                        )
                    )
                client._save_sessions(device.identity_key, sessions)
                reached.add(device.identity_key)
            deposits += [
                (peer, frames.Deposit(rid=0, token=peer.token, envelopes=envelopes[i : i + step]))
                for i in range(0, len(envelopes), step)
            ]

    async def deposit(peer: Peer, frame: frames.Deposit) -> int:
        async with semaphore:
            await call_on(client, peer, frame, frames.DepositOk)
            return len(frames.encode(frame))

    return sum(await asyncio.gather(*(deposit(p, f) for p, f in deposits))), reached


def _sent(client: Client, group_id: bytes, text: GroupText) -> None:
    """A message of ours is stored on every server: our history, actions, attachment."""
    from samizdat.client import actions, attachments

    if text.action is None or text.action.is_message:
        _append(client, group_id, client.own_user_key, "out", text.text, text.msg_id, text.sent_at)
    actions.on_sent(client, b"g" + group_id, text.msg_id, text.sent_at, text.action, text.text)
    if text.attachment is not None:
        attachments.remember(client._store, text.msg_id, text.attachment)


async def _call(client: Client, sealed: Sealed) -> None:
    """One fan-out on its server; once more on a fresh connection if the old one broke."""
    for attempt in range(2):
        conn = await client._connection(sealed.server_key, sealed.server)
        try:
            await conn.call(sealed.frame, frames.DepositOk)
            return
        except ConnectError:
            await client._drop(sealed.server_key)
            if attempt:
                raise


def fanout_frames(
    targets: Sequence[tuple[Peer, list[DeviceKeys]]], body: bytes, expires_at: int | None = None
) -> list[frames.Fanout]:
    """Fan-out frames of at most MAX_FANOUT_DEVICES devices (one msg_id per frame)."""
    batches: list[list[frames.FanoutTarget]] = [[]]
    count = 0
    for peer, devices in targets:
        ids = [d.device_id for d in devices]
        if not ids:
            continue
        if count + len(ids) > limits.MAX_FANOUT_DEVICES:
            batches.append([])
            count = 0
        batches[-1].append(frames.FanoutTarget(token=peer.token, devices=ids))
        count += len(ids)
    return [
        frames.Fanout(
            rid=0, msg_id=secrets.token_bytes(16), body=body, targets=t, expires_at=expires_at
        )
        for t in batches
        if t
    ]
