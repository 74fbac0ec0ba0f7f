"""Device keys, signed device lists and one-time keys (docs/protocol.md §3).

A user key (Ed25519) signs the list of that user's devices; each device signs its own
one-time and fallback keys with its Ed25519 key. Verification lives here so that the
server and the client check exactly the same thing.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

import msgspec
from msgspec import Meta

from samizdat.crypto.signing import verify
from samizdat.errors import ErrorCode, ProtocolError, SignatureError
from samizdat.protocol import limits
from samizdat.protocol.types import DeviceId, Key32, Millis, Sig64, Text

__all__ = [
    "DEVICE_LIST_CONTEXT",
    "ONE_TIME_KEY_CONTEXT",
    "AUTH_CONTEXT",
    "DeviceKeys",
    "DeviceList",
    "SignedDeviceList",
    "SignedKey",
    "device_id_for",
    "decode_device_list",
    "verify_device_list",
    "verify_signed_key",
    "one_time_key_message",
    "auth_message",
]

DEVICE_LIST_CONTEXT = b"samizdat/device-list/v1"
ONE_TIME_KEY_CONTEXT = b"samizdat/one-time-key/v1"
AUTH_CONTEXT = b"samizdat/auth/v1"


def device_id_for(signing_key: bytes) -> bytes:
    """A device's id is derived from its Ed25519 key, so it cannot be claimed by another."""
    return hashlib.sha256(signing_key).digest()[:16]


class DeviceKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """The public keys of one device."""

    device_id: DeviceId
    #: Ed25519: signs one-time keys and authentication challenges.
    signing_key: Key32
    #: Curve25519 Olm identity key.
    identity_key: Key32
    #: Curve25519 key that sealed-sender envelopes are encrypted to (§6).
    sealing_key: Key32


class DeviceList(msgspec.Struct, frozen=True):
    """The devices of one user, as signed by the user key."""

    user_key: Key32
    devices: Annotated[list[DeviceKeys], Meta(min_length=1, max_length=limits.MAX_DEVICES)]
    #: Increases with every change; a client keeps the highest it has verified.
    version: Annotated[int, Meta(ge=0)]
    issued_at: Millis
    display_name: Text = ""


class SignedDeviceList(msgspec.Struct, frozen=True):
    """``body``: msgpack of a :class:`DeviceList`; ``signature``: by its user key."""

    body: Annotated[bytes, Meta(max_length=8192)]
    signature: Sig64


class SignedKey(msgspec.Struct, frozen=True):
    """A one-time or fallback Curve25519 key, signed by the device's Ed25519 key."""

    key_id: Annotated[str, Meta(min_length=1, max_length=64)]
    key: Key32
    signature: Sig64
    fallback: bool = False


_device_list_decoder = msgspec.msgpack.Decoder(DeviceList)


def decode_device_list(signed: SignedDeviceList) -> DeviceList:
    """Verify and decode a signed device list.

    Raises:
        ProtocolError: the body is malformed, or ``bad_signature`` if the user key did not sign it.
    """
    try:
        device_list = _device_list_decoder.decode(signed.body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, "malformed device list") from exc
    verify_device_list(device_list, signed)
    return device_list


def verify_device_list(device_list: DeviceList, signed: SignedDeviceList) -> None:
    try:
        verify(device_list.user_key, DEVICE_LIST_CONTEXT, signed.body, signed.signature)
    except SignatureError as exc:
        raise ProtocolError(ErrorCode.BAD_SIGNATURE, "device list signature") from exc
    for device in device_list.devices:
        if device.device_id != device_id_for(device.signing_key):
            raise ProtocolError(ErrorCode.BAD_FRAME, "device id does not match its key")


def one_time_key_message(key_id: str, key: bytes, fallback: bool) -> bytes:
    """The bytes a device signs for a one-time (or fallback) key."""
    return key_id.encode() + b"\x00" + key + (b"\x01" if fallback else b"\x00")


def verify_signed_key(signing_key: bytes, key: SignedKey) -> None:
    """Raises ProtocolError(bad_signature) unless the device signed this key."""
    try:
        verify(
            signing_key,
            ONE_TIME_KEY_CONTEXT,
            one_time_key_message(key.key_id, key.key, key.fallback),
            key.signature,
        )
    except SignatureError as exc:
        raise ProtocolError(ErrorCode.BAD_SIGNATURE, "one-time key signature") from exc


def auth_message(server_key: bytes, nonce: bytes, device_id: bytes) -> bytes:
    """What a device signs to prove it holds its key on this connection (§5.2)."""
    return server_key + nonce + device_id
