"""Test helpers: devices and users built from plain Ed25519 keys, and a frame client."""

from __future__ import annotations

import hashlib
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import msgspec
from cryptography import x509
from websockets.asyncio.client import ClientConnection, connect

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
from samizdat.server.bus.local import LocalBus
from samizdat.server.identity import endpoint_url, load_or_create_identity, spki_pin
from samizdat.server.ratelimit import KeyedBuckets, RateLimits
from samizdat.server.session import ConsumerRegistry, Session, SessionDeps
from samizdat.server.store.base import Store

NOW_MS = 1_800_000_000_000


@dataclass
class Device:
    signing: SigningKey = field(repr=False)
    keys: DeviceKeys

    @property
    def device_id(self) -> bytes:
        return self.keys.device_id

    @classmethod
    def generate(cls) -> Device:
        signing = SigningKey.generate()
        return cls(
            signing=signing,
            keys=DeviceKeys(
                device_id=device_id_for(signing.public_bytes),
                signing_key=signing.public_bytes,
                # Curve25519 keys are opaque to the server: random bytes will do.
                identity_key=os.urandom(32),
                sealing_key=os.urandom(32),
            ),
        )

    def proof(self, server_key: bytes, nonce: bytes) -> bytes:
        return self.signing.sign(AUTH_CONTEXT, auth_message(server_key, nonce, self.device_id))

    def signed_key(self, key_id: str, fallback: bool = False) -> SignedKey:
        key = os.urandom(32)
        return SignedKey(
            key_id=key_id,
            key=key,
            signature=self.signing.sign(
                ONE_TIME_KEY_CONTEXT, one_time_key_message(key_id, key, fallback)
            ),
            fallback=fallback,
        )


@dataclass
class User:
    signing: SigningKey = field(repr=False)
    devices: list[Device]
    version: int = 1

    @property
    def user_key(self) -> bytes:
        return self.signing.public_bytes

    @classmethod
    def generate(cls, n_devices: int = 1) -> User:
        return cls(SigningKey.generate(), [Device.generate() for _ in range(n_devices)])

    def device_list(self) -> DeviceList:
        return DeviceList(
            user_key=self.user_key,
            devices=[d.keys for d in self.devices],
            version=self.version,
            issued_at=NOW_MS,
        )

    def signed_list(self) -> SignedDeviceList:
        body = msgspec.msgpack.encode(self.device_list())
        return SignedDeviceList(body=body, signature=self.signing.sign(DEVICE_LIST_CONTEXT, body))


def token_hash(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def client_ssl_context(descriptor: Descriptor) -> ssl.SSLContext:
    """Trust the descriptor's CA alone, hostname check off: what the real client does."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=descriptor.tls_ca)
    return context


class FrameClient:
    """A minimal protocol client over a real TLS WebSocket."""

    def __init__(self, link: str) -> None:
        signed = decode_server_link(link).descriptor
        self.descriptor = open_descriptor(signed, int(time.time() * 1000))
        self.url = self.descriptor.endpoints[0].url
        self._ws: ClientConnection | None = None
        self.welcome: f.Welcome | None = None
        self._rid = 0

    @property
    def ws(self) -> ClientConnection:
        assert self._ws is not None
        return self._ws

    async def __aenter__(self) -> FrameClient:
        self._ws = await connect(
            self.url,
            ssl=client_ssl_context(self.descriptor),
            proxy=None,
            compression=None,
            max_size=2**20,
        )
        # Pin check: the leaf's public key must be the one the descriptor names.
        ssl_object = self.ws.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        assert spki_pin(x509.load_der_x509_certificate(der)) == self.descriptor.tls_pin
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.ws.close()

    def rid(self) -> int:
        self._rid += 1
        return self._rid

    async def send(self, frame: f.ClientFrame) -> None:
        await self.ws.send(f.encode(frame))

    async def send_raw(self, data: bytes) -> None:
        await self.ws.send(data)

    async def recv(self) -> f.ServerFrame:
        data = await self.ws.recv()
        assert isinstance(data, bytes)
        return f.decode_server_frame(data)

    async def hello(self) -> f.Welcome:
        await self.send(f.Hello(versions=[1], client="test"))
        welcome = await self.recv()
        assert isinstance(welcome, f.Welcome)
        self.welcome = welcome
        return welcome

    @property
    def nonce(self) -> bytes:
        assert self.welcome is not None
        return self.welcome.nonce

    async def request(self, frame: f.ClientFrame) -> f.ServerFrame:
        await self.send(frame)
        answer = await self.recv()
        assert getattr(answer, "rid", None) == getattr(frame, "rid", None), answer
        return answer

    async def register(self, user: User, device: Device) -> f.AuthOk:
        answer = await self.request(
            f.Register(
                rid=self.rid(),
                device=device.keys,
                devices=user.signed_list(),
                proof=device.proof(self.descriptor.server_key, self.nonce),
            )
        )
        assert isinstance(answer, f.AuthOk), answer
        return answer

    async def expect_error(self, frame: f.ClientFrame, code: str) -> f.Error:
        answer = await self.request(frame)
        assert isinstance(answer, f.Error), answer
        assert answer.code == code, answer
        return answer


def memory_deps(
    store: Store,
    tmp: Path,
    *,
    limits: f.Limits | None = None,
    token_buckets: KeyedBuckets | None = None,
    now_ms: Callable[[], int] | None = None,
) -> SessionDeps:
    """What sessions driven in memory (no network) share: a real identity and store."""
    identity = load_or_create_identity(tmp / "id", ["127.0.0.1"])
    return SessionDeps(
        store=store,
        bus=LocalBus(),
        server_key=identity.server_key,
        descriptor=identity.descriptor([endpoint_url("127.0.0.1", 1)], int(time.time() * 1000)),
        limits=limits or f.Limits(),
        rate_limits=RateLimits(),
        consumers=ConsumerRegistry(),
        token_buckets=token_buckets or KeyedBuckets(1000, 1000, 100),
        monotonic=time.monotonic,
        now_ms=now_ms or (lambda: int(time.time() * 1000)),
        random_bytes=os.urandom,
    )


async def registered_session(deps: SessionDeps) -> tuple[Session, User, bytes]:
    """A session in memory with a newly registered device and one delivery token."""
    session = Session(deps)
    await session.receive_bytes(f.encode(f.Hello(versions=[1])))
    welcome = await session.next_frame()
    assert isinstance(welcome, f.Welcome)
    user = User.generate()
    device = user.devices[0]
    register = f.Register(
        rid=1,
        device=device.keys,
        devices=user.signed_list(),
        proof=device.proof(deps.server_key, welcome.nonce),
    )
    await session.receive_bytes(f.encode(register))
    assert isinstance(await session.next_frame(), f.AuthOk)
    token = os.urandom(32)
    await session.receive_bytes(f.encode(f.AddToken(rid=2, token=token)))
    assert isinstance(await session.next_frame(), f.Ok)
    return session, user, token
