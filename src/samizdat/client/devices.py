"""Linked devices: link, join, list, revoke, and keeping them in step (protocol §10.1).

Linking, in order (existing device E, new device N, E's home server S):

1. E registers a fresh token on S and shows a :class:`LinkCode` (link text and QR): S's
   descriptor, the token, E's device keys, the user key, E's SAS key and a secret.
2. N makes its Olm account, and a throw-away *rendezvous* device under a throw-away user
   key that it registers on S, so that it has a mailbox before it is in the user's list.
   It claims a key of E with the token and sends E a ``LinkRequest`` (Olm pre-key
   message): the secret, N's keys, its SAS key, the rendezvous device and a token for it.
3. Both show the SAS decimals derived from their two SAS keys; each user confirms they
   match. (The code came out of band, so a server that swapped keys is caught.)
4. E signs a new device list (version + 1) with the user key, registers it on S, and sends
   N, over the Olm session, a ``LinkGrant`` (user key, new list, name, self token), then
   its contacts, groups and recent history (``SyncItem``…, ``SyncDone``), into the
   rendezvous mailbox. N registers itself with the new list and is a device of the user.
5. E sends ``DeviceListUpdate`` to every contact, group member and its own devices.

Revoking signs a list without the device; S forgets it (no mailbox, no deposits, no
login) and peers drop its identity key, so anything it sends is rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from samizdat.client import records as rec
from samizdat.client.actions import on_sent_copy
from samizdat.client.attachments import remember as remember_attachment
from samizdat.client.connection import Connection, now_ms
from samizdat.client.messaging import (
    auth_proof,
    device_keys,
    open_entry,
    seal_to_device,
    sign_device_list,
    sign_one_time_key,
    verify_card,
)
from samizdat.client.msgstate import contact_conv, lasting
from samizdat.client.peers import (
    Peer,
    call_own,
    control_payload,
    own_peer,
    peer_from_contact,
    remember_devices,
    send_controls,
    send_payloads,
)
from samizdat.client.store import Store
from samizdat.crypto.olm import OlmAccount
from samizdat.crypto.padding import pad, unpad
from samizdat.crypto.sas import Sas, SasCode
from samizdat.crypto.sealing import SealingKey
from samizdat.crypto.signing import SigningKey
from samizdat.errors import ConnectError, DecryptionError, LocalError, NotFound, RemoteError
from samizdat.protocol import frames
from samizdat.protocol.actions import check_action
from samizdat.protocol.control import (
    DeviceListUpdate,
    LinkCode,
    LinkGrant,
    LinkRequest,
    SentCopy,
    SyncContact,
    SyncDone,
    SyncGroup,
    SyncHistory,
    SyncItem,
    decode_control,
    decode_link_code,
    encode_link_code,
)
from samizdat.protocol.descriptor import open_descriptor
from samizdat.protocol.envelope import PayloadKind, decode_payload, encode_struct
from samizdat.protocol.keys import DeviceKeys, decode_device_list, device_id_for
from samizdat.protocol.links import ContactCard
from samizdat.transport import TransportOptions

if TYPE_CHECKING:
    from samizdat.client.app import Client

__all__ = [
    "DeviceInfo",
    "LinkOffer",
    "Confirm",
    "own_device",
    "list_devices",
    "ensure_self_token",
    "start_link",
    "finish_link",
    "join",
    "revoke",
    "broadcast_devices",
    "on_own_payload",
    "apply_sync",
    "HISTORY_SYNC_LIMIT",
]

log = logging.getLogger(__name__)

#: Messages per conversation a new device receives from the one that links it.
HISTORY_SYNC_LIMIT = 50
#: Bytes of sync records per message (the padded payload must stay under 64 KiB).
_SYNC_BUDGET = 40_000
_LINK_INFO = "samizdat/link/v1"

#: Asks the user whether the two devices show the same code.
Confirm = Callable[[SasCode], Awaitable[bool]]


@dataclass(frozen=True)
class DeviceInfo:
    id: str = field(repr=False)
    current: bool


@dataclass
class LinkOffer:
    """An open ``devices link`` on the existing device (in memory only)."""

    code: str = field(repr=False)
    token: bytes = field(repr=False)
    secret: bytes = field(repr=False)
    sas: Sas = field(repr=False)
    requests: list[tuple[bytes, LinkRequest]] = field(default_factory=list, repr=False)


def own_device(client: Client) -> DeviceKeys:
    for device in decode_device_list(client._identity.devices).devices:
        if device.device_id == client._identity.device_id:
            return device
    raise LocalError("this device is no longer in its user's device list (revoked?)")


def list_devices(client: Client) -> list[DeviceInfo]:
    return [
        DeviceInfo(id=d.device_id.hex(), current=d.device_id == client._identity.device_id)
        for d in decode_device_list(client._identity.devices).devices
    ]


def _save_identity(client: Client) -> None:
    client._store.put("identity", "", rec.encode(client._identity))


def _reload_identity(client: Client) -> None:
    raw = client._store.get("identity", "")
    if raw is not None:
        client._identity = rec.decode(raw, rec.Identity)


async def ensure_self_token(client: Client) -> bytes:
    """A token of our own user, registered once, so our devices can write to each other."""
    _reload_identity(client)
    if client._identity.self_token is not None:
        return client._identity.self_token
    token = secrets.token_bytes(32)
    await call_own(client, frames.AddToken(rid=0, token=token), frames.Ok)
    with client._store.locked():
        _reload_identity(client)
        if client._identity.self_token is None:
            client._identity.self_token = token
            _save_identity(client)
    assert client._identity.self_token is not None
    return client._identity.self_token


async def _register_list(client: Client, devices: list[DeviceKeys]) -> None:
    """Sign and register a new list (version + 1) of our devices."""
    current = decode_device_list(client._identity.devices)
    signed = sign_device_list(client._user_key, devices, current.version + 1, now_ms(), "")
    account = client._load_account()
    for attempt in range(2):
        conn = await client._own()
        proof = auth_proof(account, conn.descriptor.server_key, conn.welcome.nonce)
        register = frames.Register(rid=0, device=own_device(client), devices=signed, proof=proof)
        try:
            await conn.call(register, frames.AuthOk)
            break
        except ConnectError:
            await client._drop(client._identity.server_key)
            if attempt:
                raise
    with client._store.locked():
        _reload_identity(client)
        client._identity.devices = signed
        _save_identity(client)
    remember_devices(client, signed)


async def start_link(client: Client) -> LinkOffer:
    """Register a fresh token and build the code ``devices link`` shows."""
    token = secrets.token_bytes(32)
    await call_own(client, frames.AddToken(rid=0, token=token), frames.Ok)
    sas = Sas()
    secret = secrets.token_bytes(32)
    code = LinkCode(
        version=1,
        server=client._identity.server,
        token=token,
        device=own_device(client),
        user_key=client.own_user_key,
        sas_key=sas.public_key,
        secret=secret,
    )
    offer = LinkOffer(code=encode_link_code(code), token=token, secret=secret, sas=sas)
    client._link_offer = offer
    return offer


def _link_info(existing: bytes, new: bytes) -> str:
    return f"{_LINK_INFO}|{existing.hex()}|{new.hex()}"


async def finish_link(
    client: Client,
    offer: LinkOffer,
    confirm: Confirm,
    timeout: float,  # noqa: ASYNC109 - the documented API
) -> DeviceInfo:
    """Wait for the new device's request, confirm the SAS, sign the list and grant.

    Raises:
        LocalError: no request in time, or the user said the codes differ.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while not offer.requests:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise LocalError("no device answered the link code in time")
            async with contextlib.aclosing(client.listen(timeout=min(0.5, remaining))) as it:
                async for _ in it:
                    if offer.requests:
                        break
        sender_key, request = offer.requests[0]
        code = offer.sas.establish(request.sas_key).code(
            _link_info(client._identity.device_id, request.device.device_id)
        )
        if not await confirm(code):
            raise LocalError("the codes differ: nothing was linked")
        self_token = await ensure_self_token(client)
        devices = list(decode_device_list(client._identity.devices).devices)
        if all(d.device_id != request.device.device_id for d in devices):
            devices.append(request.device)
        await _register_list(client, devices)
        grant = LinkGrant(
            user_key_seed=client._user_key.secret_bytes(),
            devices=client._identity.devices,
            name=client._identity.name,
            self_token=self_token,
        )
        # Sealed to the rendezvous mailbox, encrypted with the new device's Olm session.
        target = DeviceKeys(
            device_id=request.rendezvous.device_id,
            signing_key=request.rendezvous.signing_key,
            identity_key=sender_key,
            sealing_key=request.rendezvous.sealing_key,
        )
        rendezvous = Peer(
            user_key=b"",
            devices=client._identity.devices,
            server_key=client._identity.server_key,
            server=client._identity.server,
            token=request.rendezvous_token,
        )
        items = _sync_items(client)
        payloads = [control_payload(grant), *(control_payload(i) for i in items)]
        payloads.append(control_payload(SyncDone(items=len(items))))
        await send_payloads(client, rendezvous, [target], payloads)
        await broadcast_devices(client)
        return DeviceInfo(id=request.device.device_id.hex(), current=False)
    finally:
        client._link_offer = None
        with contextlib.suppress(RemoteError):
            await call_own(client, frames.RevokeToken(rid=0, token=offer.token), frames.Ok)


def on_link_request(client: Client, sender_key: bytes, request: LinkRequest) -> None:
    offer = client._link_offer
    if offer is None or not hmac.compare_digest(request.secret, offer.secret):
        log.info("dropped a link request that matches no open link code")
        return
    if request.device.identity_key != sender_key or request.device.device_id != device_id_for(
        request.device.signing_key
    ):
        log.info("dropped a link request with inconsistent keys")
        return
    offer.requests.append((sender_key, request))


async def revoke(client: Client, device_prefix: str) -> str:
    """Sign and register a list without the device whose id starts with ``device_prefix``.

    Raises:
        NotFound: no such device, or several match. LocalError: it is this device.
    """
    prefix = device_prefix.strip().lower()
    devices = list(decode_device_list(client._identity.devices).devices)
    matches = [d for d in devices if prefix and d.device_id.hex().startswith(prefix)]
    if len(matches) != 1:
        raise NotFound("no single device with this id")
    gone = matches[0]
    if gone.device_id == client._identity.device_id:
        raise LocalError("a device cannot revoke itself; revoke it from another device")
    await _register_list(client, [d for d in devices if d.device_id != gone.device_id])
    with client._store.locked():
        client._store.delete("session", gone.identity_key)
    await broadcast_devices(client)
    return gone.device_id.hex()


def _peers(client: Client) -> list[Peer]:
    """Everyone who should hear about our devices: contacts, group members, our devices."""
    from samizdat.client.groups import member_peers

    peers: dict[bytes, Peer] = {}
    for raw in client._store.values("contact"):
        contact = rec.decode(raw, rec.Contact)
        if contact.state != rec.ContactState.BLOCKED:
            peers[contact.user_key] = peer_from_contact(contact)
    for peer in member_peers(client):
        peers.setdefault(peer.user_key, peer)
    peers.pop(client.own_user_key, None)
    own = own_peer(client)
    return [*peers.values(), *([own] if own is not None else [])]


async def broadcast_devices(client: Client) -> None:
    """Tell every peer about our newest device list (failures to one do not stop others)."""
    update = DeviceListUpdate(devices=client._identity.devices)
    for peer in _peers(client):
        try:
            await send_controls(client, peer, [update])
        except RemoteError as exc:
            log.info("could not send a device list update: %s", type(exc).__name__)


def is_own_device(client: Client, identity_key: bytes) -> bool:
    return any(
        d.identity_key == identity_key for d in decode_device_list(client._identity.devices).devices
    )


def on_device_list(client: Client, update: DeviceListUpdate) -> None:
    new = remember_devices(client, update.devices)
    if new.user_key != client.own_user_key:
        return
    with client._store.locked():
        _reload_identity(client)
        if new.version > decode_device_list(client._identity.devices).version:
            client._identity.devices = update.devices
            _save_identity(client)


def on_own_payload(client: Client, sender_key: bytes, copy: SentCopy) -> None:
    """A message our other device sent: store it as outgoing in that conversation."""
    if not is_own_device(client, sender_key):
        return
    cid = client._store.get("user", copy.peer)
    if cid is None:
        return
    seen = client.own_user_key + copy.msg_id
    if client._store.get("seen", seen) is not None:
        return
    client._store.put("seen", seen, b"")
    if copy.action is not None:
        check_action(copy.action)
    if not on_sent_copy(client, cid, copy):
        return  # an action, not a message (or one that already expired)
    if copy.attachment is not None:
        remember_attachment(client._store, copy.msg_id, copy.attachment)
    rec.append_history(client._store, cid, "out", copy.text, copy.msg_id, copy.sent_at, now_ms())


# -- sync for a new device --------------------------------------------------------------


def _sync_items(client: Client) -> list[SyncItem]:
    from samizdat.client.group_inbox import sync_group_history, sync_groups

    contacts: list[SyncContact] = []
    history: list[SyncHistory] = []
    for raw in client._store.values("contact"):
        c = rec.decode(raw, rec.Contact)
        contacts.append(
            SyncContact(
                name=c.name,
                state=c.state.value,
                card=ContactCard(devices=c.devices, server=c.server, token=c.token, name=c.name),
                our_token=c.our_token,
                answered=c.answered,
                verified=c.verified,
            )
        )
        logged = [
            rec.decode(v, rec.HistoryRecord) for v in client._store.read_log("history", c.cid)
        ]
        for h in logged[-HISTORY_SYNC_LIMIT:]:
            if not lasting(client, contact_conv(c.cid), h.msg_id):
                continue  # a disappearing message is not copied to a new device
            history.append(
                SyncHistory(
                    peer=c.user_key,
                    group=False,
                    direction=h.direction,
                    text=h.text,
                    msg_id=h.msg_id,
                    sent_at=h.sent_at,
                )
            )
    groups = sync_groups(client)
    history.extend(sync_group_history(client, HISTORY_SYNC_LIMIT))
    items: list[SyncItem] = []
    current = SyncItem()
    size = 0

    def flush() -> None:
        nonlocal current, size
        if current.contacts or current.groups or current.history:
            items.append(current)
        current, size = SyncItem(), 0

    entries: list[SyncContact | SyncGroup | SyncHistory] = [*contacts, *groups, *history]
    for entry in entries:
        cost = len(msgspec.msgpack.encode(entry))
        if size + cost > _SYNC_BUDGET:
            flush()
        if isinstance(entry, SyncContact):
            current.contacts.append(entry)
        elif isinstance(entry, SyncHistory):
            current.history.append(entry)
        elif isinstance(entry, SyncGroup):
            current.groups.append(entry)
        size += cost
    flush()
    return items


def apply_sync(client: Client, items: list[SyncItem]) -> None:
    """Install contacts, groups and history received from the linking device."""
    from samizdat.client.group_inbox import append_synced_group_history, install_synced_group

    now = now_ms()
    with client._store.locked():
        for item in items:
            for sc in item.contacts:
                try:
                    verified = verify_card(sc.card, now)
                except RemoteError:
                    continue
                if client._store.get("user", verified.device_list.user_key) is not None:
                    continue
                client._new_contact(
                    verified,
                    client._unique_name(sc.name),
                    rec.ContactState(sc.state),
                    our_token=sc.our_token,
                    answered=sc.answered,
                    verified=sc.verified,
                )
            for sg in item.groups:
                install_synced_group(client, sg)
        for h in item_history(items):
            if h.group:
                append_synced_group_history(client, h)
                continue
            cid = client._store.get("user", h.peer)
            if cid is None:
                continue
            author = h.peer if h.direction == "in" else client.own_user_key
            client._store.put("seen", author + h.msg_id, b"")
            rec.append_history(client._store, cid, h.direction, h.text, h.msg_id, h.sent_at, now)


def item_history(items: list[SyncItem]) -> list[SyncHistory]:
    return [h for item in items for h in item.history]


# -- the new device ----------------------------------------------------------------------


async def join(
    home: Path,
    passphrase: str,
    code_text: str,
    confirm: Confirm,
    timeout: float,  # noqa: ASYNC109 - the documented API
    transport: TransportOptions | None = None,
) -> Client:
    """Become a new device of the user whose existing device shows ``code_text``.

    Raises:
        LocalError: an identity exists in ``home``, the codes differ, or no grant came.
        ProtocolError: the code is malformed or does not verify.
    """
    from samizdat.client.app import INITIAL_ONE_TIME_KEYS, Client

    if Store.exists(home):
        raise LocalError("a samizdat identity already exists in this home folder")
    code = decode_link_code(code_text)
    descriptor = open_descriptor(code.server, now_ms())
    if code.device.device_id != device_id_for(code.device.signing_key):
        raise LocalError("the link code is damaged")
    account = OlmAccount.create()
    sealing = SealingKey.generate()
    device = device_keys(account, sealing)
    # The rendezvous device: a mailbox before we are in the user's list.
    temp_user = SigningKey.generate()
    temp_account = OlmAccount.create()
    temp_sealing = SealingKey.generate()
    temp = device_keys(temp_account, temp_sealing)
    temp_token = secrets.token_bytes(32)
    conn = await Connection.open(code.server, descriptor.server_key, transport)
    try:
        temp_list = sign_device_list(temp_user, [temp], 1, now_ms(), "")
        proof = auth_proof(temp_account, conn.descriptor.server_key, conn.welcome.nonce)
        await conn.call(
            frames.Register(rid=0, device=temp, devices=temp_list, proof=proof), frames.AuthOk
        )
        await conn.call(frames.AddToken(rid=0, token=temp_token), frames.Ok)
        await conn.call(frames.Subscribe(rid=0, after=0), frames.Ok)
        bundle = await conn.call(
            frames.ClaimKeys(rid=0, token=code.token, device_id=code.device.device_id),
            frames.KeyBundle,
        )
        listed = decode_device_list(bundle.devices)
        if listed.user_key != code.user_key or code.device not in listed.devices:
            raise LocalError("the server's device list does not match the link code")
        from samizdat.protocol.keys import verify_signed_key

        verify_signed_key(code.device.signing_key, bundle.key)
        session = account.create_outbound_session(code.device.identity_key, bundle.key.key)
        sas = Sas()
        request = LinkRequest(
            secret=code.secret,
            device=device,
            sas_key=sas.public_key,
            rendezvous=temp,
            rendezvous_token=temp_token,
        )
        olm_type, olm = session.encrypt(pad(encode_struct(control_payload(request))))
        body = seal_to_device(code.device, account.identity_key, olm_type, olm)
        await conn.call(
            frames.Deposit(
                rid=0,
                token=code.token,
                envelopes=[
                    frames.Envelope(
                        device_id=code.device.device_id, msg_id=secrets.token_bytes(16), body=body
                    )
                ],
            ),
            frames.DepositOk,
        )
        sas_code = sas.establish(code.sas_key).code(
            _link_info(code.device.device_id, device.device_id)
        )
        if not await confirm(sas_code):
            raise LocalError("the codes differ: nothing was linked")
        grant: LinkGrant | None = None
        items: list[SyncItem] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        done = False
        while not done:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise LocalError("the existing device did not answer in time")
            deliver = await conn.next_delivery(remaining)
            if deliver is None:
                continue
            for entry in deliver.entries:
                try:
                    sealed = open_entry(temp_sealing, entry.body)
                    if sealed.sender_identity_key != code.device.identity_key:
                        continue
                    payload = decode_payload(unpad(session.decrypt(sealed.olm_type, sealed.olm)))
                    if payload.kind != PayloadKind.CONTROL or payload.control is None:
                        continue
                    control = decode_control(payload.control)
                except (DecryptionError, msgspec.ValidationError):
                    continue
                if isinstance(control, LinkGrant):
                    grant = control
                elif isinstance(control, SyncItem):
                    items.append(control)
                elif isinstance(control, SyncDone):
                    done = True
            if deliver.entries:
                await conn.call(frames.Ack(rid=0, up_to=deliver.entries[-1].seq), frames.Ok)
        if grant is None:
            raise LocalError("the existing device sent no grant")
        user_key = SigningKey.from_secret_bytes(grant.user_key_seed)
        new_list = decode_device_list(grant.devices)
        if user_key.public_bytes != code.user_key or new_list.user_key != code.user_key:
            raise LocalError("the grant is for another user")
        if device not in new_list.devices:
            raise LocalError("the new device list does not include this device")
        # Log in as ourselves now (same connection, same nonce).
        await conn.call(frames.RevokeToken(rid=0, token=temp_token), frames.Ok)
        proof = auth_proof(account, conn.descriptor.server_key, conn.welcome.nonce)
        await conn.call(
            frames.Register(rid=0, device=device, devices=grant.devices, proof=proof),
            frames.AuthOk,
        )
        keys = [
            sign_one_time_key(account, k)
            for k in account.generate_one_time_keys(INITIAL_ONE_TIME_KEYS)
        ]
        fallback = sign_one_time_key(account, account.generate_fallback_key())
        await conn.call(
            frames.UploadKeys(rid=0, one_time_keys=keys, fallback_key=fallback), frames.Ok
        )
        account.mark_keys_as_published()
    except ConnectError:
        raise
    finally:
        await conn.close()
    store = Store.create(home, passphrase)
    identity = rec.Identity(
        name=grant.name,
        user_key_seed=grant.user_key_seed,
        sealing_secret=sealing.secret_bytes(),
        device_id=device.device_id,
        devices=grant.devices,
        server_key=descriptor.server_key,
        server=code.server,
        self_token=grant.self_token,
    )
    with store.locked():
        store.put("identity", "", rec.encode(identity))
        store.put("account", "", account.pickle(store.pickle_key).encode())
    client = Client(home, store, identity, transport)
    with store.locked():
        client._save_sessions(code.device.identity_key, [session])
    remember_devices(client, grant.devices)
    apply_sync(client, items)
    return client
