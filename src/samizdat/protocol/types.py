"""Field types shared by every wire structure (docs/protocol.md §2)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from samizdat.protocol import limits

__all__ = [
    "Key32",
    "Sig64",
    "DeviceId",
    "MsgId",
    "Token",
    "Text",
    "Url",
    "Seq",
    "RequestId",
    "Millis",
]

#: A raw 32-byte public key (Ed25519 or Curve25519).
Key32 = Annotated[bytes, Meta(min_length=32, max_length=32)]
#: A raw 64-byte Ed25519 signature.
Sig64 = Annotated[bytes, Meta(min_length=64, max_length=64)]
#: A device id: the first 16 bytes of SHA-256 over the device's Ed25519 key.
DeviceId = Annotated[bytes, Meta(min_length=16, max_length=16)]
#: A client-chosen envelope id, unique per mailbox; a retry reuses it.
MsgId = Annotated[bytes, Meta(min_length=16, max_length=16)]
#: A delivery token: 32 random bytes a recipient hands out; the server stores its hash.
Token = Annotated[bytes, Meta(min_length=32, max_length=32)]
Text = Annotated[str, Meta(max_length=limits.MAX_TEXT)]
Url = Annotated[str, Meta(max_length=limits.MAX_URL)]
Seq = Annotated[int, Meta(ge=0, le=2**63 - 1)]
RequestId = Annotated[int, Meta(ge=0, le=2**31 - 1)]
#: Milliseconds since the Unix epoch.
Millis = Annotated[int, Meta(ge=0, le=2**53)]
