"""``samizdat:`` links: a server link and a contact invite (docs/protocol.md §9).

A link is ``samizdat:<kind>/<payload>`` where payload is unpadded base64url of the
msgpack encoding of the structure for that kind. The same text is what QR codes carry.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

import msgspec
from msgspec import Meta

from samizdat.errors import ErrorCode, ProtocolError
from samizdat.protocol.descriptor import SignedDescriptor
from samizdat.protocol.keys import SignedDeviceList
from samizdat.protocol.relay import RelayLink
from samizdat.protocol.types import Text, Token

__all__ = [
    "MAX_LINK",
    "ServerLink",
    "Invite",
    "ContactCard",
    "encode_server_link",
    "decode_server_link",
    "encode_invite",
    "decode_invite",
    "RelayLink",
    "encode_relay_link",
    "decode_relay_link",
]

MAX_LINK = 16384
_SCHEME = "samizdat:"


class ServerLink(msgspec.Struct, frozen=True):
    version: Annotated[int, Meta(ge=1)]
    descriptor: SignedDescriptor


class ContactCard(msgspec.Struct, frozen=True):
    """Everything needed to write to a user: their devices, home server and a token."""

    devices: SignedDeviceList
    server: SignedDescriptor
    token: Token
    name: Text = ""


class Invite(msgspec.Struct, frozen=True):
    version: Annotated[int, Meta(ge=1)]
    card: ContactCard


_server_decoder = msgspec.msgpack.Decoder(ServerLink)
_invite_decoder = msgspec.msgpack.Decoder(Invite)
_relay_decoder = msgspec.msgpack.Decoder(RelayLink)


def _encode(kind: str, payload: bytes) -> str:
    return f"{_SCHEME}{kind}/" + base64.urlsafe_b64encode(payload).rstrip(b"=").decode()


def _payload(link: str, kind: str) -> bytes:
    link = link.strip()
    prefix = f"{_SCHEME}{kind}/"
    if len(link) > MAX_LINK or not link.startswith(prefix):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"not a samizdat {kind} link")
    text = link[len(prefix) :]
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, "link is not base64url") from exc


def encode_server_link(link: ServerLink) -> str:
    return _encode("server", msgspec.msgpack.encode(link))


def decode_server_link(text: str) -> ServerLink:
    """Parse a server link; the descriptor inside is not yet verified.

    Raises:
        ProtocolError: not a well-formed server link.
    """
    try:
        return _server_decoder.decode(_payload(text, "server"))
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, "malformed server link") from exc


def encode_invite(invite: Invite) -> str:
    return _encode("invite", msgspec.msgpack.encode(invite))


def decode_invite(text: str) -> Invite:
    """Parse an invite; its device list and descriptor are not yet verified.

    Raises:
        ProtocolError: not a well-formed invite.
    """
    try:
        return _invite_decoder.decode(_payload(text, "invite"))
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, "malformed invite") from exc


def encode_relay_link(link: RelayLink) -> str:
    """``samizdat:relay/...``: a relay's addresses, TLS anchor and one link's secret (§11.3)."""
    return _encode("relay", msgspec.msgpack.encode(link))


def decode_relay_link(text: str) -> RelayLink:
    """Parse a relay link.

    Raises:
        ProtocolError: not a well-formed relay link.
    """
    try:
        return _relay_decoder.decode(_payload(text, "relay"))
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, "malformed relay link") from exc
