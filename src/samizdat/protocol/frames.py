"""Frames: the messages client and server exchange over a connection (docs/protocol.md §5).

Theory of operation
-------------------
Each WebSocket binary message carries exactly one frame: a msgpack map whose ``t`` key
names the frame type. The client opens with ``Hello`` listing the protocol versions it
speaks; the server answers ``Welcome`` (the chosen version, a fresh auth nonce, its
signed descriptor and its limits) or ``Error(unsupported_version)`` and closes.

Requests carry a client-chosen ``rid``; the server answers each with exactly one frame
carrying the same ``rid``: the matching ``*Ok`` frame or ``Error``. The server also sends
frames the client did not ask for: ``Deliver`` (mailbox entries) and ``Error`` with
``rid = null`` (the connection is about to close, e.g. ``replaced``).

Anonymous requests (no login needed): ``Register``, ``Auth``, ``ClaimKeys``, ``Deposit``.
A deposit or claim is authorised by a delivery token, not by who sends it (sealed sender).
Authenticated requests (after ``Register`` or ``Auth`` on this connection): ``UploadKeys``,
``AddToken``, ``RevokeToken``, ``Subscribe``, ``Ack``.

This module does no I/O: :func:`encode` and the decoders turn frames into bytes and back,
enforcing every size limit of §8.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from samizdat.errors import ErrorCode, ProtocolError
from samizdat.protocol import limits
from samizdat.protocol.blobs import (
    BlobData,
    BlobDelete,
    BlobOpen,
    BlobRead,
    BlobStatus,
    BlobWrite,
)
from samizdat.protocol.descriptor import SignedDescriptor
from samizdat.protocol.keys import DeviceKeys, SignedDeviceList, SignedKey
from samizdat.protocol.types import (
    DeviceId,
    Millis,
    MsgId,
    RequestId,
    Seq,
    Sig64,
    Text,
    Token,
)

__all__ = [
    "PROTOCOL_VERSIONS",
    "Limits",
    "Hello",
    "Welcome",
    "Register",
    "Auth",
    "AuthOk",
    "UploadKeys",
    "ClaimKeys",
    "KeyBundle",
    "AddToken",
    "RevokeToken",
    "Envelope",
    "Deposit",
    "DepositOk",
    "FanoutTarget",
    "Fanout",
    "Subscribe",
    "Entry",
    "Deliver",
    "Ack",
    "Ok",
    "Error",
    "DescriptorUpdate",
    "ClientFrame",
    "ServerFrame",
    "encode",
    "decode_client_frame",
    "decode_server_frame",
    "request_id",
]

#: Versions this implementation speaks, newest last.
PROTOCOL_VERSIONS: tuple[int, ...] = (1,)

_Versions = Annotated[list[Annotated[int, Meta(ge=0, le=65535)]], Meta(min_length=1, max_length=16)]
_Body = Annotated[bytes, Meta(max_length=limits.MAX_ENVELOPE_BODY)]


class Limits(msgspec.Struct, frozen=True):
    """Limits the server enforces on this connection (never above those of §8)."""

    max_frame: int = limits.MAX_FRAME
    max_envelope_body: int = limits.MAX_ENVELOPE_BODY
    max_envelopes_per_deposit: int = limits.MAX_ENVELOPES_PER_DEPOSIT
    max_mailbox_entries: int = limits.MAX_MAILBOX_ENTRIES
    max_keys_per_upload: int = limits.MAX_KEYS_PER_UPLOAD


# -- client to server -----------------------------------------------------------------


class Hello(msgspec.Struct, frozen=True, tag_field="t", tag="hello"):
    versions: _Versions
    client: Text = ""


class Register(msgspec.Struct, frozen=True, tag_field="t", tag="register"):
    """Register (or re-register) a device under a user key; also logs the connection in.

    ``proof`` is the device's Ed25519 signature over ``auth_message`` (context AUTH_CONTEXT).
    """

    rid: RequestId
    device: DeviceKeys
    devices: SignedDeviceList
    proof: Sig64


class Auth(msgspec.Struct, frozen=True, tag_field="t", tag="auth"):
    rid: RequestId
    device_id: DeviceId
    proof: Sig64


class UploadKeys(msgspec.Struct, frozen=True, tag_field="t", tag="upload_keys"):
    rid: RequestId
    #: More than ``Limits.max_keys_per_upload`` answers ``too_many_keys``.
    one_time_keys: list[SignedKey]
    fallback_key: SignedKey | None = None


class ClaimKeys(msgspec.Struct, frozen=True, tag_field="t", tag="claim_keys"):
    """Claim one key for a device of the user that issued ``token``."""

    rid: RequestId
    token: Token
    device_id: DeviceId


class AddToken(msgspec.Struct, frozen=True, tag_field="t", tag="add_token"):
    rid: RequestId
    token: Token


class RevokeToken(msgspec.Struct, frozen=True, tag_field="t", tag="revoke_token"):
    rid: RequestId
    token: Token


class Envelope(msgspec.Struct, frozen=True):
    """One opaque ciphertext for one recipient device.

    ``body`` is bounded by the frame size only, so that a server can answer an oversized
    body with ``envelope_too_large`` rather than a generic ``bad_frame``.
    """

    device_id: DeviceId
    msg_id: MsgId
    body: bytes
    #: A disappearing message: the server deletes the entry at this time (ms), delivered
    #: or not (protocol §6.2). Absent: the mailbox time to live applies.
    expires_at: Millis | None = None


class Deposit(msgspec.Struct, frozen=True, tag_field="t", tag="deposit"):
    rid: RequestId
    token: Token
    #: At least one; more than ``Limits.max_envelopes_per_deposit`` answers
    #: ``too_many_envelopes`` (checked by the server, not the decoder, for a clear code).
    envelopes: Annotated[list[Envelope], Meta(min_length=1)]


class FanoutTarget(msgspec.Struct, frozen=True):
    """Devices of the one user that issued ``token``."""

    token: Token
    devices: Annotated[list[DeviceId], Meta(min_length=1, max_length=limits.MAX_DEVICES)]


class Fanout(msgspec.Struct, frozen=True, tag_field="t", tag="fanout"):
    """One body stored in the mailbox of every listed device (server-side fan-out, §5.3.10).

    Used for Megolm group messages: the sender uploads the ciphertext once. More than
    ``limits.MAX_FANOUT_DEVICES`` devices in all answers ``too_many_envelopes``.
    """

    rid: RequestId
    msg_id: MsgId
    body: bytes
    targets: Annotated[list[FanoutTarget], Meta(min_length=1, max_length=limits.MAX_FANOUT_DEVICES)]
    #: As ``Envelope.expires_at``, for every entry of the fan-out.
    expires_at: Millis | None = None


class Subscribe(msgspec.Struct, frozen=True, tag_field="t", tag="subscribe"):
    """Start delivery of this device's mailbox entries with ``seq > after``."""

    rid: RequestId
    after: Seq = 0


class Ack(msgspec.Struct, frozen=True, tag_field="t", tag="ack"):
    """Delete every entry with ``seq <= up_to`` from this device's mailbox."""

    rid: RequestId
    up_to: Seq


ClientFrame = (
    Hello
    | Register
    | Auth
    | UploadKeys
    | ClaimKeys
    | AddToken
    | RevokeToken
    | Deposit
    | Fanout
    | Subscribe
    | Ack
    # Attachment blobs (protocol/blobs.py, §5.3.11).
    | BlobOpen
    | BlobWrite
    | BlobRead
    | BlobDelete
)

# -- server to client -----------------------------------------------------------------


class Welcome(msgspec.Struct, frozen=True, tag_field="t", tag="welcome"):
    version: int
    nonce: Annotated[bytes, Meta(min_length=32, max_length=32)]
    descriptor: SignedDescriptor
    server_time: Millis
    limits: Limits


class AuthOk(msgspec.Struct, frozen=True, tag_field="t", tag="auth_ok"):
    rid: RequestId
    device_id: DeviceId
    #: One-time keys the server still holds for this device, so it knows when to upload.
    one_time_keys: int
    has_fallback_key: bool


class KeyBundle(msgspec.Struct, frozen=True, tag_field="t", tag="key_bundle"):
    rid: RequestId
    devices: SignedDeviceList
    device_id: DeviceId
    key: SignedKey


class DepositOk(msgspec.Struct, frozen=True, tag_field="t", tag="deposit_ok"):
    """Every envelope of the deposit is durable (or was already stored under its msg_id)."""

    rid: RequestId
    stored: int
    duplicates: int


class Entry(msgspec.Struct, frozen=True):
    seq: Seq
    msg_id: MsgId
    body: _Body
    received_at: Millis


class Deliver(msgspec.Struct, frozen=True, tag_field="t", tag="deliver"):
    entries: Annotated[list[Entry], Meta(max_length=limits.MAX_ENTRIES_PER_DELIVER)]


class Ok(msgspec.Struct, frozen=True, tag_field="t", tag="ok"):
    rid: RequestId


class Error(msgspec.Struct, frozen=True, tag_field="t", tag="error"):
    rid: RequestId | None
    code: Annotated[str, Meta(max_length=64)]
    message: Text = ""


class DescriptorUpdate(msgspec.Struct, frozen=True, tag_field="t", tag="descriptor"):
    descriptor: SignedDescriptor


ServerFrame = (
    Welcome
    | AuthOk
    | KeyBundle
    | DepositOk
    | Deliver
    | Ok
    | Error
    | DescriptorUpdate
    | BlobStatus
    | BlobData
)

_client_decoder: msgspec.msgpack.Decoder[ClientFrame] = msgspec.msgpack.Decoder(ClientFrame)
_server_decoder: msgspec.msgpack.Decoder[ServerFrame] = msgspec.msgpack.Decoder(ServerFrame)
_encoder = msgspec.msgpack.Encoder()


def encode(frame: ClientFrame | ServerFrame) -> bytes:
    """The bytes of one WebSocket binary message carrying ``frame``."""
    return _encoder.encode(frame)


def _check_size(data: bytes, max_frame: int) -> None:
    if len(data) > max_frame:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"frame larger than {max_frame} bytes")


def decode_client_frame(data: bytes, max_frame: int = limits.MAX_FRAME) -> ClientFrame:
    """Parse a frame sent by a client.

    Raises:
        ProtocolError: ``frame_too_large`` or ``bad_frame``.
    """
    _check_size(data, max_frame)
    try:
        return _client_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, _reason(exc)) from exc
    except UnicodeDecodeError as exc:
        # msgspec lets invalid UTF-8 in a str field escape as UnicodeDecodeError.
        raise ProtocolError(ErrorCode.BAD_FRAME, "invalid UTF-8 in a string") from exc


def decode_server_frame(data: bytes, max_frame: int = limits.MAX_FRAME) -> ServerFrame:
    """Parse a frame sent by a server.

    Raises:
        ProtocolError: ``frame_too_large`` or ``bad_frame``.
    """
    _check_size(data, max_frame)
    try:
        return _server_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, _reason(exc)) from exc
    except UnicodeDecodeError as exc:
        # msgspec lets invalid UTF-8 in a str field escape as UnicodeDecodeError.
        raise ProtocolError(ErrorCode.BAD_FRAME, "invalid UTF-8 in a string") from exc


def _reason(exc: msgspec.DecodeError) -> str:
    # msgspec's messages name fields and types only, never values: safe to send back.
    return str(exc)[: limits.MAX_TEXT - 16]


def request_id(frame: ClientFrame) -> int | None:
    """The ``rid`` of a request frame, or None for ``Hello``."""
    return getattr(frame, "rid", None)
