"""Documented limits (docs/protocol.md §8) that had no "limit + 1 is refused" test.

Each case builds a frame or structure exactly at the limit (accepted) and one step over
it (refused with the documented error). The other limits of §8 are proven where their
owner's tests live; docs/reliability.md lists where each one is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from samizdat.errors import ErrorCode, ProtocolError
from samizdat.protocol import frames as f
from samizdat.protocol.descriptor import MAX_ROTATIONS, Descriptor
from samizdat.protocol.keys import SignedDeviceList
from samizdat.protocol.links import MAX_LINK, decode_invite

_SIG = bytes(64)


def _hello(versions: int) -> Callable[[], object]:
    frame = {"t": "hello", "versions": [1] * versions, "client": "x"}
    return lambda: f.decode_client_frame(msgspec.msgpack.encode(frame))


def _device_list_body(size: int) -> Callable[[], object]:
    encoded = msgspec.msgpack.encode(SignedDeviceList(body=bytes(size), signature=_SIG))
    return lambda: msgspec.msgpack.decode(encoded, type=SignedDeviceList)


def _descriptor_body(size: int) -> Callable[[], object]:
    welcome = {
        "t": "welcome",
        "version": 1,
        "nonce": bytes(32),
        "descriptor": {"body": bytes(size), "signature": _SIG},
        "server_time": 1,
        "limits": {
            "max_frame": 1,
            "max_envelope_body": 1,
            "max_envelopes_per_deposit": 1,
            "max_mailbox_entries": 1,
            "max_keys_per_upload": 1,
        },
    }
    return lambda: f.decode_server_frame(msgspec.msgpack.encode(welcome))


def _descriptor(rotations: int = 0, rotation_body: int = 1) -> dict[str, Any]:
    return {
        "server_key": bytes(32),
        "seq": 1,
        "endpoints": [{"url": "wss://127.0.0.1:1/v1/ws"}],
        "tls_ca": b"",
        "tls_pin": bytes(32),
        "issued_at": 1,
        "expires_at": 2,
        "rotations": [{"body": bytes(rotation_body), "old_signature": _SIG, "new_signature": _SIG}]
        * rotations,
    }


def _rotations(n: int) -> Callable[[], object]:
    encoded = msgspec.msgpack.encode(_descriptor(rotations=n))
    return lambda: msgspec.msgpack.decode(encoded, type=Descriptor)


def _rotation_body(size: int) -> Callable[[], object]:
    encoded = msgspec.msgpack.encode(_descriptor(rotations=1, rotation_body=size))
    return lambda: msgspec.msgpack.decode(encoded, type=Descriptor)


def _link(length: int) -> Callable[[], object]:
    prefix = "samizdat:invite/"
    return lambda: decode_invite(prefix + "A" * (length - len(prefix)))


CASES: dict[str, tuple[Callable[[int], Callable[[], object]], int]] = {
    "versions in hello (16)": (_hello, 16),
    "SignedDeviceList.body (8192 bytes)": (_device_list_body, 8192),
    "SignedDescriptor.body (16384 bytes)": (_descriptor_body, 16384),
    "rotations per descriptor (4)": (_rotations, MAX_ROTATIONS),
    "SignedRotation.body (256 bytes)": (_rotation_body, 256),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_limit_passes_and_one_more_is_refused(name: str) -> None:
    make, limit = CASES[name]
    make(limit)()  # raises if the limit itself were refused
    with pytest.raises((ProtocolError, msgspec.ValidationError)) as caught:
        make(limit + 1)()
    if isinstance(caught.value, ProtocolError):
        assert caught.value.code == ErrorCode.BAD_FRAME


def test_hello_needs_at_least_one_version() -> None:
    with pytest.raises(ProtocolError) as caught:
        _hello(0)()
    assert caught.value.code == ErrorCode.BAD_FRAME


def test_a_link_one_character_over_the_limit_is_refused_for_its_length() -> None:
    # At the limit it gets past the length check (and fails later, on its content).
    with pytest.raises(ProtocolError) as at_limit:
        _link(MAX_LINK)()
    with pytest.raises(ProtocolError) as over:
        _link(MAX_LINK + 1)()
    assert str(over.value) == "bad_frame: not a samizdat invite link"
    assert str(at_limit.value) != str(over.value)
