"""The client's composition root: identity, contacts and 1:1 messaging (DESIGN §3, §5).

:class:`Client` ties together the encrypted store (client/store.py), the Olm account and
sessions (crypto/olm.py), sealing (crypto/sealing.py) and one connection per server
(client/connection.py). Every method re-reads shared state from the store under its
inter-process lock, so that ``listen`` in one process and ``send`` in another can share
a home folder.

The send path is client/sending.py (a durable outbox for every 1:1 message and message
action: :meth:`Client.send` returns only after ``DepositOk``, and what fails stays queued
and goes first next time), the receive path client/receiving.py (:meth:`Client.listen`);
the methods here keep the public API.
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

from samizdat.client import attachments, reach, receiving, relays, sending
from samizdat.client import devices as linked
from samizdat.client import records as rec
from samizdat.client.attachments import AttachmentInfo
from samizdat.client.connection import Connection, now_ms
from samizdat.client.messaging import (
    KEEP_OLM_SESSIONS,
    VerifiedCard,
    auth_proof,
    device_keys,
    open_entry,
    retire_sessions,
    sign_device_list,
    sign_one_time_key,
    verify_card,
)
from samizdat.client.receiving import Received
from samizdat.client.records import Contact, ContactState, HistoryRecord, Identity
from samizdat.client.store import Store
from samizdat.crypto.olm import OlmAccount, OlmSession
from samizdat.crypto.padding import unpad
from samizdat.crypto.safety import safety_number
from samizdat.crypto.sealing import SealingKey
from samizdat.crypto.signing import SigningKey
from samizdat.errors import DecryptionError, LocalError, NotFound, RemoteError
from samizdat.protocol import frames, limits
from samizdat.protocol.actions import MessageAction
from samizdat.protocol.blobs import Attachment
from samizdat.protocol.descriptor import SignedDescriptor, open_descriptor
from samizdat.protocol.envelope import decode_payload
from samizdat.protocol.keys import decode_device_list
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
        # The last sealed body delivered per contact id, in memory only (for tests and tools).
        self._last_sent: dict[bytes, bytes] = {}
        #: An open `devices link` (client/devices.py), in memory only.
        self._link_offer: linked.LinkOffer | None = None
        #: Serialises group outbox deliveries (client/group_outbox.py): two at once would
        #: seal one queued send twice from the same Megolm state.
        self.group_send_lock = asyncio.Lock()
        #: The background resend of queued sends that ``listen`` starts on each connection.
        self._resend: asyncio.Task[None] | None = None
        self._resend_wake = asyncio.Event()
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
        if len(sessions) > KEEP_OLM_SESSIONS:
            ids = retire_sessions(self._retired_sessions(identity_key), sessions)
            self._store.put("retired", identity_key, rec.encode(rec.RetiredSessions(ids=ids)))

    def _retired_sessions(self, identity_key: bytes) -> list[str]:
        """Ids of the sessions with this device that ``_save_sessions`` let go, oldest first."""
        raw = self._store.get("retired", identity_key)
        return [] if raw is None else rec.decode(raw, rec.RetiredSessions).ids

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

    def _new_contact(
        self,
        card: VerifiedCard,
        name: str,
        state: ContactState,
        *,
        our_token: bytes | None = None,
        answered: bool = False,
        verified: bool = False,
    ) -> Contact:
        """Store (and index) a new contact made from a verified card (the keyword fields:
        a contact synced from another of our devices, as it stands there)."""
        contact = Contact(
            cid=secrets.token_bytes(16),
            name=name,
            state=state,
            user_key=card.device_list.user_key,
            devices=card.card.devices,
            device_list_version=card.device_list.version,
            server_key=card.descriptor.server_key,
            server=card.card.server,
            token=card.card.token,
            our_token=our_token,
            answered=answered,
            verified=verified,
        )
        self._save_contact(contact)
        self._index_contact(contact)
        return contact

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
            self._new_contact(verified, name, ContactState.CONTACT)

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

    # -- sending (client/sending.py) ------------------------------------------------------

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
        return await sending.send(self, name, text, attachment, action)

    async def _flush_outbox(self, cid: bytes | None = None) -> None:
        """Resend what is queued (client/sending.py); with ``cid`` that contact's only."""
        await sending.flush(self, cid)

    def _start_resend(self) -> None:
        """Resend what is queued now (``listen``, on each connection), and again later
        while anything stays queued (client/sending.py)."""
        if self._resend is None or self._resend.done():
            self._resend_wake.clear()
            self._resend = asyncio.create_task(sending.resend_queued(self, self._resend_wake))
        else:
            self._resend_wake.set()

    def last_sent_envelope(self, name: str) -> bytes:
        """The sealed body this ``Client`` last deposited for ``name`` (first device).

        Raises:
            NotFound: nothing was sent to ``name`` by this object.
        """
        try:
            return self._last_sent[self._contact_by_name(name).cid]
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

    # -- receiving (client/receiving.py) ------------------------------------------------

    def listen(
        self,
        count: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the documented API
    ) -> AsyncGenerator[Received, None]:
        """Yield messages as they arrive on our server.

        Stops after ``count`` messages, or once no message arrived for ``timeout``
        seconds (an idle timeout; None waits forever). Entries are acknowledged once
        stored, and what they made readable waits in the encrypted store until yielded,
        so an interrupted ``listen`` loses nothing: beyond ``count`` (a room key opens
        every message held for it) or across a crash, the next call yields it.
        """
        return receiving.listen(self, count, timeout)
