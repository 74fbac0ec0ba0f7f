"""What the client keeps in its store: msgpack structs, each encrypted as one record.

Record kinds and what they are looked up by (the store HMACs every lookup name):

=============  ===================  ==============================================
kind           lookup name          value
=============  ===================  ==============================================
``identity``   ``""``               :class:`Identity` (keys, own device list, server)
``account``    ``""``               the vodozemac account pickle (changes often)
``contact``    contact id (random)  :class:`Contact`
``name``       contact name         contact id
``ident``      Curve25519 identity  contact id (who sent a sealed envelope)
``user``       user key             contact id
``session``    Curve25519 identity  :class:`Sessions` (Olm pickles, newest first)
``seen``       user key + msg id    empty (deduplication)
``outbox``     msg id               :class:`OutboxItem` (1:1 payload, not yet durable)
``outseq``     ``""``               the last queue position given (8 bytes)
``cursor``     ``""``               last processed mailbox seq (8 bytes)
``history``    contact id (log)     :class:`HistoryRecord`
``upload``     file's SHA-256       :class:`PendingUpload` (an unfinished upload)
=============  ===================  ==============================================

Message actions, timers and receipts keep their own kinds: see client/msgstate.py.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

import msgspec

from samizdat.protocol.descriptor import SignedDescriptor
from samizdat.protocol.frames import Envelope
from samizdat.protocol.keys import SignedDeviceList

if TYPE_CHECKING:
    from samizdat.client.store import Store

__all__ = [
    "append_history",
    "PendingUpload",
    "ContactState",
    "Identity",
    "Contact",
    "Sessions",
    "OutboxItem",
    "HistoryRecord",
    "encode",
    "decode",
]


class ContactState(StrEnum):
    CONTACT = "contact"
    REQUEST = "request"
    BLOCKED = "blocked"


class Identity(msgspec.Struct):
    name: str
    user_key_seed: bytes
    sealing_secret: bytes
    device_id: bytes
    devices: SignedDeviceList
    server_key: bytes
    server: SignedDescriptor
    #: A token of our own user, so our other devices can be written to (client/devices.py).
    self_token: bytes | None = None


class Contact(msgspec.Struct):
    cid: bytes
    name: str
    state: ContactState
    user_key: bytes
    devices: SignedDeviceList
    device_list_version: int
    server_key: bytes
    server: SignedDescriptor
    #: Their token: lets us deposit into their mailboxes and claim their keys.
    token: bytes
    #: Our token registered for them, carried in our card until they answer.
    our_token: bytes | None = None
    #: They have written to us at least once, so they know who we are.
    answered: bool = False
    #: Verified (safety number or SAS); a later key change then needs consent to send.
    verified: bool = False
    #: Their user key changed since it was verified: sending waits for ``trust``.
    key_changed: bool = False


class Sessions(msgspec.Struct):
    """Olm sessions with one remote device; the first is the one we encrypt with."""

    pickles: list[str]


class RetiredSessions(msgspec.Struct):
    """Ids of Olm sessions with one remote device that we let go, oldest first: a late
    pre-key message of one must not start it again (``messaging.decrypt_olm``)."""

    ids: list[str]


class PendingUpload(msgspec.Struct, frozen=True):
    """An upload that has not finished, so that the next upload of the same file, even
    after a crash or a restart, continues where it stopped (client/attachments.py): same
    key, read secret and blob id, so the chunks the server holds are the ones it would get.
    """

    sha256: bytes
    key: bytes
    secret: bytes
    blob_id: bytes
    ttl_ms: int | None
    started_at: int


class OutboxItem(msgspec.Struct):
    """One 1:1 payload to one user's devices, written before depositing (client/sending.py).

    Queued with the padded payload; sealed at the first delivery attempt (``payload`` is
    then None) and from then on resent unchanged, so the server stores one copy.
    """

    #: The payload's message id (the outbox key); envelope ids are random per device so
    #: the server cannot link the copies of one message.
    msg_id: bytes
    #: The queue lane, delivered in order: the contact id, or for a user who is not a
    #: contact (a group member's receipts, our own other devices) a lane of its own.
    cid: bytes
    token: bytes
    server_key: bytes
    server: SignedDescriptor
    envelopes: list[Envelope]
    text: str
    sent_at: int
    #: A message: appended to the contact's history once delivered (not actions, copies).
    history: bool = True
    #: The padded payload while not sealed yet.
    payload: bytes | None = None
    #: Whose devices (with the newest device list we hold then) to seal for.
    user_key: bytes = b""
    devices: SignedDeviceList | None = None
    #: The server deletes the entries then; an item past it is dropped unsent.
    expires_at: int | None = None
    #: Position in the queue (a counter of the store): order within a lane.
    order: int = 0


class HistoryRecord(msgspec.Struct):
    direction: str
    text: str
    msg_id: bytes
    sent_at: int
    received_at: int


def append_history(
    store: Store,
    cid: bytes,
    direction: str,
    text: str,
    msg_id: bytes,
    sent_at: int,
    received_at: int,
) -> None:
    """Add a line to the conversation with contact ``cid`` (call under the store lock)."""
    store.append(
        "history", cid, encode(HistoryRecord(direction, text, msg_id, sent_at, received_at))
    )


_T = TypeVar("_T")
_Record = (
    Identity | Contact | Sessions | RetiredSessions | OutboxItem | HistoryRecord | PendingUpload
)


def encode(value: _Record) -> bytes:
    return msgspec.msgpack.encode(value)


def decode(data: bytes, kind: type[_T]) -> _T:
    return msgspec.msgpack.decode(data, type=kind)
