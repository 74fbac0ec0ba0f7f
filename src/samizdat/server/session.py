"""One client connection: every frame of protocol/frames.py, server side (DESIGN §5).

The session knows nothing of WebSockets. Its driver feeds it each received binary message
with :meth:`Session.receive_bytes` and sends every frame the session produces: the
WebSocket front (``front.py``) gives the session a sink that sends at once, the long-poll
driver (``poll.py``) takes frames with :meth:`Session.drain_frames`; ``None`` means close
the connection.
Every request is answered in order, through one bounded outbox, so ``Ok`` to a
``Subscribe`` always precedes the ``Deliver`` frames it starts, and a client that does
not read slows down only itself.

A subscribed session runs one delivery task: it fetches entries after its cursor from
the store and pushes them, then sleeps until the bus says the mailbox has news. The store
is the truth; the bus only says "look again".
"""

from __future__ import annotations

import asyncio
import collections
import enum
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import msgspec

from samizdat.crypto.signing import verify
from samizdat.errors import ErrorCode, ProtocolError, SignatureError
from samizdat.protocol import blobs as b
from samizdat.protocol import frames as f
from samizdat.protocol import limits
from samizdat.protocol.descriptor import SignedDescriptor
from samizdat.protocol.keys import (
    AUTH_CONTEXT,
    auth_message,
    decode_device_list,
    verify_signed_key,
)
from samizdat.server.blobs import BlobService
from samizdat.server.budgets import ClaimBudgets, LocalClaimBudgets
from samizdat.server.bus.base import Bus, Subscription
from samizdat.server.outbox import Outbox
from samizdat.server.ratelimit import KeyedBuckets, RateLimits, TokenBucket
from samizdat.server.store.base import DepositItem, KeyCounts, MailboxEntry, Store

__all__ = ["SessionDeps", "ConsumerRegistry", "Session", "token_hash"]

_log = logging.getLogger(__name__)

#: Frames queued for sending before the session stops reading (backpressure).
OUTBOX_SIZE: Final = 32
#: Bytes a Deliver frame and each entry add around the bodies (generous).
_DELIVER_OVERHEAD: Final = 64
_ENTRY_OVERHEAD: Final = 96
#: Delivery token hashes a session memoises (a sender's contacts); past this, forgotten.
_TOKEN_HASHES_HELD: Final = 16
#: Deposits of one connection waiting for their commit at once; the next one waits.
PIPELINE_DEPTH: Final = 16


def token_hash(token: bytes) -> bytes:
    """What the store keeps of a delivery token."""
    return hashlib.sha256(token).digest()


class ConsumerRegistry:
    """Which session consumes which mailbox, on this node: one at a time (DESIGN §5)."""

    def __init__(self) -> None:
        self._by_device: dict[bytes, Session] = {}

    def __repr__(self) -> str:
        return f"ConsumerRegistry(consumers={len(self._by_device)})"

    def __len__(self) -> int:
        return len(self._by_device)

    def claim(self, device_id: bytes, session: Session) -> Session | None:
        """Make ``session`` the consumer; returns the one it replaces, if any."""
        previous = self._by_device.get(device_id)
        self._by_device[device_id] = session
        return None if previous is session else previous

    def release(self, device_id: bytes, session: Session) -> None:
        if self._by_device.get(device_id) is session:
            del self._by_device[device_id]


@dataclass
class SessionDeps:
    """What every session of one server shares; built by the composition root."""

    store: Store
    bus: Bus
    server_key: bytes
    descriptor: SignedDescriptor
    limits: f.Limits
    rate_limits: RateLimits
    consumers: ConsumerRegistry
    token_buckets: KeyedBuckets
    #: Monotonic seconds, for rate limits.
    monotonic: Callable[[], float]
    #: Wall-clock milliseconds since the epoch.
    now_ms: Callable[[], int]
    random_bytes: Callable[[int], bytes]
    #: One-time key claims per (token hash, device id); see RateLimits.claim_rate.
    claim_budgets: ClaimBudgets = field(default_factory=lambda: LocalClaimBudgets(RateLimits()))
    #: Attachment blobs (server/blobs.py); None: blob frames answer ``not_found``.
    blobs: BlobService | None = None

    def __repr__(self) -> str:
        return "SessionDeps(...)"


class _State(enum.Enum):
    AWAIT_HELLO = "await_hello"
    OPEN = "open"
    CLOSING = "closing"


class _RidOnly(msgspec.Struct):
    rid: int | None = None


_rid_decoder = msgspec.msgpack.Decoder(_RidOnly)

_AUTHENTICATED: Final = (f.UploadKeys, f.AddToken, f.RevokeToken, f.Subscribe, f.Ack)


def _rid_of(data: bytes) -> int | None:
    """Best effort: the rid of a frame that did not decode, to address the error."""
    try:
        rid = _rid_decoder.decode(data).rid
    except (msgspec.DecodeError, TypeError, ValueError):
        return None
    if rid is None or not 0 <= rid <= 2**31 - 1:
        return None
    return rid


class Session:
    """The server side of one connection. Never shows which device it serves."""

    def __init__(
        self, deps: SessionDeps, sink: Callable[[f.ServerFrame | None], object] | None = None
    ) -> None:
        """``sink``: a driver that sends at once (the WebSocket front) gets every frame
        handed to it as the session produces it (``None``: close), instead of fetching
        frames with :meth:`next_frame`; see :meth:`pause_output`."""
        self._deps = deps
        self._state = _State.AWAIT_HELLO
        self._outbox: Outbox[f.ServerFrame | None] = Outbox(OUTBOX_SIZE)
        if sink is not None:
            self._outbox.attach(sink)
        self._nonce = b""
        self._device_id: bytes | None = None
        self._user_key: bytes | None = None
        self._signing_key = b""
        self._pump: asyncio.Task[None] | None = None
        # token -> token_hash(token), for the tokens this connection deposits under.
        self._token_hashes: dict[bytes, bytes] = {}
        # Deposits waiting for their commit, oldest first (made at the first deposit).
        self._pipeline: collections.deque[asyncio.Task[None]] | None = None
        self._bucket = TokenBucket(
            deps.rate_limits.connection_rate, deps.rate_limits.connection_burst, deps.monotonic()
        )

    def __repr__(self) -> str:
        return f"Session(state={self._state.value}, authenticated={self.authenticated})"

    @property
    def authenticated(self) -> bool:
        return self._device_id is not None

    @property
    def closing(self) -> bool:
        return self._state is _State.CLOSING

    # -- driver interface ---------------------------------------------------------------

    async def next_frame(self) -> f.ServerFrame | None:
        """The next frame to send; ``None`` means close the connection now."""
        return await self._outbox.get()

    def drain_frames(self, limit: int) -> tuple[list[f.ServerFrame], bool]:
        """Up to ``limit`` frames ready now, and whether the close marker came (long-poll)."""
        out: list[f.ServerFrame] = []
        while len(out) < limit and not self._outbox.empty():
            frame = self._outbox.get_nowait()
            if frame is None:
                return out, True
            out.append(frame)
        return out, False

    def pause_output(self) -> None:
        """The sink cannot take more now: queue frames; once the outbox is full, handlers
        and delivery wait (backpressure)."""
        self._outbox.pause()

    def resume_output(self) -> None:
        """The sink can take frames again: hand it the queued ones."""
        self._outbox.resume()

    def push_descriptor(self, descriptor: SignedDescriptor) -> None:
        """Tell the client about a re-issued descriptor (protocol §5.3.9), if there is room.

        A full outbox skips it: the client gets the descriptor in its next ``Welcome``.
        """
        if self._state is _State.OPEN and not self._outbox.full():
            self._outbox.put_nowait(f.DescriptorUpdate(descriptor=descriptor))

    async def receive_bytes(self, data: bytes) -> None:
        """Handle one binary message from the client; answers go to the outbox."""
        if self._state is _State.CLOSING:
            return
        if not self._bucket.allow(self._deps.monotonic()):
            await self._drain_pipeline()
            await self._send(f.Error(rid=_rid_of(data), code=ErrorCode.RATE_LIMITED))
            return
        try:
            frame = f.decode_client_frame(data, self._deps.limits.max_frame)
        except ProtocolError as exc:
            await self._drain_pipeline()
            await self._send(f.Error(rid=_rid_of(data), code=exc.code, message=exc.message))
            return
        if type(frame) is f.Deposit and self._state is _State.OPEN:
            await self._pipeline_deposit(frame)
            return
        await self._drain_pipeline()
        await self._handle(frame)

    async def receive_text(self) -> None:
        """A text message: frames are binary only."""
        await self._send(f.Error(rid=None, code=ErrorCode.BAD_FRAME, message="binary frames only"))

    async def close(self) -> None:
        """The connection is gone: stop delivery and give up the mailbox."""
        self._state = _State.CLOSING
        await self._stop_pump()

    # -- dispatch -----------------------------------------------------------------------

    async def _pipeline_deposit(self, frame: f.Deposit) -> None:
        """Check a deposit now, then wait for its commit in a task of its own.

        The connection's next frame is handled meanwhile, so deposits a client pipelines
        (protocol §5.2) share group commits instead of waiting for one each. Deposits reach
        the store in the order received (each task submits in its first step, and tasks
        start in creation order); answers go out in that order too (each task sends after
        the one before it), and any other frame waits until every pending answer is out.
        """
        pipeline = self._pipeline
        if pipeline is None:
            pipeline = self._pipeline = collections.deque()
        while len(pipeline) >= PIPELINE_DEPTH:
            await asyncio.wait([pipeline[0]])
        items: list[DepositItem] | None = None
        error: f.Error | None = None
        try:
            items = await self._deposit_items(frame)
        except ProtocolError as exc:
            error = f.Error(rid=frame.rid, code=exc.code, message=exc.message)
        except Exception:
            _log.exception("internal error handling a Deposit frame")
            error = f.Error(rid=frame.rid, code=ErrorCode.INTERNAL)
        if error is not None and not pipeline:
            await self._send(error)
            return
        previous = pipeline[-1] if pipeline else None
        task = asyncio.get_running_loop().create_task(
            self._commit_and_answer(frame.rid, items, error, previous)
        )
        pipeline.append(task)
        task.add_done_callback(pipeline.remove)

    async def _commit_and_answer(
        self,
        rid: int,
        items: list[DepositItem] | None,
        error: f.Error | None,
        previous: asyncio.Task[None] | None,
    ) -> None:
        answer: f.ServerFrame
        if items is None:
            assert error is not None
            answer = error
        else:
            try:
                answer = await self._store_deposit(rid, items)
            except ProtocolError as exc:
                answer = f.Error(rid=rid, code=exc.code, message=exc.message)
            except Exception:
                _log.exception("internal error handling a Deposit frame")
                answer = f.Error(rid=rid, code=ErrorCode.INTERNAL)
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        await self._send(answer)

    async def _drain_pipeline(self) -> None:
        """Wait until every pipelined deposit is answered."""
        if self._pipeline:
            await asyncio.wait(list(self._pipeline))

    async def _handle(self, frame: f.ClientFrame) -> None:
        if isinstance(frame, f.Hello):
            await self._hello(frame)
            return
        rid = frame.rid
        if self._state is _State.AWAIT_HELLO:
            await self._send(f.Error(rid=rid, code=ErrorCode.BAD_FRAME, message="hello first"))
            await self._finish()
            return
        try:
            if isinstance(frame, _AUTHENTICATED) and self._device_id is None:
                raise ProtocolError(ErrorCode.NOT_AUTHENTICATED, "log in first")
            answer = await self._dispatch(frame)
        except ProtocolError as exc:
            answer = f.Error(rid=rid, code=exc.code, message=exc.message)
        except Exception:
            # A bug on our side: the client learns only that, and the connection lives.
            _log.exception("internal error handling a %s frame", type(frame).__name__)
            answer = f.Error(rid=rid, code=ErrorCode.INTERNAL)
        if answer is not None:
            await self._send(answer)

    async def _dispatch(self, frame: f.ClientFrame) -> f.ServerFrame | None:
        match frame:
            # The frames of every envelope first: each case is an isinstance check.
            case f.Deposit():
                return await self._deposit(frame)
            case f.Ack():
                assert self._device_id is not None
                await self._deps.store.ack(self._device_id, frame.up_to, self._deps.now_ms())
                return f.Ok(rid=frame.rid)
            case f.Register():
                return await self._register(frame)
            case f.Auth():
                return await self._auth(frame)
            case f.UploadKeys():
                return await self._upload_keys(frame)
            case f.ClaimKeys():
                return await self._claim_keys(frame)
            case f.AddToken():
                assert self._user_key is not None
                await self._deps.store.add_token(self._user_key, token_hash(frame.token))
                return f.Ok(rid=frame.rid)
            case f.RevokeToken():
                assert self._user_key is not None
                if not await self._deps.store.revoke_token(self._user_key, token_hash(frame.token)):
                    raise ProtocolError(ErrorCode.BAD_TOKEN, "no such token")
                return f.Ok(rid=frame.rid)
            case f.Fanout():
                return await self._fanout(frame)
            case f.Subscribe():
                await self._subscribe(frame)
                return None
            case b.BlobOpen() | b.BlobWrite() | b.BlobRead() | b.BlobDelete():
                if self._deps.blobs is None:
                    raise ProtocolError(ErrorCode.NOT_FOUND, "this server keeps no blobs")
                return await self._deps.blobs.handle(frame, self._device_id)
        raise ProtocolError(ErrorCode.BAD_FRAME, "unexpected frame")  # pragma: no cover

    # -- handlers -----------------------------------------------------------------------

    async def _hello(self, hello: f.Hello) -> None:
        if self._state is not _State.AWAIT_HELLO:
            await self._send(f.Error(rid=None, code=ErrorCode.BAD_FRAME, message="hello twice"))
            return
        common = set(hello.versions) & set(f.PROTOCOL_VERSIONS)
        if not common:
            await self._send(
                f.Error(
                    rid=None,
                    code=ErrorCode.UNSUPPORTED_VERSION,
                    message=f"server speaks {list(f.PROTOCOL_VERSIONS)}",
                )
            )
            await self._finish()
            return
        self._nonce = self._deps.random_bytes(32)
        self._state = _State.OPEN
        await self._send(
            f.Welcome(
                version=max(common),
                nonce=self._nonce,
                descriptor=self._deps.descriptor,
                server_time=self._deps.now_ms(),
                limits=self._deps.limits,
            )
        )

    def _check_proof(self, signing_key: bytes, device_id: bytes, proof: bytes) -> None:
        try:
            verify(
                signing_key,
                AUTH_CONTEXT,
                auth_message(self._deps.server_key, self._nonce, device_id),
                proof,
            )
        except SignatureError as exc:
            raise ProtocolError(ErrorCode.BAD_SIGNATURE, "proof does not verify") from exc

    async def _login(
        self, rid: int, device_id: bytes, user_key: bytes, signing_key: bytes, counts: KeyCounts
    ) -> f.AuthOk:
        if self._device_id is not None and self._device_id != device_id:
            await self._stop_pump()
        self._device_id, self._user_key, self._signing_key = device_id, user_key, signing_key
        return f.AuthOk(
            rid=rid,
            device_id=device_id,
            one_time_keys=counts.one_time_keys,
            has_fallback_key=counts.has_fallback_key,
        )

    async def _register(self, frame: f.Register) -> f.AuthOk:
        device_list = decode_device_list(frame.devices)
        if frame.device not in device_list.devices:
            raise ProtocolError(ErrorCode.UNKNOWN_DEVICE, "device is not in the device list")
        self._check_proof(frame.device.signing_key, frame.device.device_id, frame.proof)
        await self._deps.store.register_device(
            user_key=device_list.user_key,
            device_list=frame.devices,
            device_list_version=device_list.version,
            listed=[d.device_id for d in device_list.devices],
            device=frame.device,
        )
        counts = await self._deps.store.key_counts(frame.device.device_id)
        return await self._login(
            frame.rid,
            frame.device.device_id,
            device_list.user_key,
            frame.device.signing_key,
            counts,
        )

    async def _auth(self, frame: f.Auth) -> f.AuthOk:
        store = self._deps.store
        # One after the other: SQLite reads run on the loop, so gathering them would only
        # add two tasks; the counts are read once the proof holds.
        device = await store.get_device(frame.device_id)
        if device is None:
            raise ProtocolError(ErrorCode.UNKNOWN_DEVICE, "device is not registered")
        self._check_proof(device.keys.signing_key, frame.device_id, frame.proof)
        counts = await store.key_counts(frame.device_id)
        return await self._login(
            frame.rid, frame.device_id, device.user_key, device.keys.signing_key, counts
        )

    async def _upload_keys(self, frame: f.UploadKeys) -> f.Ok:
        assert self._device_id is not None
        if len(frame.one_time_keys) > self._deps.limits.max_keys_per_upload:
            raise ProtocolError(ErrorCode.TOO_MANY_KEYS, "too many keys in one upload")
        for key in frame.one_time_keys:
            if key.fallback:
                raise ProtocolError(ErrorCode.BAD_FRAME, "fallback key among one-time keys")
            verify_signed_key(self._signing_key, key)
        if frame.fallback_key is not None:
            if not frame.fallback_key.fallback:
                raise ProtocolError(ErrorCode.BAD_FRAME, "fallback key not marked as such")
            verify_signed_key(self._signing_key, frame.fallback_key)
        await self._deps.store.add_one_time_keys(
            self._device_id, frame.one_time_keys, frame.fallback_key
        )
        return f.Ok(rid=frame.rid)

    def _hash_of(self, token: bytes) -> bytes:
        """``token_hash``, memoised for the few tokens this connection deposits under."""
        hashed = self._token_hashes.get(token)
        if hashed is None:
            if len(self._token_hashes) >= _TOKEN_HASHES_HELD:
                self._token_hashes.clear()
            hashed = self._token_hashes[token] = token_hash(token)
        return hashed

    async def _user_for(self, token: bytes) -> bytes:
        hashed = self._hash_of(token)
        if not self._deps.token_buckets.allow(hashed, self._deps.monotonic()):
            raise ProtocolError(ErrorCode.RATE_LIMITED, "too many requests for this token")
        user_key = await self._deps.store.user_for_token(hashed)
        if user_key is None:
            raise ProtocolError(ErrorCode.BAD_TOKEN, "unknown or revoked token")
        return user_key

    async def _claim_keys(self, frame: f.ClaimKeys) -> f.KeyBundle:
        user_key = await self._user_for(frame.token)
        device = await self._deps.store.get_device(frame.device_id)
        # One answer for "no such device" and "not this token's user": a token holder
        # must not learn which device ids exist on the server.
        if device is None or device.user_key != user_key:
            raise ProtocolError(ErrorCode.UNKNOWN_DEVICE, "not a registered device of this user")
        # Over its budget a requester gets the fallback key: it can still start a session,
        # but cannot drain the one-time keys other senders need (docs/security.md).
        within_budget = await self._deps.claim_budgets.allow(
            self._hash_of(frame.token) + frame.device_id
        )
        key = await self._deps.store.claim_key(frame.device_id, one_time=within_budget)
        if key is None:
            raise ProtocolError(ErrorCode.NO_KEYS, "device has no keys left")
        return f.KeyBundle(
            rid=frame.rid, devices=device.device_list, device_id=frame.device_id, key=key
        )

    async def _deposit(self, frame: f.Deposit) -> f.DepositOk:
        return await self._store_deposit(frame.rid, await self._deposit_items(frame))

    async def _deposit_items(self, frame: f.Deposit) -> list[DepositItem]:
        """Check a deposit (limits, token, devices): what to store."""
        limits_ = self._deps.limits
        envelopes = frame.envelopes
        if len(envelopes) > limits_.max_envelopes_per_deposit:
            raise ProtocolError(ErrorCode.TOO_MANY_ENVELOPES, "too many envelopes")
        max_body = limits_.max_envelope_body
        for e in envelopes:
            if len(e.body) > max_body:
                raise ProtocolError(ErrorCode.ENVELOPE_TOO_LARGE, "envelope body too large")
        user_key = await self._user_for(frame.token)
        devices = await self._deps.store.user_devices(user_key)
        items: list[DepositItem] = []
        for e in envelopes:
            if e.device_id not in devices:
                raise ProtocolError(ErrorCode.UNKNOWN_DEVICE, "not a device of this user")
            items.append(DepositItem(e.device_id, e.msg_id, e.body, e.expires_at))
        return items

    async def _store_deposit(self, rid: int, items: list[DepositItem]) -> f.DepositOk:
        result = await self._deps.store.deposit(items, self._deps.now_ms())
        # Durable now; a wake-up lost here is caught up by the consumer's next fetch.
        for device_id, seq in result.news.items():
            await self._deps.bus.publish(device_id, seq)
        return f.DepositOk(rid=rid, stored=result.stored, duplicates=result.duplicates)

    async def _fanout(self, frame: f.Fanout) -> f.DepositOk:
        """Expand one body into an entry per listed device (protocol §5.3.10)."""
        if sum(len(t.devices) for t in frame.targets) > limits.MAX_FANOUT_DEVICES:
            raise ProtocolError(ErrorCode.TOO_MANY_ENVELOPES, "too many fan-out devices")
        if len(frame.body) > self._deps.limits.max_envelope_body:
            raise ProtocolError(ErrorCode.ENVELOPE_TOO_LARGE, "envelope body too large")
        # Hundreds of tokens: hashed here (not through the connection's small memo), each
        # target charged to its token's bucket, and all looked up in one store call.
        buckets, now = self._deps.token_buckets, self._deps.monotonic()
        hashes: list[bytes] = []
        for target in frame.targets:
            hashed = token_hash(target.token)
            if not buckets.allow(hashed, now):
                raise ProtocolError(ErrorCode.RATE_LIMITED, "too many requests for this token")
            hashes.append(hashed)
        owners = await self._deps.store.fanout_targets(hashes)
        items: dict[bytes, DepositItem] = {}
        msg_id, body, expires_at = frame.msg_id, frame.body, frame.expires_at
        for target, hashed in zip(frame.targets, hashes, strict=True):
            owner = owners.get(hashed)
            if owner is None:
                raise ProtocolError(ErrorCode.BAD_TOKEN, "unknown or revoked token")
            devices = owner[1]
            if any(d not in devices for d in target.devices):
                raise ProtocolError(ErrorCode.UNKNOWN_DEVICE, "not a device of this user")
            for device_id in target.devices:
                items[device_id] = DepositItem(device_id, msg_id, body, expires_at)
        result = await self._deps.store.deposit(list(items.values()), self._deps.now_ms())
        publish = self._deps.bus.publish
        for device_id, seq in result.news.items():
            await publish(device_id, seq)
        return f.DepositOk(rid=frame.rid, stored=result.stored, duplicates=result.duplicates)

    async def _subscribe(self, frame: f.Subscribe) -> None:
        device_id = self._device_id
        assert device_id is not None
        await self._stop_pump()
        previous = self._deps.consumers.claim(device_id, self)
        if previous is not None:
            await previous.replace()
        # Subscribe to the bus before the first fetch, so no deposit falls in between;
        # the claim also replaces a consumer of this mailbox on another node.
        subscription = self._deps.bus.subscribe(device_id)
        try:
            await subscription.claim()
        except BaseException:
            subscription.close()
            raise
        # The first fetch before the Ok, so that the Ok and the backlog's first Deliver
        # frames leave in one turn of the loop: one write (front.py).
        try:
            entries = await self._deps.store.fetch(
                device_id, frame.after, limits.MAX_ENTRIES_PER_DELIVER
            )
        except Exception:
            _log.warning("delivery stopped by a store error; closing", exc_info=True)
            subscription.close()
            self._delivery_failed()
            return
        except BaseException:
            subscription.close()
            raise
        if self.closing:  # replaced, or the connection went, meanwhile
            subscription.close()
            return
        await self._send(f.Ok(rid=frame.rid))
        # Only what the outbox takes without waiting: a handler blocked on a slow reader
        # would outlive a replace(), which stops the delivery task alone.
        cursor, delivered = frame.after, 0
        for batch in self._batches(entries):
            if self.closing or self._outbox.full():
                break
            self._outbox.put_nowait(f.Deliver(entries=batch))
            cursor, delivered = batch[-1].seq, delivered + len(batch)
        if self.closing:
            subscription.close()
            return
        # A short first fetch read the whole mailbox, and anything newer is announced to
        # the subscription (made before it): then the delivery task starts by waiting.
        more = delivered < len(entries) or len(entries) >= limits.MAX_ENTRIES_PER_DELIVER
        self._pump = asyncio.create_task(
            self._deliver(device_id, cursor, subscription, fetch_first=more),
            name="samizdat-deliver",
        )

    async def replace(self) -> None:
        """Another connection now consumes this mailbox: tell the client and close."""
        self._state = _State.CLOSING
        await self._stop_pump(release=False)
        # Pending answers are moot on a connection about to close; make room for the news.
        while not self._outbox.empty():
            self._outbox.get_nowait()
        self._outbox.put_nowait(
            f.Error(rid=None, code=ErrorCode.REPLACED, message="another connection took over")
        )
        self._outbox.put_nowait(None)

    def _replaced_elsewhere(self) -> None:
        """A connection on another node took this mailbox (seen by the delivery task)."""
        self._state = _State.CLOSING
        if self._device_id is not None:
            self._deps.consumers.release(self._device_id, self)
        while not self._outbox.empty():
            self._outbox.get_nowait()
        self._outbox.put_nowait(
            f.Error(rid=None, code=ErrorCode.REPLACED, message="another connection took over")
        )
        self._outbox.put_nowait(None)

    # -- delivery -----------------------------------------------------------------------

    async def _deliver(
        self, device_id: bytes, after: int, subscription: Subscription, fetch_first: bool
    ) -> None:
        cursor = after
        try:
            while True:
                entries: list[MailboxEntry] = []
                if fetch_first:
                    entries = await self._deps.store.fetch(
                        device_id, cursor, limits.MAX_ENTRIES_PER_DELIVER
                    )
                fetch_first = True
                if not entries:
                    await subscription.wait()
                    if subscription.replaced:
                        self._replaced_elsewhere()
                        return
                    continue
                for batch in self._batches(entries):
                    await self._outbox.put(f.Deliver(entries=batch))
                cursor = entries[-1].seq
        except Exception:
            # The store or the bus failed (a database restart breaks every pooled
            # connection). Ending only this task would leave the client subscribed to a
            # mailbox nobody delivers from; closing makes it reconnect and resubscribe
            # from its cursor (found by bench/faults.py --nodes 2).
            _log.warning("delivery stopped by a store or bus error; closing", exc_info=True)
            self._delivery_failed()
        finally:
            subscription.close()

    def _delivery_failed(self) -> None:
        self._state = _State.CLOSING
        if self._device_id is not None:
            self._deps.consumers.release(self._device_id, self)
        while not self._outbox.empty():
            self._outbox.get_nowait()
        self._outbox.put_nowait(f.Error(rid=None, code=ErrorCode.INTERNAL, message="try again"))
        self._outbox.put_nowait(None)

    def _batches(self, entries: list[MailboxEntry]) -> list[list[f.Entry]]:
        """Split entries so that no Deliver frame exceeds the frame limit."""
        budget = self._deps.limits.max_frame - _DELIVER_OVERHEAD
        batches: list[list[f.Entry]] = []
        current: list[f.Entry] = []
        size = 0
        for e in entries:
            cost = len(e.body) + _ENTRY_OVERHEAD
            if current and size + cost > budget:
                batches.append(current)
                current, size = [], 0
            current.append(
                f.Entry(seq=e.seq, msg_id=e.msg_id, body=e.body, received_at=e.received_at)
            )
            size += cost
        if current:
            batches.append(current)
        return batches

    async def _stop_pump(self, release: bool = True) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            # wait() rather than await: our own cancellation must not be swallowed.
            await asyncio.wait([pump])
        if release and self._device_id is not None:
            self._deps.consumers.release(self._device_id, self)

    # -- output -------------------------------------------------------------------------

    async def _send(self, frame: f.ServerFrame) -> None:
        if self._state is _State.CLOSING:
            return
        await self._outbox.put(frame)

    async def _finish(self) -> None:
        await self._outbox.put(None)
        self._state = _State.CLOSING
