"""The client's composition root: identity, contacts and 1:1 messaging (DESIGN §3, §5).

:class:`Client` ties together the encrypted store (client/store.py), the Olm account and
sessions (crypto/olm.py), sealing (crypto/sealing.py) and one connection per server
(client/connection.py). Every method re-reads shared state from the store under its
inter-process lock, so that ``listen`` in one process and ``send`` in another can share
a home folder.

Delivery (protocol §5, §6): a message is padded, Olm-encrypted per recipient device,
sealed to that device's sealing key, written to the outbox, then deposited on the
recipient's server with their token; :meth:`Client.send` returns only after
``DepositOk``. A failed deposit leaves the sealed bytes in the outbox; the next ``send``
retries them unchanged (same msg_id, so the server stores one copy).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import secrets
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import msgspec

from samizdat.client import actions as message_actions
from samizdat.client import (
    attachments,
    group_inbox,
    group_outbox,
    msgstate,
    reach,
    relays,
    verification,
)
from samizdat.client import devices as linked
from samizdat.client import records as rec
from samizdat.client.attachments import AttachmentInfo
from samizdat.client.connection import Connection, now_ms
from samizdat.client.dispatch import on_control
from samizdat.client.messaging import (
    KEEP_OLM_SESSIONS,
    auth_proof,
    decrypt_olm,
    device_keys,
    open_entry,
    seal_to_device,
    sign_device_list,
    sign_one_time_key,
    verify_card,
)
from samizdat.client.records import Contact, ContactState, HistoryRecord, Identity, OutboxItem
from samizdat.client.store import Store
from samizdat.crypto.olm import OlmAccount, OlmSession
from samizdat.crypto.padding import pad, unpad
from samizdat.crypto.safety import safety_number
from samizdat.crypto.sealing import SealingKey
from samizdat.crypto.signing import SigningKey
from samizdat.errors import (
    ConnectError,
    DecryptionError,
    ErrorCode,
    LocalError,
    NotFound,
    ProtocolError,
    RemoteError,
    SamizdatError,
    ServerRefused,
)
from samizdat.protocol import frames, limits
from samizdat.protocol.actions import MessageAction
from samizdat.protocol.blobs import Attachment
from samizdat.protocol.control import decode_group_box
from samizdat.protocol.descriptor import SignedDescriptor, open_descriptor
from samizdat.protocol.envelope import Payload, PayloadKind, decode_payload, encode_struct
from samizdat.protocol.keys import DeviceKeys, decode_device_list, verify_signed_key
from samizdat.protocol.links import (
    ContactCard,
    Invite,
    ServerLink,
    decode_invite,
    decode_server_link,
    encode_invite,
    encode_server_link,
)
from samizdat.transport import TransportOptions

__all__ = ["Client", "Received", "ContactInfo", "HistoryItem", "INITIAL_ONE_TIME_KEYS"]

log = logging.getLogger(__name__)

#: One-time keys uploaded at registration; topped up when the server holds under half.
INITIAL_ONE_TIME_KEYS = 50
_MAX_NAME = 64
#: Refusals after which resending the same envelope can never succeed.
_PERMANENT = {
    "bad_token",
    "unknown_device",
    "envelope_too_large",
    "bad_frame",
    "too_many_envelopes",
}


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


@dataclass(frozen=True)
class ContactInfo:
    name: str
    state: str
    #: They have written to us at least once.
    answered: bool


@dataclass(frozen=True)
class HistoryItem:
    direction: str  # "in" or "out"
    text: str = field(repr=False)
    id: str = field(repr=False)
    sent_at: int = 0
    received_at: int = 0
    #: The file this message carries (client/attachments.py), if any.
    attachment: AttachmentInfo | None = None


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > _MAX_NAME or any(ord(c) < 32 for c in name):
        raise LocalError(f"a name must be 1 to {_MAX_NAME} printable characters")
    return name


class Client:
    """One device's identity and conversations. Create with :meth:`create` or :meth:`open`."""

    def __init__(
        self,
        home: Path,
        store: Store,
        identity: Identity,
        transport: TransportOptions | None = None,
    ) -> None:
        self._home = home
        #: How to reach servers: proxy, resolvers (DESIGN §6); the same for every command.
        self.transport = transport or TransportOptions()
        self._store = store
        # Relays the user added join every dial (client/relays.py, protocol §11).
        self.transport = relays.with_relays(self.transport, store)
        self._identity = identity
        self._user_key = SigningKey.from_secret_bytes(identity.user_key_seed)
        self._sealing = SealingKey.from_secret_bytes(identity.sealing_secret)
        self._conns: dict[bytes, Connection] = {}
        self._conn_locks: dict[bytes, asyncio.Lock] = {}
        # The last sealed body sent per contact name, in memory only (for tests and tools).
        self._last_sent: dict[str, bytes] = {}
        #: An open `devices link` (client/devices.py), in memory only.
        self._link_offer: linked.LinkOffer | None = None
        #: Serialises group outbox deliveries (client/group_outbox.py): two at once would
        #: seal one queued send twice from the same Megolm state.
        self.group_send_lock = asyncio.Lock()
        #: The background resend of queued sends that ``listen`` starts on each connection.
        self._resend: asyncio.Task[None] | None = None
        #: Called after ``listen`` stored a batch of entries, shown or not (a reaction, an
        #: edit, a receipt): the browser UI (web/service.py) refreshes what it shows.
        self.on_stored: Callable[[], object] | None = None

    # -- lifecycle -----------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        home: Path,
        passphrase: str,
        server_link: str,
        name: str,
        transport: TransportOptions | None = None,
    ) -> Client:
        """Make a new identity in ``home`` and register this device on the server.

        Raises:
            LocalError: an identity already exists there, or the name is unusable.
            ProtocolError: the server link is malformed or does not verify.
            ConnectError, ServerRefused: registration failed (nothing is left behind).
        """
        name = _check_name(name)
        if Store.exists(home):
            raise LocalError("a samizdat identity already exists in this home folder")
        link = decode_server_link(server_link)
        descriptor = open_descriptor(link.descriptor, now_ms())
        account = OlmAccount.create()
        user_key = SigningKey.generate()
        sealing = SealingKey.generate()
        device = device_keys(account, sealing)
        # No display name in the signed list: the server stores it, and names are metadata.
        devices = sign_device_list(user_key, [device], 1, now_ms(), "")
        conn = await Connection.open(link.descriptor, descriptor.server_key, transport)
        try:
            proof = auth_proof(account, conn.descriptor.server_key, conn.welcome.nonce)
            await conn.call_any(frames.Register(rid=0, device=device, devices=devices, proof=proof))
            keys = [sign_one_time_key(account, k) for k in account.generate_one_time_keys(50)]
            fallback = sign_one_time_key(account, account.generate_fallback_key())
            await conn.call(
                frames.UploadKeys(rid=0, one_time_keys=keys, fallback_key=fallback), frames.Ok
            )
            account.mark_keys_as_published()
        finally:
            await conn.close()
        store = Store.create(home, passphrase)
        identity = Identity(
            name=name,
            user_key_seed=user_key.secret_bytes(),
            sealing_secret=sealing.secret_bytes(),
            device_id=device.device_id,
            devices=devices,
            server_key=descriptor.server_key,
            server=conn.signed_descriptor,
        )
        with store.locked():
            store.put("identity", "", rec.encode(identity))
            store.put("account", "", account.pickle(store.pickle_key).encode())
        if conn.candidate is not None:
            reach.save_route(store, descriptor.server_key, conn.candidate.key)
        return cls(home, store, identity, transport)

    @classmethod
    async def open(
        cls, home: Path, passphrase: str, transport: TransportOptions | None = None
    ) -> Client:
        """Open the identity in ``home``.

        Raises:
            NotFound: no identity there. WrongPassphrase: the passphrase is wrong.
        """
        store = Store.open(home, passphrase)
        raw = store.get("identity", "")
        if raw is None:
            store.close()
            raise LocalError("the local store has no identity (interrupted init?)")
        return cls(home, store, rec.decode(raw, Identity), transport)

    async def close(self) -> None:
        if self._resend is not None:
            self._resend.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resend
        for conn in list(self._conns.values()):
            await conn.close()
        self._conns.clear()
        self._store.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return "Client(<identity>)"

    # -- identity --------------------------------------------------------------------

    @property
    def own_user_key(self) -> bytes:
        return self._user_key.public_bytes

    @property
    def name(self) -> str:
        return self._identity.name

    @property
    def server_link(self) -> str:
        return encode_server_link(ServerLink(version=1, descriptor=self._identity.server))

    def _own_identity_key(self) -> bytes:
        return linked.own_device(self).identity_key

    def _own_card(self, token: bytes) -> ContactCard:
        return ContactCard(
            devices=self._identity.devices,
            server=reach.newest_descriptor(
                self._store, self._identity.server_key, self._identity.server
            ),
            token=token,
            name=self._identity.name,
        )

    # -- connections -------------------------------------------------------------------

    async def _connection(self, server_key: bytes, signed: SignedDescriptor) -> Connection:
        lock = self._conn_locks.setdefault(server_key, asyncio.Lock())
        async with lock:
            conn = self._conns.get(server_key)
            if conn is not None and not conn.closed:
                return conn
            if conn is not None:
                await conn.close()
            # The newest descriptor we hold, the path that worked last time first (DESIGN §6).
            signed = reach.newest_descriptor(self._store, server_key, signed)
            preferred = reach.preferred_route(self._store, server_key)
            conn = await Connection.open(signed, server_key, self.transport, preferred)
            if conn.candidate is not None:
                reach.save_route(self._store, server_key, conn.candidate.key)
            reach.save_descriptor(self._store, server_key, conn.signed_descriptor)
            conn.on_descriptor = functools.partial(reach.save_descriptor, self._store, server_key)
            self._conns[server_key] = conn
            return conn

    async def route(self) -> Connection:
        """The live connection to our own server (for ``samizdat status``: which path)."""
        return await self._connection(self._identity.server_key, self._identity.server)

    def own_descriptor(self) -> tuple[SignedDescriptor, bytes]:
        """The newest descriptor of our own server, and the server key it must carry."""
        key = self._identity.server_key
        return reach.newest_descriptor(self._store, key, self._identity.server), key

    async def _drop(self, server_key: bytes) -> None:
        conn = self._conns.pop(server_key, None)
        if conn is not None:
            await conn.close()

    async def _own(self) -> Connection:
        """The authenticated connection to our own server (keys topped up on login)."""
        conn = await self._connection(self._identity.server_key, self._identity.server)
        if conn.logged_in:
            return conn
        account = self._load_account()
        # The key the server holds now: it may have rotated since we joined (protocol §4).
        proof = auth_proof(account, conn.descriptor.server_key, conn.welcome.nonce)
        ok = await conn.call(
            frames.Auth(rid=0, device_id=self._identity.device_id, proof=proof), frames.AuthOk
        )
        conn.logged_in = True
        await self._top_up(conn, ok.one_time_keys, ok.has_fallback_key)
        return conn

    async def _top_up(self, conn: Connection, held: int, has_fallback: bool) -> None:
        if held >= INITIAL_ONE_TIME_KEYS // 2 and has_fallback:
            return
        with self._store.locked():
            account = self._load_account()
            want = max(0, INITIAL_ONE_TIME_KEYS - held)
            fresh = account.generate_one_time_keys(want)[: limits.MAX_KEYS_PER_UPLOAD]
            fallback = None if has_fallback else account.generate_fallback_key()
            self._save_account(account)
        await conn.call(
            frames.UploadKeys(
                rid=0,
                one_time_keys=[sign_one_time_key(account, k) for k in fresh],
                fallback_key=None if fallback is None else sign_one_time_key(account, fallback),
            ),
            frames.Ok,
        )
        with self._store.locked():
            account = self._load_account()
            account.mark_keys_as_published()
            self._save_account(account)
        log.debug("uploaded %d one-time keys", len(fresh))

    # -- store helpers ---------------------------------------------------------------

    def _load_account(self) -> OlmAccount:
        raw = self._store.get("account", "")
        if raw is None:
            raise LocalError("the local store has no account")
        return OlmAccount.from_pickle(raw.decode(), self._store.pickle_key)

    def _save_account(self, account: OlmAccount) -> None:
        self._store.put("account", "", account.pickle(self._store.pickle_key).encode())

    def _load_sessions(self, identity_key: bytes) -> list[OlmSession]:
        raw = self._store.get("session", identity_key)
        if raw is None:
            return []
        key = self._store.pickle_key
        return [OlmSession.from_pickle(p, key) for p in rec.decode(raw, rec.Sessions).pickles]

    def _save_sessions(self, identity_key: bytes, sessions: list[OlmSession]) -> None:
        key = self._store.pickle_key
        pickles = [s.pickle(key) for s in sessions[:KEEP_OLM_SESSIONS]]
        self._store.put("session", identity_key, rec.encode(rec.Sessions(pickles=pickles)))

    def _contact(self, cid: bytes) -> Contact:
        raw = self._store.get("contact", cid)
        if raw is None:
            raise LocalError("the local store lost a contact record")
        return rec.decode(raw, Contact)

    def _contact_by_name(self, name: str) -> Contact:
        cid = self._store.get("name", name.strip())
        if cid is None:
            raise NotFound("no contact with this name")
        return self._contact(cid)

    def _save_contact(self, contact: Contact) -> None:
        self._store.put("contact", contact.cid, rec.encode(contact))

    def _index_contact(self, contact: Contact) -> None:
        self._store.put("name", contact.name, contact.cid)
        self._store.put("user", contact.user_key, contact.cid)
        for device in decode_device_list(contact.devices).devices:
            self._store.put("ident", device.identity_key, contact.cid)

    def _unique_name(self, wanted: str) -> str:
        base = re.sub(r"[\x00-\x1f]", "", wanted).strip()[: _MAX_NAME - 4] or "unknown"
        name, n = base, 1
        while self._store.get("name", name) is not None:
            n += 1
            name = f"{base}-{n}"
        return name

    # -- contacts --------------------------------------------------------------------

    async def invite(self) -> str:
        """A fresh invite link with a new delivery token registered on our server."""
        token = secrets.token_bytes(32)
        conn = await self._own()
        await conn.call(frames.AddToken(rid=0, token=token), frames.Ok)
        return encode_invite(Invite(version=1, card=self._own_card(token)))

    async def add_contact(self, link: str, name: str) -> None:
        """Add a contact from their invite link under ``name``.

        Raises:
            ProtocolError: the invite is malformed or its signatures do not verify.
            LocalError: the name is taken, or this user is already a contact.
        """
        name = _check_name(name)
        verified = verify_card(decode_invite(link).card, now_ms())
        user_key = verified.device_list.user_key
        if user_key == self.own_user_key:
            raise LocalError("this invite is your own")
        with self._store.locked():
            if self._store.get("name", name) is not None:
                raise LocalError("a contact with this name already exists")
            if self._store.get("user", user_key) is not None:
                raise LocalError("this person is already a contact (under another name)")
            contact = Contact(
                cid=secrets.token_bytes(16),
                name=name,
                state=ContactState.CONTACT,
                user_key=user_key,
                devices=verified.card.devices,
                device_list_version=verified.device_list.version,
                server_key=verified.descriptor.server_key,
                server=verified.card.server,
                token=verified.card.token,
            )
            self._save_contact(contact)
            self._index_contact(contact)

    def contacts(self) -> list[ContactInfo]:
        """Contacts, requests and blocked users, by name."""
        found = [rec.decode(v, Contact) for v in self._store.values("contact")]
        return sorted(
            (ContactInfo(name=c.name, state=c.state.value, answered=c.answered) for c in found),
            key=lambda c: c.name,
        )

    def requests(self) -> list[ContactInfo]:
        return [c for c in self.contacts() if c.state == ContactState.REQUEST.value]

    async def accept(self, name: str) -> None:
        """Turn a contact request into a contact. Raises NotFound."""
        with self._store.locked():
            contact = self._contact_by_name(name)
            if contact.state == ContactState.REQUEST:
                contact.state = ContactState.CONTACT
                self._save_contact(contact)

    async def block(self, name: str) -> None:
        """Drop everything from this contact from now on, and revoke our token for them."""
        with self._store.locked():
            contact = self._contact_by_name(name)
            contact.state = ContactState.BLOCKED
            token, contact.our_token = contact.our_token, None
            self._save_contact(contact)
        if token is not None:
            with contextlib.suppress(RemoteError):
                conn = await self._own()
                await conn.call(frames.RevokeToken(rid=0, token=token), frames.Ok)

    def safety_number(self, name: str) -> str:
        """Sixty digits over both user keys; equal on both sides. Raises NotFound."""
        return safety_number(self.own_user_key, self._contact_by_name(name).user_key)

    def history(self, name: str) -> list[HistoryItem]:
        """The conversation with ``name``, oldest first. Raises NotFound."""
        contact = self._contact_by_name(name)
        items = [
            HistoryItem(
                direction=r.direction,
                text=r.text,
                id=r.msg_id.hex(),
                sent_at=r.sent_at,
                received_at=r.received_at,
                attachment=attachments.stored_summary(self._store, r.msg_id),
            )
            for r in (
                rec.decode(v, HistoryRecord) for v in self._store.read_log("history", contact.cid)
            )
        ]
        # Stored in arrival order; shown in the order written (a stable sort by sent_at).
        return sorted(items, key=lambda item: item.sent_at)

    # -- sending ---------------------------------------------------------------------

    async def send(
        self,
        name: str,
        text: str,
        attachment: Attachment | None = None,
        action: MessageAction | None = None,
    ) -> str:
        """Send ``text`` (and an uploaded file, client/attachments.py) to every device of
        ``name``; returns the message id (hex).

        Returns only once the recipient's server answered ``DepositOk`` (durable).

        Raises:
            NotFound: no such contact. LocalError: the contact is blocked.
            ConnectError, ServerRefused: not delivered yet; after a transient failure the
            message stays queued and the next ``send`` to this contact delivers it first.
        """
        contact = self._contact_by_name(name)
        if contact.state == ContactState.BLOCKED:
            raise LocalError("this contact is blocked")
        verification.check_can_send(contact)
        conv = msgstate.contact_conv(contact.cid)
        # A reply, and the expiry the conversation's timer gives (client/actions.py).
        action = msgstate.stamp(self, conv, action)
        card = None if contact.answered else await self._card_for(contact)
        msg_id = secrets.token_bytes(16)
        sent_at = now_ms()
        payload = Payload(
            msg_id=msg_id,
            sent_at=sent_at,
            kind=PayloadKind.TEXT,
            text=text,
            card=card,
            attachment=attachment,
            action=action,
        )
        if attachment is not None:
            attachments.remember(self._store, msg_id, attachment)
        padded = pad(encode_struct(payload))
        devices = decode_device_list(contact.devices).devices
        claimed: dict[bytes, bytes] = {}
        for device in devices:
            if self._store.get("session", device.identity_key) is None:
                claimed[device.identity_key] = await self._claim(contact, device)
        envelopes: list[frames.Envelope] = []
        with self._store.locked():
            account = self._load_account()
            for device in devices:
                sessions = self._load_sessions(device.identity_key)
                if not sessions:
                    sessions = [
                        account.create_outbound_session(
                            device.identity_key, claimed[device.identity_key]
                        )
                    ]
                olm_type, olm = sessions[0].encrypt(padded)
                self._save_sessions(device.identity_key, sessions)
                body = seal_to_device(device, account.identity_key, olm_type, olm)
                envelopes.append(
                    frames.Envelope(
                        device_id=device.device_id,
                        msg_id=secrets.token_bytes(16),
                        body=body,
                        expires_at=None if action is None else action.expires_at,
                    )
                )
            item = OutboxItem(
                msg_id=msg_id,
                cid=contact.cid,
                token=contact.token,
                server_key=contact.server_key,
                server=contact.server,
                envelopes=envelopes,
                text=text,
                sent_at=sent_at,
            )
            self._store.put("outbox", msg_id, rec.encode(item))
            message_actions.on_sent(self, conv.key, msg_id, sent_at, action, text)
        # Older undelivered messages to this contact go first; on failure this one stays
        # queued behind them and the next send (or a retry) delivers them in order.
        await self._flush_outbox(contact.cid)
        self._last_sent[contact.name] = envelopes[0].body
        await linked.copy_to_own_devices(
            self, contact.user_key, msg_id, sent_at, text, action, attachment
        )
        return msg_id.hex()

    async def _card_for(self, contact: Contact) -> ContactCard:
        """Our card for this contact, with a per-contact token registered on our server."""
        if contact.our_token is None:
            token = secrets.token_bytes(32)
            conn = await self._own()
            await conn.call(frames.AddToken(rid=0, token=token), frames.Ok)
            with self._store.locked():
                fresh = self._contact(contact.cid)
                if fresh.our_token is None:
                    fresh.our_token = token
                    self._save_contact(fresh)
                contact.our_token = fresh.our_token
        assert contact.our_token is not None
        return self._own_card(contact.our_token)

    async def _claim(self, contact: Contact, device: DeviceKeys) -> bytes:
        """Claim one key of ``device`` on the contact's server and check its signature."""
        conn = await self._connection(contact.server_key, contact.server)
        bundle = await conn.call(
            frames.ClaimKeys(rid=0, token=contact.token, device_id=device.device_id),
            frames.KeyBundle,
        )
        if bundle.device_id != device.device_id:
            raise ProtocolError(ErrorCode.BAD_FRAME, "key bundle for another device")
        # The signing key comes from the device list we verified, not from the bundle.
        verify_signed_key(device.signing_key, bundle.key)
        return bundle.key.key

    async def _deliver(self, msg_id: bytes, item: OutboxItem) -> None:
        deposit = frames.Deposit(rid=0, token=item.token, envelopes=item.envelopes)
        try:
            for attempt in range(2):
                conn = await self._connection(item.server_key, item.server)
                try:
                    await conn.call(deposit, frames.DepositOk)
                    break
                except ConnectError:
                    await self._drop(item.server_key)
                    if attempt:
                        raise
        except ServerRefused as exc:
            if exc.code in _PERMANENT:
                self._store.delete("outbox", msg_id)
            raise
        with self._store.locked():
            self._store.delete("outbox", msg_id)
            self._store.append(
                "history",
                item.cid,
                rec.encode(
                    HistoryRecord(
                        direction="out",
                        text=item.text,
                        msg_id=msg_id,
                        sent_at=item.sent_at,
                        received_at=now_ms(),
                    )
                ),
            )

    async def _flush_outbox(self, cid: bytes | None = None) -> None:
        """Resend envelopes a previous ``send`` wrote but could not deliver.

        Oldest first, and a contact whose oldest message fails gets nothing newer this
        round: per-sender order is part of the delivery contract (DESIGN §5). With ``cid``
        only that contact's messages are resent, and a failure is raised, so that a new
        message never overtakes an older one to the same contact.
        """
        items = sorted(
            (rec.decode(raw, OutboxItem) for raw in self._store.values("outbox")),
            key=lambda item: item.sent_at,
        )
        stuck: set[bytes] = set()
        for item in items:
            if item.cid in stuck or (cid is not None and item.cid != cid):
                continue
            try:
                await self._deliver(item.msg_id, item)
            except ServerRefused as exc:
                if exc.code in _PERMANENT:
                    continue  # dropped from the outbox by _deliver; later ones may pass
                stuck.add(item.cid)
                if cid is not None:
                    raise
            except RemoteError:
                stuck.add(item.cid)
                if cid is not None:
                    raise

    def _start_resend(self) -> None:
        if self._resend is None or self._resend.done():
            self._resend = asyncio.create_task(self._resend_queued())

    async def _resend_queued(self) -> None:
        """Deliver the 1:1 and group outboxes in the background (neither raises a
        delivery failure: what fails stays queued for the next connection or send)."""
        try:
            await self._flush_outbox()
            await group_outbox.deliver(self)
        except SamizdatError as exc:
            log.info("resending queued messages failed: %s", type(exc).__name__)

    def last_sent_envelope(self, name: str) -> bytes:
        """The sealed body this ``Client`` last deposited for ``name`` (first device).

        Raises:
            NotFound: nothing was sent to ``name`` by this object.
        """
        try:
            return self._last_sent[name]
        except KeyError:
            raise NotFound("nothing sent to this contact in this session") from None

    def open_envelope(self, body: bytes) -> str:
        """Try to decrypt a mailbox entry body with the current state, saving nothing.

        For inspection (e.g. showing that an old ciphertext no longer opens: forward
        secrecy); the store is left untouched whatever happens.

        Raises:
            DecryptionError: it does not open with the keys held now.
        """
        sealed = open_entry(self._sealing, body)
        for session in self._load_sessions(sealed.sender_identity_key):
            with contextlib.suppress(DecryptionError):
                return decode_payload(unpad(session.decrypt(sealed.olm_type, sealed.olm))).text
        _, plaintext = self._load_account().create_inbound_session(
            sealed.sender_identity_key, sealed.olm_type, sealed.olm
        )
        return decode_payload(unpad(plaintext)).text

    # -- receiving -------------------------------------------------------------------

    async def listen(
        self,
        count: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the documented API
    ) -> AsyncGenerator[Received, None]:
        """Yield messages as they arrive on our server.

        Stops after ``count`` messages, or once no message arrived for ``timeout``
        seconds (an idle timeout; None waits forever). Entries are acknowledged once
        stored, so an interrupted ``listen`` loses nothing.
        """
        yielded = 0
        failures = 0
        since = asyncio.get_running_loop().time()
        resent_on: Connection | None = None
        while count is None or yielded < count:
            try:
                conn = await self._subscribed()
                if conn is not resent_on:
                    # (Re)connected: what failed to go out before goes now, unprompted.
                    resent_on = conn
                    self._start_resend()
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
                await self._drop(self._identity.server_key)
                failures += 1
                elapsed = asyncio.get_running_loop().time() - since
                if ErrorCode.REPLACED.value in str(exc) or (
                    timeout is not None and elapsed > timeout
                ):
                    raise
                await asyncio.sleep(reach.backoff(failures))
                continue
            failures = 0
            since = asyncio.get_running_loop().time()
            batch: list[Received] = []
            last = 0
            for index, entry in enumerate(entries):
                if count is not None and yielded + len(batch) >= count:
                    # Delivered on this subscription but not consumed: the server will not
                    # send them again on this connection, so keep them for the next call.
                    conn.backlog = entries[index:]
                    break
                received = self._process(entry)
                last = entry.seq
                if received is not None:
                    batch.append(received)
            if last:
                with contextlib.suppress(RemoteError):
                    await conn.call(frames.Ack(rid=0, up_to=last), frames.Ok)
                # Delivery receipts for what was stored; expired messages go (§6.2).
                await message_actions.after_batch(self)
                if self.on_stored is not None:
                    self.on_stored()
            for received in batch:
                yielded += 1
                yield received

    async def _subscribed(self) -> Connection:
        conn = await self._own()
        if not conn.subscribed:
            raw = self._store.get("cursor", "")
            after = int.from_bytes(raw, "big") if raw else 0
            await conn.call(frames.Subscribe(rid=0, after=after), frames.Ok)
            conn.subscribed = True
        return conn

    def _process(self, entry: frames.Entry) -> Received | None:
        """Decrypt, store and dedupe one entry (in one locked transaction)."""
        with self._store.locked():
            raw = self._store.get("cursor", "")
            if raw and entry.seq <= int.from_bytes(raw, "big"):
                return None
            self._store.put("cursor", "", entry.seq.to_bytes(8, "big"))
            try:
                box = decode_group_box(entry.body)
                if box is not None:
                    return group_inbox.on_group_box(self, box)
                return self._open_entry(entry)
            except (DecryptionError, ProtocolError, msgspec.ValidationError) as exc:
                log.info("dropped a mailbox entry that does not open: %s", type(exc).__name__)
                return None

    def _open_entry(self, entry: frames.Entry) -> Received | None:
        sealed = open_entry(self._sealing, entry.body)
        sender_key = sealed.sender_identity_key
        sessions = self._load_sessions(sender_key)
        plaintext = decrypt_olm(sessions, sealed, self._load_account, self._save_account)
        self._save_sessions(sender_key, sessions)
        payload = decode_payload(unpad(plaintext))
        if payload.kind == PayloadKind.CONTROL and payload.control is not None:
            on_control(self, sender_key, payload.control)
            return None
        if payload.action is not None and payload.action.receipt is not None:
            # Receipts also come from group members who are not contacts.
            message_actions.on_receipt(self, sender_key, payload)
            return None
        contact = self._sender(sender_key, payload)
        if contact is None or contact.state == ContactState.BLOCKED:
            return None
        if not contact.answered:
            contact.answered = True
            self._save_contact(contact)
        seen = contact.user_key + payload.msg_id
        if self._store.get("seen", seen) is not None:
            return None
        self._store.put("seen", seen, b"")
        if not message_actions.on_message(self, contact, payload):
            return None  # a reaction, edit, deletion or timer change, or already expired
        if payload.attachment is not None:
            attachments.remember(self._store, payload.msg_id, payload.attachment)
        self._store.append(
            "history",
            contact.cid,
            rec.encode(
                HistoryRecord(
                    direction="in",
                    text=payload.text,
                    msg_id=payload.msg_id,
                    sent_at=payload.sent_at,
                    received_at=entry.received_at,
                )
            ),
        )
        return Received(
            sender=contact.name,
            text=payload.text,
            id=payload.msg_id.hex(),
            sent_at=payload.sent_at,
            request=contact.state == ContactState.REQUEST,
            attachment=attachments.summary(payload.attachment) if payload.attachment else None,
        )

    def _sender(self, sender_key: bytes, payload: Payload) -> Contact | None:
        """Who wrote: a contact by identity key, else a new request from the card."""
        cid = self._store.get("ident", sender_key)
        if cid is not None:
            return self._contact(cid)
        if payload.card is None:
            log.info("dropped a message from an unknown sender without a card")
            return None
        verified = verify_card(payload.card, now_ms())
        if verified.device(sender_key) is None:
            log.info("dropped a message whose card does not list its sender")
            return None
        user_key = verified.device_list.user_key
        cid = self._store.get("user", user_key)
        if cid is not None:
            # A known user with a new device list: keep the newer one.
            contact = self._contact(cid)
            if verified.device_list.version > contact.device_list_version:
                contact.devices = payload.card.devices
                contact.device_list_version = verified.device_list.version
                self._save_contact(contact)
                self._index_contact(contact)
            listed = {d.identity_key for d in decode_device_list(contact.devices).devices}
            return contact if sender_key in listed else None
        contact = Contact(
            cid=secrets.token_bytes(16),
            name=self._unique_name(payload.card.name or verified.device_list.display_name),
            state=ContactState.REQUEST,
            user_key=user_key,
            devices=payload.card.devices,
            device_list_version=verified.device_list.version,
            server_key=verified.descriptor.server_key,
            server=payload.card.server,
            token=payload.card.token,
        )
        self._save_contact(contact)
        self._index_contact(contact)
        return contact
