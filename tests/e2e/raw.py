"""A raw protocol peer written from docs/protocol.md, independent of samizdat.client.

Tests use it to send what a well-behaved client never would.
"""

from __future__ import annotations

import hashlib
import secrets
import ssl
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import websockets
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from samizdat.crypto.signing import SigningKey
from samizdat.protocol import frames as f
from samizdat.protocol.descriptor import Descriptor, open_descriptor
from samizdat.protocol.keys import (
    AUTH_CONTEXT,
    DEVICE_LIST_CONTEXT,
    ONE_TIME_KEY_CONTEXT,
    DeviceKeys,
    DeviceList,
    SignedDeviceList,
    SignedKey,
    auth_message,
    device_id_for,
    one_time_key_message,
)
from samizdat.protocol.links import decode_server_link

__all__ = ["RawConnection", "RawDevice", "descriptor_of"]


def descriptor_of(link: str) -> Descriptor:
    return open_descriptor(decode_server_link(link).descriptor, int(time.time() * 1000))


def pinned_context(descriptor: Descriptor) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=descriptor.tls_ca)
    return ctx


@dataclass
class RawDevice:
    """A device made of plain Ed25519/X25519-shaped keys (no Olm needed to talk to a server)."""

    user: SigningKey
    device: SigningKey
    keys: DeviceKeys
    devices: SignedDeviceList

    @classmethod
    def generate(cls) -> RawDevice:
        user, device = SigningKey.generate(), SigningKey.generate()
        keys = DeviceKeys(
            device_id=device_id_for(device.public_bytes),
            signing_key=device.public_bytes,
            identity_key=secrets.token_bytes(32),
            sealing_key=secrets.token_bytes(32),
        )
        body = msgspec.msgpack.encode(
            DeviceList(
                user_key=user.public_bytes,
                devices=[keys],
                version=1,
                issued_at=int(time.time() * 1000),
            )
        )
        signed = SignedDeviceList(body=body, signature=user.sign(DEVICE_LIST_CONTEXT, body))
        return cls(user, device, keys, signed)

    @property
    def device_id(self) -> bytes:
        return self.keys.device_id

    def signed_key(self, key_id: str, fallback: bool = False) -> SignedKey:
        key = secrets.token_bytes(32)
        sig = self.device.sign(ONE_TIME_KEY_CONTEXT, one_time_key_message(key_id, key, fallback))
        return SignedKey(key_id=key_id, key=key, signature=sig, fallback=fallback)


class RawConnection:
    #: Every connection opened; the e2e conftest closes them after each test.
    opened: list[RawConnection] = []

    def __init__(self, ws: Any, welcome: f.Welcome, descriptor: Descriptor) -> None:
        self.ws = ws
        self.welcome = welcome
        self.descriptor = descriptor
        self._rid = 0
        self.delivered: list[f.Entry] = []
        RawConnection.opened.append(self)

    @classmethod
    async def open(cls, link: str) -> RawConnection:
        descriptor = descriptor_of(link)
        ws = await websockets.connect(
            descriptor.endpoints[0].url, ssl=pinned_context(descriptor), max_size=2**22
        )
        peer = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        spki = (
            x509.load_der_x509_certificate(peer)
            .public_key()
            .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        )
        assert hashlib.sha256(spki).digest() == descriptor.tls_pin
        await ws.send(f.encode(f.Hello(versions=[1], client="raw-test")))
        welcome = await cls._recv(ws)
        assert isinstance(welcome, f.Welcome), welcome
        return cls(ws, welcome, descriptor)

    @staticmethod
    async def _recv(ws: Any) -> f.ServerFrame:
        raw = await ws.recv()
        assert isinstance(raw, bytes)
        return f.decode_server_frame(raw, max_frame=2**22)

    def rid(self) -> int:
        self._rid += 1
        return self._rid

    async def send_raw(self, data: bytes) -> None:
        await self.ws.send(data)

    async def recv(self) -> f.ServerFrame:
        """The next frame that is not a delivery (deliveries are kept in ``delivered``)."""
        while True:
            frame = await self._recv(self.ws)
            if isinstance(frame, f.Deliver):
                self.delivered.extend(frame.entries)
                continue
            return frame

    async def recv_delivery(self) -> None:
        """Wait for one more frame; keep the entries if it is a delivery."""
        frame = await self._recv(self.ws)
        if isinstance(frame, f.Deliver):
            self.delivered.extend(frame.entries)

    async def call(self, frame: f.ClientFrame) -> f.ServerFrame:
        await self.ws.send(f.encode(frame))
        return await self.recv()

    def proof(self, device: RawDevice) -> bytes:
        message = auth_message(self.descriptor.server_key, self.welcome.nonce, device.device_id)
        return device.device.sign(AUTH_CONTEXT, message)

    async def register(self, device: RawDevice) -> f.ServerFrame:
        return await self.call(
            f.Register(
                rid=self.rid(), device=device.keys, devices=device.devices, proof=self.proof(device)
            )
        )

    async def auth(self, device: RawDevice) -> f.ServerFrame:
        return await self.call(
            f.Auth(rid=self.rid(), device_id=device.device_id, proof=self.proof(device))
        )

    async def close(self) -> None:
        await self.ws.close()
