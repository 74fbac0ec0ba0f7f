"""Client-to-client control messages: devices, groups, verification (docs/protocol.md §10).

A control message travels in ``Payload.control`` (``kind = "control"``) inside the usual
sealed Olm envelope (§6), so only the two devices see it. The exception is the body of a
Megolm group message (:class:`GroupBox`), which the server fans out unchanged to every
listed device (``Fanout``, §5.3.10). No I/O here.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Final

import msgspec
from msgspec import Meta

from samizdat.errors import DecryptionError, ErrorCode, ProtocolError
from samizdat.protocol import limits
from samizdat.protocol.actions import MessageAction, check_action
from samizdat.protocol.blobs import Attachment
from samizdat.protocol.descriptor import SignedDescriptor
from samizdat.protocol.groups import SignedGroupState
from samizdat.protocol.keys import DeviceKeys, SignedDeviceList
from samizdat.protocol.links import ContactCard
from samizdat.protocol.types import Key32, Millis, MsgId, Text, Token

__all__ = [
    "GROUP_BOX_VERSION",
    "LinkCode",
    "LinkRequest",
    "LinkGrant",
    "SyncContact",
    "SyncGroup",
    "SyncHistory",
    "SyncItem",
    "SyncDone",
    "DeviceListUpdate",
    "SentCopy",
    "GroupUpdate",
    "RoomKey",
    "GroupCard",
    "GroupText",
    "GroupBox",
    "VerifyKey",
    "VerifyMac",
    "Control",
    "encode_control",
    "decode_control",
    "encode_link_code",
    "decode_link_code",
    "encode_group_text",
    "decode_group_text",
    "encode_group_box",
    "decode_group_box",
]

GROUP_BOX_VERSION: Final = 1
_Secret = Annotated[bytes, Meta(min_length=32, max_length=32)]
_Id16 = Annotated[bytes, Meta(min_length=16, max_length=16)]
_Blob = Annotated[bytes, Meta(max_length=limits.MAX_ENVELOPE_BODY)]
_LongText = Annotated[str, Meta(max_length=60_000)]


# -- linking a device (§10.1) ------------------------------------------------------------


class LinkCode(msgspec.Struct, frozen=True):
    """What ``devices link`` shows (as ``samizdat:link/...`` and a QR code)."""

    def __repr__(self) -> str:
        return "LinkCode(<secret>)"

    version: Annotated[int, Meta(ge=1)]
    server: SignedDescriptor
    #: A fresh token of the user, so the new device may claim a key and deposit.
    token: Token
    #: The existing device, which the new one starts an Olm session with.
    device: DeviceKeys
    user_key: Key32
    #: The existing device's SAS public key (Curve25519).
    sas_key: Key32
    #: Proves that a request comes from whoever saw the code.
    secret: _Secret


class LinkRequest(msgspec.Struct, frozen=True, tag_field="c", tag="link_request"):
    """New device → existing device (Olm pre-key message to ``LinkCode.device``)."""

    def __repr__(self) -> str:
        return "LinkRequest(<secret>)"

    secret: _Secret
    device: DeviceKeys
    sas_key: Key32
    #: A throw-away device registered under a throw-away user key: its mailbox is where
    #: the new device, not yet in the user's list, receives the grant.
    rendezvous: DeviceKeys
    rendezvous_token: Token


class LinkGrant(msgspec.Struct, frozen=True, tag_field="c", tag="link_grant"):
    """Existing device → new device: the user key and the new list (Olm-encrypted)."""

    def __repr__(self) -> str:
        return "LinkGrant(<secret>)"

    user_key_seed: _Secret
    devices: SignedDeviceList
    name: Text
    self_token: Token


class SyncContact(msgspec.Struct, frozen=True):
    def __repr__(self) -> str:
        return "SyncContact(<secret>)"

    name: Text
    state: Text
    card: ContactCard
    our_token: Token | None = None
    answered: bool = False
    verified: bool = False


class SyncGroup(msgspec.Struct, frozen=True):
    state: SignedGroupState
    cards: list[ContactCard]


class SyncHistory(msgspec.Struct, frozen=True):
    #: A contact's user key, or a group id.
    peer: bytes
    group: bool
    direction: Text
    text: _LongText
    msg_id: MsgId
    sent_at: Millis
    #: The author's user key (groups).
    author: bytes = b""


class SyncItem(msgspec.Struct, frozen=True, tag_field="c", tag="sync"):
    """Part of what a new device receives after the grant (contacts, groups, history)."""

    def __repr__(self) -> str:
        return "SyncItem(<secret>)"

    contacts: list[SyncContact] = []
    groups: list[SyncGroup] = []
    history: list[SyncHistory] = []


class SyncDone(msgspec.Struct, frozen=True, tag_field="c", tag="sync_done"):
    items: int


# -- multi-device ------------------------------------------------------------------------


class DeviceListUpdate(msgspec.Struct, frozen=True, tag_field="c", tag="device_list"):
    """A newer signed device list of the sender's user (contacts keep the highest)."""

    devices: SignedDeviceList


class SentCopy(msgspec.Struct, frozen=True, tag_field="c", tag="sent_copy"):
    """To the sender's own other devices: a 1:1 message it sent (shown as outgoing)."""

    def __repr__(self) -> str:
        return "SentCopy(<secret>)"

    peer: Key32
    msg_id: MsgId
    sent_at: Millis
    text: _LongText
    #: The reply, reaction, edit, deletion or timer it carried (protocol/actions.py).
    action: MessageAction | None = None
    #: The file it carried (protocol/blobs.py, §12), so our other devices can open it too.
    attachment: Attachment | None = None


# -- groups ------------------------------------------------------------------------------


class GroupUpdate(msgspec.Struct, frozen=True, tag_field="c", tag="group_update"):
    """A new signed group state and the cards of the members (§10.2).

    ``cards`` carries how to reach members (device list, server, a token that member
    issued); it may be split over several updates of the same state (``part``).
    """

    state: SignedGroupState
    cards: list[ContactCard] = []
    part: int = 0


class RoomKey(msgspec.Struct, frozen=True, tag_field="c", tag="room_key"):
    """A Megolm session key from the sending device, for one group (§10.3)."""

    def __repr__(self) -> str:
        return "RoomKey(<secret>)"

    group_id: _Id16
    session_id: Annotated[str, Meta(max_length=64)]
    session_key: Annotated[str, Meta(max_length=1024)]


class GroupCard(msgspec.Struct, frozen=True):
    """How to reach a member, inside a group state message; ``server`` indexes ``servers``."""

    def __repr__(self) -> str:
        return "GroupCard(<secret>)"

    devices: SignedDeviceList
    server: Annotated[int, Meta(ge=0)]
    token: Token
    name: Text = ""


class GroupText(msgspec.Struct, frozen=True):
    """The Megolm plaintext of a group message, or of a group state change (§10.2).

    A state change carries a new ``state`` and/or ``cards`` (members' device lists and
    tokens, their servers once in ``servers``) and an empty ``text``; it is applied, not shown.
    """

    def __repr__(self) -> str:
        return "GroupText(<secret>)"

    group_id: _Id16
    msg_id: MsgId
    sent_at: Millis
    text: _LongText
    state: SignedGroupState | None = None
    servers: list[SignedDescriptor] = []
    cards: list[GroupCard] = []
    #: A reply, reaction, edit, deletion or timer change (protocol/actions.py).
    action: MessageAction | None = None
    #: A file shared with the group (protocol/blobs.py, §12); owned by attachments.
    attachment: Attachment | None = None


class GroupBox(msgspec.Struct, frozen=True):
    """A fan-out entry body: one Megolm message. ``v`` tells it from a ``SealedBox``."""

    v: int
    session_id: Annotated[str, Meta(max_length=64)]
    megolm: _Blob


# -- verification (§10.4) ----------------------------------------------------------------


class VerifyKey(msgspec.Struct, frozen=True, tag_field="c", tag="verify_key"):
    txn: _Id16
    sas_key: Key32


class VerifyMac(msgspec.Struct, frozen=True, tag_field="c", tag="verify_mac"):
    def __repr__(self) -> str:
        return "VerifyMac(<secret>)"

    txn: _Id16
    mac: Annotated[str, Meta(max_length=128)]


Control = (
    LinkRequest
    | LinkGrant
    | SyncItem
    | SyncDone
    | DeviceListUpdate
    | SentCopy
    | GroupUpdate
    | RoomKey
    | VerifyKey
    | VerifyMac
)

_control_decoder: msgspec.msgpack.Decoder[Control] = msgspec.msgpack.Decoder(Control)
_code_decoder = msgspec.msgpack.Decoder(LinkCode)
_text_decoder = msgspec.msgpack.Decoder(GroupText)
_box_decoder = msgspec.msgpack.Decoder(GroupBox)
_LINK_PREFIX: Final = "samizdat:link/"


def encode_control(control: Control) -> bytes:
    return msgspec.msgpack.encode(control)


def decode_control(data: bytes) -> Control:
    """Raises DecryptionError (treated like an undecryptable entry) if malformed."""
    try:
        return _control_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecryptionError("malformed control message") from exc


def encode_link_code(code: LinkCode) -> str:
    payload = base64.urlsafe_b64encode(msgspec.msgpack.encode(code)).rstrip(b"=").decode()
    return _LINK_PREFIX + payload


def decode_link_code(text: str) -> LinkCode:
    """Parse a ``samizdat:link/...`` code; its descriptor is not yet verified.

    Raises:
        ProtocolError: bad_frame.
    """
    text = text.strip()
    if not text.startswith(_LINK_PREFIX) or len(text) > 16384:
        raise ProtocolError(ErrorCode.BAD_FRAME, "not a samizdat link code")
    raw = text[len(_LINK_PREFIX) :]
    try:
        data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        return _code_decoder.decode(data)
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, "malformed link code") from exc


def encode_group_text(text: GroupText) -> bytes:
    return msgspec.msgpack.encode(text)


def decode_group_text(data: bytes) -> GroupText:
    try:
        text = _text_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecryptionError("malformed group message") from exc
    if text.action is not None:
        check_action(text.action)
    return text


def encode_group_box(box: GroupBox) -> bytes:
    return msgspec.msgpack.encode(box)


def decode_group_box(data: bytes) -> GroupBox | None:
    """The group box in an entry body, or None if the body is something else."""
    try:
        box = _box_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return box if box.v == GROUP_BOX_VERSION else None
