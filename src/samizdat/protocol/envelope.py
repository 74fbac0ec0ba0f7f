"""What travels inside a mailbox entry: client-to-client, opaque to the server (§6).

Layers, outermost first:

1. ``SealedBox`` — the entry ``body``. An HPKE box (RFC 9180, base mode, DHKEM(X25519,
   HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305) to the recipient device's *sealing key*,
   so the server never learns which device or user sent the envelope (sealed sender).
2. ``Sealed`` — inside the box: the sender device's Curve25519 identity key and one Olm
   message (type 0 pre-key or 1 normal).
3. ``Payload`` — the Olm plaintext after removing padding (``crypto.padding``): the
   message itself, and on first contact the sender's ``ContactCard``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec
from msgspec import Meta

from samizdat.errors import DecryptionError
from samizdat.protocol import limits
from samizdat.protocol.actions import MessageAction, check_action
from samizdat.protocol.blobs import Attachment
from samizdat.protocol.links import ContactCard
from samizdat.protocol.types import Key32, Millis, MsgId

__all__ = [
    "SealedBox",
    "Sealed",
    "PayloadKind",
    "Payload",
    "encode_struct",
    "decode_sealed_box",
    "decode_sealed",
    "decode_payload",
]

_Blob = Annotated[bytes, Meta(max_length=limits.MAX_ENVELOPE_BODY)]
MAX_MESSAGE_TEXT = 60_000


class SealedBox(msgspec.Struct, frozen=True):
    version: int
    #: The HPKE encapsulated key.
    ephemeral_key: Key32
    #: The HPKE ciphertext, AEAD tag included.
    ciphertext: _Blob


class Sealed(msgspec.Struct, frozen=True):
    sender_identity_key: Key32
    olm_type: Annotated[int, Meta(ge=0, le=1)]
    olm: _Blob


class PayloadKind(StrEnum):
    TEXT = "text"
    #: ``control`` holds a protocol.control message (devices, groups, verification; §10).
    CONTROL = "control"
    #: ``action`` changes an earlier message (reaction, edit, delete, receipt, timer; §6.2).
    ACTION = "action"


class Payload(msgspec.Struct, frozen=True):
    """One message, as the sender wrote it."""

    #: The logical message id: the same for every recipient device; receivers dedupe on it.
    msg_id: MsgId
    sent_at: Millis
    kind: PayloadKind
    text: Annotated[str, Meta(max_length=MAX_MESSAGE_TEXT)] = ""
    #: The sender's card, carried until the recipient has answered once.
    card: ContactCard | None = None
    #: msgpack of a ``protocol.control.Control`` when ``kind`` is ``control``.
    control: Annotated[bytes, Meta(max_length=limits.MAX_ENVELOPE_BODY)] | None = None
    #: A reply, reaction, edit, deletion, receipt or timer change (protocol/actions.py).
    action: MessageAction | None = None
    #: A file shared with this message (protocol/blobs.py, §12); owned by attachments.
    attachment: Attachment | None = None


_box_decoder = msgspec.msgpack.Decoder(SealedBox)
_sealed_decoder = msgspec.msgpack.Decoder(Sealed)
_payload_decoder = msgspec.msgpack.Decoder(Payload)


def encode_struct(value: SealedBox | Sealed | Payload) -> bytes:
    return msgspec.msgpack.encode(value)


def decode_sealed_box(data: bytes) -> SealedBox:
    try:
        return _box_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecryptionError("malformed sealed box") from exc


def decode_sealed(data: bytes) -> Sealed:
    try:
        return _sealed_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecryptionError("malformed sealed envelope") from exc


def decode_payload(data: bytes) -> Payload:
    try:
        payload = _payload_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecryptionError("malformed payload") from exc
    if payload.action is not None:
        check_action(payload.action)
    return payload
