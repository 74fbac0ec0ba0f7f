"""Fuzz targets: one function per parser that reads hostile input, and its documented errors.

Each target takes raw bytes. A target may raise only the errors its parser documents
(``ProtocolError`` for wire and link parsing, ``DecryptionError`` for envelopes); any other
exception is a crash. Seeds are valid encodings drawn from tests/protocol/strategies.py so
the fuzzer starts from well-formed input and mutates from there.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from samizdat.errors import DecryptionError, ProtocolError
from samizdat.protocol import control, frames, links, relay
from samizdat.protocol.blobs import Attachment, decode_attachment, encode_attachment
from samizdat.protocol.descriptor import SignedDescriptor, open_descriptor
from samizdat.protocol.envelope import (
    decode_payload,
    decode_sealed,
    decode_sealed_box,
    encode_struct,
)

__all__ = ["TARGETS", "Target", "seeds"]

_signed_descriptor = msgspec.msgpack.Decoder(SignedDescriptor)


def _text(data: bytes) -> str:
    # Links and proofs arrive as text (pasted, scanned, HTTP headers): any code point.
    return data.decode("utf-8", "surrogatepass") if _utf8(data) else data.decode("latin-1")


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return False
    return True


def _descriptor(data: bytes) -> None:
    try:
        signed = _signed_descriptor.decode(data)
    except msgspec.DecodeError:
        return  # the envelope around the body is the frame decoder's job, fuzzed above
    open_descriptor(signed, 1_700_000_000_000)
    open_descriptor(signed, 1_700_000_000_000, expected_key=bytes(32))


def _relay_head(data: bytes) -> None:
    head = relay.parse_request_head(data)
    relay.find_proof(head)


@dataclass(frozen=True)
class Target:
    run: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...]


TARGETS: dict[str, Target] = {
    "client_frame": Target(frames.decode_client_frame, (ProtocolError,)),
    "server_frame": Target(frames.decode_server_frame, (ProtocolError,)),
    "server_link": Target(lambda d: links.decode_server_link(_text(d)), (ProtocolError,)),
    "invite_link": Target(lambda d: links.decode_invite(_text(d)), (ProtocolError,)),
    "relay_link": Target(lambda d: links.decode_relay_link(_text(d)), (ProtocolError,)),
    "descriptor": Target(_descriptor, (ProtocolError,)),
    "relay_head": Target(_relay_head, (ProtocolError,)),
    "relay_proof": Target(lambda d: relay.decode_proof(_text(d)), (ProtocolError,)),
    "sealed_box": Target(decode_sealed_box, (DecryptionError,)),
    "sealed": Target(decode_sealed, (DecryptionError,)),
    "payload": Target(decode_payload, (DecryptionError,)),
    "control": Target(control.decode_control, (ProtocolError, DecryptionError)),
    "group_box": Target(control.decode_group_box, (ProtocolError, DecryptionError)),
    # An attachment pointer, inside a decrypted payload (H6A; blob frames are fuzzed as
    # client and server frames). Its documented error is msgspec's DecodeError.
    "attachment": Target(decode_attachment, (msgspec.DecodeError,)),
}


def seeds(name: str, count: int = 20) -> list[bytes]:
    """Valid inputs for ``name`` (hypothesis examples of the matching strategy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # .example() warns that it is not for tests
        from tests.protocol import strategies as s

        def many(strategy: object, encode: Callable[[object], bytes]) -> list[bytes]:
            return [encode(strategy.example()) for _ in range(count)]  # type: ignore[attr-defined]

        packb = msgspec.msgpack.encode
        table: dict[str, Callable[[], list[bytes]]] = {
            "client_frame": lambda: many(s.client_frames, frames.encode),  # type: ignore[arg-type]
            "server_frame": lambda: many(s.server_frames, frames.encode),  # type: ignore[arg-type]
            "server_link": lambda: many(
                s.server_links,
                lambda v: links.encode_server_link(v).encode(),  # type: ignore[arg-type]
            ),
            "invite_link": lambda: many(
                s.invites,
                lambda v: links.encode_invite(v).encode(),  # type: ignore[arg-type]
            ),
            "descriptor": lambda: many(s.signed_descriptors(), packb),
            "sealed_box": lambda: many(s.sealed_boxes, encode_struct),  # type: ignore[arg-type]
            "sealed": lambda: many(s.sealeds, encode_struct),  # type: ignore[arg-type]
            "payload": lambda: many(s.payloads, encode_struct),  # type: ignore[arg-type]
            "relay_head": lambda: [
                b"GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " + b"A" * 128 + b"\r\n\r\n",
                b"GET / HTTP/1.0\r\n\r\n",
            ],
            "relay_proof": lambda: [b"A" * 128],
            "attachment": lambda: [
                encode_attachment(
                    Attachment(
                        blob_id=bytes(16),
                        secret=bytes(32),
                        key=bytes(32),
                        sha256=bytes(32),
                        size=1234,
                        server=s.signed_descriptors().example(),
                        name="photo.jpg",
                        media_type="image/jpeg",
                    )
                )
            ],
        }
        return table.get(name, lambda: [b""])()
