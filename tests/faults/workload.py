"""A crash-and-check workload for 1:1 messaging (issue 9, docs/reliability.md).

Pairs of real ``Client`` objects exchange hash-stamped messages through one real
``samizdat server`` process that is SIGKILLed and restarted on the same port and data
folder at random moments. The outcome is classified as Jepsen's RabbitMQ queue checker
does: a message whose send returned (``DepositOk``) must be delivered (else *lost*);
one delivered twice is *duplicated*; one whose hash does not match its text is
*corrupted*; one delivered although no send was attempted is *unexpected*; one delivered
whose send never returned is *recovered*. The workload retries a failed send until it is
durable (from the client's outbox, or afresh when it was never written), so every
attempted message ends up acknowledged; ``retried`` counts those whose first try failed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from samizdat.client import records as rec
from samizdat.client.app import Client
from samizdat.errors import RemoteError
from samizdat.transport.dial import TransportOptions
from tests.e2e.harness import PASSPHRASE, ServerProcess

__all__ = ["Inject", "Outcome", "classify", "pair_clients", "run_workload", "stamp"]

#: One fault for the workload to inject (the k-th); returns its kind, for the report.
Inject = Callable[[int], Awaitable[str]]


def stamp(sender: int, seq: int) -> str:
    """A message text that carries its own checksum: ``m <sender>:<seq>:<sha256/16>:<body>``."""
    body = f"payload {sender} {seq} " + "x" * (seq % 37)
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    return f"m {sender}:{seq}:{digest}:{body}"


def _parse(text: str) -> tuple[int, int, bool] | None:
    """(sender, seq, hash ok) of a stamped text, None if it is not one of ours at all."""
    if not text.startswith("m "):
        return None
    try:
        sender_s, seq_s, digest, body = text[2:].split(":", 3)
        sender, seq = int(sender_s), int(seq_s)
    except ValueError:
        return None
    ok = hashlib.sha256(body.encode()).hexdigest()[:16] == digest
    return sender, seq, ok


@dataclass
class Outcome:
    """Counts in the vocabulary of Jepsen's RabbitMQ checker, plus per-sender order."""

    attempted: int = 0
    sent: int = 0  # send() returned: acknowledged by the server
    delivered: int = 0  # distinct acknowledged messages that arrived intact
    lost: int = 0
    duplicated: int = 0
    corrupted: int = 0
    unexpected: int = 0
    recovered: int = 0
    order_violations: int = 0
    retried: int = 0  # the first send failed; the outbox got it through later
    kills: int = 0
    #: Faults injected, by kind (a single server's run has only "kill").
    faults: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"sent={self.sent} delivered={self.delivered} lost={self.lost} "
            f"duplicated={self.duplicated} corrupted={self.corrupted}"
        )

    def detail(self) -> str:
        return (
            f"attempted={self.attempted} unexpected={self.unexpected} "
            f"recovered={self.recovered} retried={self.retried} "
            f"order_violations={self.order_violations} "
            f"kills={self.kills} seconds={self.seconds:.1f}"
            + "".join(f" {k}={n}" for k, n in sorted(self.faults.items()) if k != "kill")
            + "".join(f"\n  {note}" for note in self.notes)
        )


def classify(
    attempted: set[tuple[int, int]],
    acked: set[tuple[int, int]],
    received: list[list[str]],
) -> Outcome:
    """Classify what each recipient received (in arrival order) against what was sent."""
    out = Outcome(attempted=len(attempted), sent=len(acked))
    seen: dict[tuple[int, int], int] = {}
    for texts in received:
        last: dict[int, int] = {}
        for text in texts:
            parsed = _parse(text)
            if parsed is None:
                continue
            sender, seq, ok = parsed
            if not ok:
                out.corrupted += 1
                continue
            key = (sender, seq)
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > 1:
                continue
            if seq < last.get(sender, -1):
                out.order_violations += 1
            last[sender] = max(seq, last.get(sender, -1))
    out.duplicated = sum(1 for n in seen.values() if n > 1)
    out.delivered = sum(1 for key in seen if key in acked)
    out.lost = len(acked - seen.keys())
    out.unexpected = len(seen.keys() - attempted)
    out.recovered = len((seen.keys() & attempted) - acked)
    return out


class _LogCounter(logging.Handler):
    """Counts the clients' log records (INFO and up) by logger and message template."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.name}: {record.msg}"] += 1


def _in_outbox(client: Client, text: str) -> bool:
    # The outbox is private; reading it is how the workload knows whether a failed send
    # was written (and will be resent) or must be attempted again.
    store = client._store  # noqa: SLF001
    return any(rec.decode(raw, rec.OutboxItem).text == text for raw in store.values("outbox"))


def _in_history(client: Client, name: str, text: str) -> bool:
    return any(item.direction == "out" and item.text == text for item in client.history(name))


async def _send_until_stored(client: Client, name: str, text: str) -> bool:
    """Send once; on failure retry until the message is durable. True if the first send
    returned (acknowledged), False if it only got through later (indeterminate, then ok)."""
    try:
        await client.send(name, text)
        return True
    except RemoteError:
        pass
    pause = 0.05
    while True:
        await asyncio.sleep(pause)
        pause = min(pause * 2, 1.0)
        if _in_history(client, name, text):
            return False
        if _in_outbox(client, text):
            with contextlib.suppress(RemoteError):
                await client._flush_outbox()  # noqa: SLF001
            continue
        with contextlib.suppress(RemoteError):
            await client.send(name, text)
            return False


async def _receive(client: Client, into: list[str]) -> None:
    while True:
        try:
            async with contextlib.aclosing(client.listen()) as messages:
                async for message in messages:
                    into.append(message.text)
        except RemoteError:
            await asyncio.sleep(0.2)


async def pair_clients(
    root: Path, link: str, index: int, transport: TransportOptions | None
) -> tuple[Client, Client]:
    """Sender and recipient, introduced on a clean network; then reopened with ``transport``
    (the faults apply to the workload, not to the one-off set-up)."""
    recipient = await Client.create(root / f"r{index}", PASSPHRASE, link, f"r{index}")
    sender = await Client.create(root / f"s{index}", PASSPHRASE, link, f"s{index}")
    await sender.add_contact(await recipient.invite(), "peer")
    await sender.send("peer", "hello")
    async with contextlib.aclosing(recipient.listen(count=1, timeout=30)) as first:
        async for message in first:
            await recipient.accept(message.sender)
    if transport is None:
        return sender, recipient
    await sender.close()
    await recipient.close()
    return (
        await Client.open(root / f"s{index}", PASSPHRASE, transport),
        await Client.open(root / f"r{index}", PASSPHRASE, transport),
    )


async def run_workload(
    server: ServerProcess,
    root: Path,
    messages: int,
    kills: int,
    pairs: int = 20,
    seed: int = 1,
    transport: TransportOptions | None = None,
    settle: float = 60.0,
    progress: Callable[[str], None] | None = None,
    inject: Inject | None = None,
    links: Sequence[str] = (),
) -> Outcome:
    """Run the workload against an already started ``server``; returns the classification.

    ``inject`` replaces "SIGKILL ``server`` and start it again" as the fault; ``links``
    spreads the pairs' home servers over several nodes (default: ``server.link``).
    """
    rng = random.Random(seed)
    started = time.monotonic()
    client_log = _LogCounter()
    client_logger = logging.getLogger("samizdat.client")
    level = client_logger.level
    client_logger.addHandler(client_log)
    client_logger.setLevel(logging.INFO)
    homes = list(links) or [server.link]
    clients = [await pair_clients(root, homes[i % len(homes)], i, transport) for i in range(pairs)]
    attempted: set[tuple[int, int]] = set()
    acked: set[tuple[int, int]] = set()
    retried: set[tuple[int, int]] = set()
    received: list[list[str]] = [[] for _ in range(pairs)]
    receivers = [
        asyncio.create_task(_receive(recipient, received[i]))
        for i, (_, recipient) in enumerate(clients)
    ]
    per_sender = [messages // pairs + (1 if i < messages % pairs else 0) for i in range(pairs)]
    done = 0

    async def sender(i: int) -> None:
        nonlocal done
        client = clients[i][0]
        for seq in range(per_sender[i]):
            attempted.add((i, seq))
            if not await _send_until_stored(client, "peer", stamp(i, seq)):
                retried.add((i, seq))
            # Returned means a DepositOk was seen, on the first try or from the outbox.
            acked.add((i, seq))
            done += 1

    thresholds = sorted(
        rng.randrange(messages // 20, max(messages * 19 // 20, 2)) for _ in range(kills)
    )
    killed = 0
    faults: dict[str, int] = {}

    async def killer() -> None:
        nonlocal killed
        for threshold in thresholds:
            while done < threshold:  # noqa: ASYNC110 - polling a counter is simplest here
                await asyncio.sleep(0.005)
            await asyncio.sleep(rng.uniform(0, 0.05))
            if inject is None:
                server.kill()
                await asyncio.to_thread(server.start)
                kind = "kill"
            else:
                kind = await inject(killed)
            faults[kind] = faults.get(kind, 0) + 1
            killed += 1
            if progress:
                progress(f"fault {killed}/{kills} ({kind}) after {done} messages")

    try:
        kill_task = asyncio.create_task(killer())
        await asyncio.gather(*(sender(i) for i in range(pairs)))
        await kill_task
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            got = {(t.split(":")[0], t.split(":")[1]) for texts in received for t in texts}
            if len(got) >= len(attempted):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # let a straggling duplicate show itself
        notes = _where_missing(clients, acked, received, server)
        # A receiver stops only when cancelled below; anything else is a bug to report.
        notes += [
            f"receiver {i} died: {task.exception()!r}"
            for i, task in enumerate(receivers)
            if task.done() and not task.cancelled() and task.exception() is not None
        ]
    finally:
        for task in receivers:
            task.cancel()
        await asyncio.gather(*receivers, return_exceptions=True)
        for sender_client, recipient in clients:
            await sender_client.close()
            await recipient.close()
        client_logger.removeHandler(client_log)
        client_logger.setLevel(level)
    out = classify(attempted, acked, received)
    out.retried = len(retried)
    out.kills = killed
    out.faults = faults
    out.seconds = time.monotonic() - started
    out.notes = notes
    if out.lost:
        # What the clients logged (an entry that did not open, a resend that failed...).
        out.notes += [f"{n} x {what}" for what, n in client_log.counts.most_common(12)]
        out.notes += _server_warnings(server)
    return out


def _server_warnings(server: ServerProcess) -> list[str]:
    """The server's WARNING and ERROR lines (one file across restarts), counted."""
    if not server.log_path.exists():
        return []
    counts: collections.Counter[str] = collections.Counter()
    for line in server.log_path.read_text(errors="replace").splitlines():
        _, _, rest = line.partition(",")  # after the date and time
        level, _, message = rest.partition(" ")[2].partition(" ")
        if level in ("WARNING", "ERROR", "CRITICAL"):
            counts[f"server {level}: {message}"] += 1
    return [f"{n} x {what}" for what, n in counts.most_common(12)]


def _where_missing(
    clients: list[tuple[Client, Client]],
    acked: set[tuple[int, int]],
    received: list[list[str]],
    server: ServerProcess,
) -> list[str]:
    """For each acknowledged message that did not arrive: where it is, so that a failure
    says whether the server lost it, holds it undelivered, or the recipient took it
    without ``listen`` yielding it."""
    got = {text for texts in received for text in texts}
    notes = []
    for i, seq in sorted(acked):
        text = stamp(i, seq)
        if text in got:
            continue
        sender, recipient = clients[i]
        stored = any(
            item.text == text for c in recipient.contacts() for item in recipient.history(c.name)
        )
        queued = _in_outbox(sender, text)
        notes.append(
            f"({i},{seq}) in recipient history={stored} in sender outbox={queued}; "
            + _mailbox(server, recipient)
        )
    return notes


def _mailbox(server: ServerProcess, recipient: Client) -> str:
    """The recipient's cursor against its mailbox in the server's SQLite database."""
    raw = recipient._store.get("cursor", "")  # noqa: SLF001
    cursor = int.from_bytes(raw, "big") if raw else 0
    database = server.data_dir / "server.db"
    if not database.exists():
        return f"cursor={cursor}"
    device_id = recipient._identity.device_id  # noqa: SLF001
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        last = db.execute(
            "SELECT last_seq FROM mailboxes WHERE device_id = ?", (device_id,)
        ).fetchone()
        held = db.execute(
            "SELECT count(*), min(seq), max(seq) FROM mailbox_entries WHERE device_id = ?",
            (device_id,),
        ).fetchone()
    return f"cursor={cursor} server last_seq={last and last[0]} entries (n, min, max)={held}"
