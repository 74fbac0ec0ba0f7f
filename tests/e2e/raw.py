"""A raw protocol peer written from docs/protocol.md, independent of samizdat.client.

Tests use it to send what a well-behaved client never would.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import websockets
from cryptography import x509

from samizdat.protocol import frames as f
from samizdat.protocol.descriptor import Descriptor, open_descriptor
from samizdat.protocol.keys import DeviceKeys, SignedDeviceList
from samizdat.protocol.links import decode_server_link
from samizdat.server.identity import spki_pin
from tests.server.helpers import Device, User, client_ssl_context

__all__ = ["RawConnection", "RawDevice", "descriptor_of"]


def descriptor_of(link: str) -> Descriptor:
    return open_descriptor(decode_server_link(link).descriptor, int(time.time() * 1000))


# The CA-only TLS context the real client starts from (the pin is checked separately).
pinned_context = client_ssl_context


@dataclass
class RawDevice:
    """A one-device user made of plain Ed25519 keys (no Olm needed to talk to a server)."""

    user: User

    @classmethod
    def generate(cls) -> RawDevice:
        return cls(User.generate())

    @property
    def device(self) -> Device:
        return self.user.devices[0]

    @property
    def keys(self) -> DeviceKeys:
        return self.device.keys

    @property
    def devices(self) -> SignedDeviceList:
        return self.user.signed_list()

    @property
    def device_id(self) -> bytes:
        return self.device.device_id


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
        assert spki_pin(x509.load_der_x509_certificate(peer)) == descriptor.tls_pin
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
        return device.device.proof(self.descriptor.server_key, self.welcome.nonce)

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
