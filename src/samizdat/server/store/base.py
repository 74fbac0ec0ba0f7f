"""The one interface to durable server state (DESIGN §5, §7).

Every store (SQLite by default, PostgreSQL for many nodes) implements :class:`Store`;
SQL lives only in store classes. Refusals that a client must see (``quota``, ``too_many_keys``,
``conflict``) are raised as :class:`~samizdat.errors.ProtocolError` with that code.

Semantics every implementation must keep (the conformance suite in
``tests/server/test_store.py`` pins them):

* Sequence numbers are per device, start at 1, strictly increase and are never reused,
  also after acks and restarts.
* ``deposit`` is idempotent on ``(device_id, msg_id)``: a retry stores one copy, even
  after the entry was acknowledged (ids are remembered for ``MSG_ID_RETENTION_MS``) and
  across restarts. It returns only once the entries are durable.
* One deposit is all or nothing: if any target mailbox is full, nothing of it is stored.
* ``claim_key`` hands out each one-time key at most once, then the fallback key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Protocol

import msgspec

from samizdat.protocol.keys import DeviceKeys, SignedDeviceList, SignedKey

__all__ = [
    "MSG_ID_RETENTION_MS",
    "RegisteredDevice",
    "KeyCounts",
    "DepositItem",
    "DepositResult",
    "MailboxEntry",
    "MsgIdSweeps",
    "Store",
    "shared_bodies",
]

#: How long a delivered msg_id is remembered after deposit, so a late retry of an
#: already acknowledged envelope is still recognised as a duplicate.
MSG_ID_RETENTION_MS: Final = 7 * 24 * 3600 * 1000


class MsgIdSweeps:
    """When each device's msg_ids past retention were last forgotten, by this process.

    Acknowledgements do the forgetting, but at most once per ``every_ms`` per device:
    the rows age by the day, and a sweep on every ack was a statement per envelope (and
    on PostgreSQL a walk over the index entries the previous sweeps left dead).
    """

    def __init__(self, every_ms: int = 3600 * 1000, max_devices: int = 100_000) -> None:
        self._every_ms = every_ms
        self._max_devices = max_devices
        self._last: dict[bytes, int] = {}

    def __repr__(self) -> str:
        return f"MsgIdSweeps(devices={len(self._last)})"

    def cutoff(self, device_id: bytes, now_ms: int) -> int | None:
        """The age (ms) below which to forget ``device_id``'s msg_ids now, or None if it
        was swept within ``every_ms``. Past ``max_devices`` all are forgotten (and swept
        again): the memo is a hint, never a promise."""
        last = self._last.get(device_id)
        if last is not None and now_ms - last < self._every_ms:
            return None
        if len(self._last) >= self._max_devices:
            self._last.clear()
        self._last[device_id] = now_ms
        return now_ms - MSG_ID_RETENTION_MS


@dataclass(frozen=True)
class RegisteredDevice:
    """A registered device, with its user's current signed device list."""

    user_key: bytes = field(repr=False)
    keys: DeviceKeys = field(repr=False)
    device_list: SignedDeviceList = field(repr=False)
    device_list_version: int

    #: The columns ``from_row`` reads, in order; every backend selects exactly these.
    COLUMNS: ClassVar[str] = (
        "d.user_key, d.signing_key, d.identity_key, d.sealing_key,"
        " u.list_body, u.list_signature, u.list_version"
    )

    @classmethod
    def from_row(cls, device_id: bytes, row: Sequence[Any]) -> RegisteredDevice:
        return cls(
            user_key=bytes(row[0]),
            keys=DeviceKeys(
                device_id=device_id,
                signing_key=bytes(row[1]),
                identity_key=bytes(row[2]),
                sealing_key=bytes(row[3]),
            ),
            device_list=SignedDeviceList(body=bytes(row[4]), signature=bytes(row[5])),
            device_list_version=int(row[6]),
        )


@dataclass(frozen=True)
class KeyCounts:
    one_time_keys: int
    has_fallback_key: bool


# The three records made per envelope on the hot path are msgspec structs rather than
# frozen dataclasses: same constructor, attributes, equality and immutability, built in
# ~0.2 µs instead of ~1-1.5 µs (a frozen dataclass sets each field through
# object.__setattr__). Their reprs leave out ids and bodies.


class DepositItem(msgspec.Struct, frozen=True):
    device_id: bytes
    msg_id: bytes
    body: bytes
    #: A disappearing message's envelope: deleted at this time (ms), delivered or not.
    expires_at: int | None = None

    def __repr__(self) -> str:
        return f"DepositItem(expires_at={self.expires_at})"


class DepositResult(msgspec.Struct, frozen=True):
    stored: int
    duplicates: int
    #: For each device that received a new entry: its highest new seq (for the bus).
    news: Mapping[bytes, int] = msgspec.field(default_factory=dict)

    def __repr__(self) -> str:
        return f"DepositResult(stored={self.stored}, duplicates={self.duplicates})"


class MailboxEntry(msgspec.Struct, frozen=True):
    seq: int
    msg_id: bytes
    body: bytes
    received_at: int

    def __repr__(self) -> str:
        return f"MailboxEntry(seq={self.seq}, received_at={self.received_at})"


def shared_bodies(items: Sequence[DepositItem]) -> frozenset[int]:
    """``id()`` of the body objects that more than one item carries: a fan-out's.

    Stores keep such a body once (table ``bodies``), its entries pointing at it.
    """
    if len(items) < 2:
        return frozenset()
    seen: set[int] = set()
    repeated: set[int] = set()
    for item in items:
        key = id(item.body)
        if key in seen:
            repeated.add(key)
        else:
            seen.add(key)
    return frozenset(repeated)


class Store(Protocol):
    """Durable state of one server (or of a cluster of nodes sharing it)."""

    async def open(self) -> None:
        """Create or migrate the schema; must be called before anything else."""

    async def close(self) -> None: ...

    # -- devices and keys ---------------------------------------------------------------

    async def register_device(
        self,
        user_key: bytes,
        device_list: SignedDeviceList,
        device_list_version: int,
        listed: Sequence[bytes],
        device: DeviceKeys,
    ) -> None:
        """Record ``device`` under ``user_key`` with the user's (verified) device list.

        A newer ``device_list_version`` replaces the user's list and forgets registered
        devices no longer ``listed``; the same version must carry the same list.

        Raises:
            ProtocolError: ``conflict`` for an older version, a different list under the
                same version, or a device already registered under another user.
        """

    async def get_device(self, device_id: bytes) -> RegisteredDevice | None: ...

    async def user_devices(self, user_key: bytes) -> frozenset[bytes]:
        """Ids of the registered devices of a user."""

    async def add_one_time_keys(
        self, device_id: bytes, keys: Sequence[SignedKey], fallback: SignedKey | None
    ) -> KeyCounts:
        """Store keys (a known ``key_id`` is ignored, so retries are safe); a fallback
        key replaces the previous one.

        Raises:
            ProtocolError: ``too_many_keys`` if more than MAX_STORED_ONE_TIME_KEYS would be held.
        """

    async def claim_key(self, device_id: bytes, one_time: bool = True) -> SignedKey | None:
        """Remove and return one one-time key, else return the fallback key (kept), else None.

        With ``one_time=False`` only the fallback key is returned: the answer to a
        requester over its claim budget (one-time keys are left for others).
        """

    async def key_counts(self, device_id: bytes) -> KeyCounts: ...

    # -- delivery tokens (only their SHA-256 is ever stored) ------------------------------

    async def add_token(self, user_key: bytes, token_hash: bytes) -> None:
        """Raises ProtocolError ``conflict`` if held by another user, ``quota`` past
        MAX_TOKENS_PER_USER."""

    async def revoke_token(self, user_key: bytes, token_hash: bytes) -> bool:
        """True if the user held the token (it is now deleted)."""

    async def user_for_token(self, token_hash: bytes) -> bytes | None: ...

    async def fanout_targets(
        self, token_hashes: Sequence[bytes]
    ) -> dict[bytes, tuple[bytes, frozenset[bytes]]]:
        """For each known token hash: its user and that user's registered devices.

        The lookups of a fan-out (hundreds of tokens) in one call, answered like
        ``user_for_token`` then ``user_devices`` for each; unknown tokens are left out.
        """

    # -- mailboxes ----------------------------------------------------------------------

    async def deposit(self, items: Sequence[DepositItem], now_ms: int) -> DepositResult:
        """Append entries, durably, all or nothing.

        Raises:
            ProtocolError: ``quota`` if a mailbox that would receive a new entry is full.
        """

    async def fetch(self, device_id: bytes, after: int, limit: int) -> list[MailboxEntry]:
        """Entries with ``seq > after`` in order, at most ``limit``."""

    async def ack(self, device_id: bytes, up_to: int, now_ms: int) -> int:
        """Delete entries with ``seq <= up_to``; returns how many were deleted."""

    async def expire(self, before_ms: int) -> int:
        """Delete entries received before ``before_ms`` (the mailbox time to live, DESIGN §5);
        returns how many were deleted. Their msg_ids stay remembered, so a late retry of an
        expired envelope is still a duplicate rather than a new copy."""

    async def expire_timed(self, now_ms: int) -> int:
        """Delete entries whose envelope expiry (``DepositItem.expires_at``) is ``<= now_ms``
        (disappearing messages, protocol §6.2); returns how many were deleted."""

    async def mailbox_size(self, device_id: bytes) -> int: ...

    async def last_seq(self, device_id: bytes) -> int:
        """The highest seq ever assigned in this mailbox (0 if none)."""
