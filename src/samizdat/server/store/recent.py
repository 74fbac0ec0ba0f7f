"""The tail of each mailbox, as last committed, so a live consumer's fetch skips SQLite.

A subscribed device is woken by the bus right after a deposit for it commits, and fetches
what it has not seen: almost always the entries that deposit just wrote. The SQLite store
is the only writer of its file, so it can keep those entries in memory, exactly as
committed, and answer that fetch without a trip to its reader thread (docs/decisions/
2026-11-29-recent-entries.md).

For each device held, ``low`` is a seq such that the entries in memory are *exactly* the
rows of that mailbox with ``seq > low``. The store applies every committed change in
commit order on the event loop, before it resolves the callers: a deposit appends (the
first one for a device starts it at ``low = seq - 1``: nothing was above the old last
seq), an acknowledgement drops the prefix, and any other write (expiry, a re-registered
device list, anything added later) forgets everything. A fetch from below ``low``, or for a
device not held, goes to the database. Bounded: a device whose consumer falls behind is
dropped, and past a byte budget everything is.
"""

from __future__ import annotations

from typing import Final

from samizdat.server.store.base import MailboxEntry

__all__ = ["RecentEntries"]

#: Entries held per device: a consumer this far behind reads from the database.
MAX_PER_DEVICE: Final = 64
#: Body bytes held in all: past this everything is forgotten (and refills as deposits come).
MAX_BYTES: Final = 32 * 1024 * 1024
#: Devices held (most with nothing pending, ~200 B each): past this everything is forgotten.
MAX_DEVICES: Final = 100_000


class RecentEntries:
    """Per device: the committed entries above ``low``, in seq order."""

    def __init__(
        self,
        max_per_device: int = MAX_PER_DEVICE,
        max_bytes: int = MAX_BYTES,
        max_devices: int = MAX_DEVICES,
    ) -> None:
        self._max_per_device = max_per_device
        self._max_bytes = max_bytes
        self._max_devices = max_devices
        self._devices: dict[bytes, tuple[int, list[MailboxEntry]]] = {}
        self._bytes = 0

    def __repr__(self) -> str:
        return f"RecentEntries(devices={len(self._devices)}, bytes={self._bytes})"

    def __len__(self) -> int:
        return len(self._devices)

    def added(self, device_id: bytes, entry: MailboxEntry) -> None:
        """A committed deposit stored ``entry`` as the mailbox's new last seq."""
        held = self._devices.get(device_id)
        if held is None:
            if len(self._devices) >= self._max_devices:
                self.clear()
            self._devices[device_id] = (entry.seq - 1, [entry])
        else:
            low, entries = held
            last = entries[-1].seq if entries else low
            if entry.seq != last + 1 or len(entries) >= self._max_per_device:
                # Not contiguous (cannot happen with one writer) or a consumer lagging.
                self._drop(device_id)
                return
            entries.append(entry)
        self._bytes += len(entry.body)
        if self._bytes > self._max_bytes:
            self.clear()

    def acked(self, device_id: bytes, up_to: int) -> None:
        """A committed acknowledgement deleted the entries up to ``up_to``."""
        held = self._devices.get(device_id)
        if held is None:
            return
        entries = held[1]
        cut = 0
        while cut < len(entries) and entries[cut].seq <= up_to:
            self._bytes -= len(entries[cut].body)
            cut += 1
        if cut and cut == len(entries):
            # Nothing is left above the last seq: held, empty, so that a consumer's next
            # fetch (after this seq) and the next deposit need no database either.
            self._devices[device_id] = (entries[-1].seq, [])
        else:
            del entries[:cut]

    def fetch(self, device_id: bytes, after: int, limit: int) -> list[MailboxEntry] | None:
        """The entries after ``after`` (at most ``limit``), or None: ask the database."""
        held = self._devices.get(device_id)
        if held is None or after < held[0]:
            return None
        entries = held[1]
        start = 0
        while start < len(entries) and entries[start].seq <= after:
            start += 1
        return entries[start : start + limit]

    def clear(self) -> None:
        self._devices.clear()
        self._bytes = 0

    def _drop(self, device_id: bytes) -> None:
        held = self._devices.pop(device_id, None)
        if held is not None:
            self._bytes -= sum(len(e.body) for e in held[1])
