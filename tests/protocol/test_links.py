"""``samizdat:`` links (docs/protocol.md §9)."""

from __future__ import annotations

import base64

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from samizdat.errors import ErrorCode, ProtocolError
from samizdat.protocol.descriptor import Descriptor, Endpoint, SignedDescriptor, sign_descriptor
from samizdat.protocol.keys import SignedDeviceList
from samizdat.protocol.links import (
    MAX_LINK,
    ContactCard,
    Invite,
    ServerLink,
    decode_invite,
    decode_server_link,
    encode_invite,
    encode_server_link,
)
from tests.protocol import strategies as s

LINK_ALPHABET = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@given(s.server_links)
def test_server_link_round_trip(link: ServerLink) -> None:
    text = encode_server_link(link)
    assert text.startswith("samizdat:server/")
    assert set(text.removeprefix("samizdat:server/")) <= LINK_ALPHABET
    assert decode_server_link(text) == link
    # Pasted links often carry surrounding whitespace.
    assert decode_server_link(f"  {text}\n") == link


@given(s.invites)
def test_invite_round_trip(invite: Invite) -> None:
    text = encode_invite(invite)
    assert text.startswith("samizdat:invite/")
    assert set(text.removeprefix("samizdat:invite/")) <= LINK_ALPHABET
    assert decode_invite(text) == invite


@given(s.invites)
def test_payload_is_unpadded_base64url_msgpack(invite: Invite) -> None:
    payload = encode_invite(invite).removeprefix("samizdat:invite/")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    assert raw == msgspec.msgpack.encode(invite)
    assert "=" not in payload


def test_kinds_are_not_interchangeable() -> None:
    link = encode_server_link(ServerLink(version=1, descriptor=_descriptor()))
    with pytest.raises(ProtocolError):
        decode_invite(link)
    with pytest.raises(ProtocolError):
        decode_invite(link.replace("samizdat:server/", "samizdat:invite/"))


def test_overlong_link_is_rejected_before_decoding() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_invite("samizdat:invite/" + "A" * MAX_LINK)
    assert info.value.code is ErrorCode.BAD_FRAME


@given(st.text(max_size=300))
@example("samizdat:invite/")
@example("samizdat:invite/A")
@example("samizdat:invite/é")
@example("samizdat:server/gA")
@example("samizdat:server/!!!!")
def test_garbage_raises_only_protocol_error(text: str) -> None:
    for prefix in ("", "samizdat:server/", "samizdat:invite/"):
        for decode in (decode_server_link, decode_invite):
            try:
                decode(prefix + text)
            except ProtocolError as exc:
                assert exc.code is ErrorCode.BAD_FRAME


@given(st.binary(max_size=300))
def test_garbage_payload_raises_only_protocol_error(payload: bytes) -> None:
    encoded = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    with pytest.raises(ProtocolError):
        decode_server_link("samizdat:server/" + encoded)
    with pytest.raises(ProtocolError):
        decode_invite("samizdat:invite/" + encoded)


def test_version_zero_is_rejected() -> None:
    raw = msgspec.msgpack.encode({"version": 0, "descriptor": _descriptor()})
    text = "samizdat:server/" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    with pytest.raises(ProtocolError):
        decode_server_link(text)


def _descriptor() -> SignedDescriptor:
    return sign_descriptor(
        Descriptor(
            server_key=s.KEYS[0].public_bytes,
            seq=0,
            endpoints=[Endpoint(url="wss://127.0.0.1:1/v1/ws")],
            tls_ca=b"",
            tls_pin=b"p" * 32,
            issued_at=0,
            expires_at=1,
        ),
        s.KEYS[0],
    )


def test_invalid_utf8_in_invite_is_bad_frame() -> None:
    card = ContactCard(
        devices=SignedDeviceList(body=b"", signature=b"s" * 64),
        server=_descriptor(),
        token=b"t" * 32,
        name="\x7f",
    )
    raw = msgspec.msgpack.encode(Invite(version=1, card=card)).replace(b"\xa1\x7f", b"\xa1\xff")
    text = "samizdat:invite/" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    with pytest.raises(ProtocolError) as info:
        decode_invite(text)
    assert info.value.code is ErrorCode.BAD_FRAME
