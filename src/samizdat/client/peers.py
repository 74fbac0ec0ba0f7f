"""Reaching any user's devices over Olm, and the newest device list we know of each user.

Shared by client/devices.py, client/groups.py and client/verification.py. A :class:`Peer`
is what it takes to write to a user (their verified device list, home server and a token
they issued); contacts, group members and our own user are all peers.

Device lists (protocol §3.3, §10.1): whenever a verified list arrives — an invite, a
card, a ``DeviceListUpdate``, a ``KeyBundle`` — :func:`remember_devices` keeps it if its
version is the highest seen for that user key. Messages then go to every device in the
newest list, so a revoked device gets nothing new and a linked one is included.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import msgspec

from samizdat.client import records as rec
from samizdat.client.connection import now_ms
from samizdat.client.messaging import seal_to_device
from samizdat.crypto.olm import OlmSession
from samizdat.crypto.padding import pad
from samizdat.errors import ConnectError, ErrorCode, ProtocolError
from samizdat.protocol import frames, limits
from samizdat.protocol.control import Control, encode_control
from samizdat.protocol.descriptor import Descriptor, SignedDescriptor, open_descriptor
from samizdat.protocol.envelope import Payload, PayloadKind, encode_struct
from samizdat.protocol.keys import (
    DeviceKeys,
    DeviceList,
    SignedDeviceList,
    decode_device_list,
    verify_signed_key,
)
from samizdat.protocol.links import ContactCard

if TYPE_CHECKING:
    from samizdat.client.app import Client

__all__ = [
    "Peer",
    "peer_from_card",
    "peer_from_contact",
    "own_peer",
    "remember_devices",
    "current_devices",
    "control_payload",
    "send_payloads",
    "claim_missing",
    "seal_padded",
    "other_devices",
    "deposit",
    "send_controls",
    "call_own",
    "call_on",
    "verified_list",
    "verified_descriptor",
]

#: Verification results by the exact signed bytes: the same bytes always verify the same
#: way, and a group send re-reads every member's list and server (protocol §10.3).
_CACHE_SIZE = 8192
_lists: OrderedDict[bytes, DeviceList] = OrderedDict()
_descriptors: OrderedDict[bytes, Descriptor] = OrderedDict()


def verified_list(signed: SignedDeviceList) -> DeviceList:
    """``decode_device_list`` with a bounded cache. Raises ProtocolError like it."""
    key = signed.signature + signed.body
    found = _lists.get(key)
    if found is None:
        found = decode_device_list(signed)
        _lists[key] = found
        if len(_lists) > _CACHE_SIZE:
            _lists.popitem(last=False)
    return found


def verified_descriptor(signed: SignedDescriptor) -> Descriptor:
    """``open_descriptor`` at the current time, with a bounded cache of the signature check."""
    key = signed.signature + signed.body
    found = _descriptors.get(key)
    if found is None or found.expires_at <= now_ms():
        found = open_descriptor(signed, now_ms())
        _descriptors[key] = found
        if len(_descriptors) > _CACHE_SIZE:
            _descriptors.popitem(last=False)
    return found


_F = TypeVar("_F", bound=frames.ServerFrame)


async def call_own(client: Client, frame: frames.ClientFrame, expect: type[_F]) -> _F:
    """A request on our own server, logged in; once more on a fresh connection if it broke."""
    for attempt in range(2):
        conn = await client._own()
        try:
            return await conn.call(frame, expect)
        except ConnectError:
            await client._drop(client._identity.server_key)
            if attempt:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def call_on(client: Client, peer: Peer, frame: frames.ClientFrame, expect: type[_F]) -> _F:
    """A request on ``peer``'s server; once more on a fresh connection if it broke."""
    for attempt in range(2):
        conn = await client._connection(peer.server_key, peer.server)
        try:
            return await conn.call(frame, expect)
        except ConnectError:
            await client._drop(peer.server_key)
            if attempt:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class Peer:
    user_key: bytes = field(repr=False)
    devices: SignedDeviceList = field(repr=False)
    server_key: bytes = field(repr=False)
    server: SignedDescriptor = field(repr=False)
    token: bytes = field(repr=False)


def peer_from_card(card: ContactCard, server_key: bytes) -> Peer:
    user_key = verified_list(card.devices).user_key
    return Peer(user_key, card.devices, server_key, card.server, card.token)


def peer_from_contact(contact: rec.Contact) -> Peer:
    return Peer(
        contact.user_key, contact.devices, contact.server_key, contact.server, contact.token
    )


def own_peer(client: Client) -> Peer | None:
    """Our own user as a peer (for our other devices), once we hold a self token."""
    identity = client._identity
    if identity.self_token is None:
        return None
    return Peer(
        client.own_user_key,
        identity.devices,
        identity.server_key,
        identity.server,
        identity.self_token,
    )


def remember_devices(client: Client, signed: SignedDeviceList) -> DeviceList:
    """Verify ``signed`` and keep it if it is the newest list of its user.

    Also updates the contact record of that user, re-indexing its identity keys so that a
    device no longer listed is no longer recognised as the contact (its keys are rejected).

    Raises:
        ProtocolError: the list does not verify.
    """
    new = decode_device_list(signed)
    store = client._store
    with store.locked():
        raw = store.get("udl", new.user_key)
        if raw is not None:
            held = decode_device_list(msgspec.msgpack.decode(raw, type=SignedDeviceList))
            if held.version >= new.version:
                return held
        store.put("udl", new.user_key, msgspec.msgpack.encode(signed))
        cid = store.get("user", new.user_key)
        if cid is not None:
            contact = client._contact(cid)
            if new.version > contact.device_list_version:
                for old in decode_device_list(contact.devices).devices:
                    store.delete("ident", old.identity_key)
                contact.devices = signed
                contact.device_list_version = new.version
                client._save_contact(contact)
                client._index_contact(contact)
    return new


def current_devices(client: Client, peer: Peer) -> list[DeviceKeys]:
    """Every device of the newest list we hold for ``peer``'s user."""
    listed = verified_list(peer.devices)
    raw = client._store.get("udl", peer.user_key)
    if raw is not None:
        held = verified_list(msgspec.msgpack.decode(raw, type=SignedDeviceList))
        if held.version > listed.version:
            listed = held
    return list(listed.devices)


def control_payload(control: Control) -> Payload:
    return Payload(
        msg_id=secrets.token_bytes(16),
        sent_at=now_ms(),
        kind=PayloadKind.CONTROL,
        control=encode_control(control),
    )


async def _claim(client: Client, peer: Peer, device: DeviceKeys) -> bytes:
    bundle = await call_on(
        client,
        peer,
        frames.ClaimKeys(rid=0, token=peer.token, device_id=device.device_id),
        frames.KeyBundle,
    )
    if bundle.device_id != device.device_id:
        raise ProtocolError(ErrorCode.BAD_FRAME, "key bundle for another device")
    verify_signed_key(device.signing_key, bundle.key)
    # The bundle carries the user's current list: pick up a newer one (§10.1).
    if decode_device_list(bundle.devices).user_key == peer.user_key:
        remember_devices(client, bundle.devices)
    return bundle.key.key


async def claim_missing(
    client: Client, peer: Peer, devices: Sequence[DeviceKeys]
) -> dict[bytes, bytes]:
    """One-time keys of the ``devices`` we hold no Olm session with, by identity key."""
    missing = [d for d in devices if client._store.get("session", d.identity_key) is None]
    return dict(
        zip(
            [d.identity_key for d in missing],
            await asyncio.gather(*(_claim(client, peer, d) for d in missing)),
            strict=True,
        )
    )


def seal_padded(
    client: Client,
    devices: Sequence[DeviceKeys],
    claimed: dict[bytes, bytes],
    padded: Sequence[bytes],
    expires_at: int | None = None,
) -> list[frames.Envelope]:
    """Olm-encrypt and seal each padded payload for each device (call under the store lock).

    A device with no session and no key in ``claimed`` (it appeared since the claim) is
    skipped: it gets nothing, as a device listed after a send would.
    """
    envelopes: list[frames.Envelope] = []
    account = client._load_account()
    for device in devices:
        sessions: list[OlmSession] = client._load_sessions(device.identity_key)
        if not sessions:
            key = claimed.get(device.identity_key)
            if key is None:
                continue
            sessions = [account.create_outbound_session(device.identity_key, key)]
        for body in padded:
            olm_type, olm = sessions[0].encrypt(body)
            envelopes.append(
                frames.Envelope(
                    device_id=device.device_id,
                    msg_id=secrets.token_bytes(16),
                    body=seal_to_device(device, account.identity_key, olm_type, olm),
                    expires_at=expires_at,
                )
            )
        client._save_sessions(device.identity_key, sessions)
    return envelopes


def other_devices(client: Client, devices: Sequence[DeviceKeys]) -> list[DeviceKeys]:
    """``devices`` without this device itself."""
    own = client._own_identity_key()
    return [d for d in devices if d.identity_key != own]


async def deposit(client: Client, peer: Peer, envelopes: Sequence[frames.Envelope]) -> int:
    """Deposit ``envelopes`` with ``peer.token``, in frames of the largest allowed size.

    A retry reuses the envelope ids, so the server stores one copy. Returns the bytes sent.
    """
    uploaded = 0
    step = limits.MAX_ENVELOPES_PER_DEPOSIT
    for i in range(0, len(envelopes), step):
        frame = frames.Deposit(rid=0, token=peer.token, envelopes=list(envelopes[i : i + step]))
        await call_on(client, peer, frame, frames.DepositOk)
        uploaded += len(frames.encode(frame))
    return uploaded


async def send_payloads(
    client: Client,
    peer: Peer,
    devices: Sequence[DeviceKeys],
    payloads: Sequence[Payload],
    expires_at: int | None = None,
) -> int:
    """Olm-encrypt each payload for each device and deposit them with ``peer.token``.

    Not queued: for what may be lost (control messages that are asked again). Messages and
    message actions go through the durable 1:1 outbox (client/sending.py).
    ``expires_at`` (ms) makes the server delete the entries then (disappearing messages).
    Returns the bytes of the deposit frames uploaded.
    """
    devices = other_devices(client, devices)
    if not devices or not payloads:
        return 0
    claimed = await claim_missing(client, peer, devices)
    padded = [pad(encode_struct(payload)) for payload in payloads]
    with client._store.locked():
        envelopes = seal_padded(client, devices, claimed, padded, expires_at)
    return await deposit(client, peer, envelopes)


async def send_controls(
    client: Client,
    peer: Peer,
    controls: Sequence[Control],
    devices: Sequence[DeviceKeys] | None = None,
) -> int:
    """Send control messages to every current device of ``peer`` (or to ``devices``)."""
    targets = current_devices(client, peer) if devices is None else list(devices)
    return await send_payloads(client, peer, targets, [control_payload(c) for c in controls])
