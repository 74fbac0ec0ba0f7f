"""What the UI can do, as JSON in and out: one :class:`UiService` holds the local Client.

Everything here calls ``samizdat.client`` (DESIGN §2: web/ talks only to client/); the
HTTP layer (web/app.py) only parses requests and serialises answers. A background task
keeps the client subscribed to its mailbox (``Client.listen``), publishes every new message
to the page as an event, and watches the connection: when it fails, it runs ``probe``
(client/connectivity.py) and publishes the findings in plain words.

Interactive checks (SAS verification, linking a device) run as background *flows*: the
client calls our ``confirm`` with the code, we publish it, and the user's "they match" /
"they differ" answer (``confirm`` action) completes the flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import segno

from samizdat.client import (
    actions,
    attachments,
    connectivity,
    devices,
    groups,
    reach,
    read_marks,
    relays,
    timers,
    verification,
)
from samizdat.client.app import Client, Received
from samizdat.client.connectivity import SasCode, TransportOptions, format_safety_number
from samizdat.client.store import Store
from samizdat.errors import ConnectError, LocalError, SamizdatError

__all__ = ["UiService", "Hub", "Json"]

log = logging.getLogger(__name__)

Json = dict[str, Any]
#: Seconds ``listen`` may stay idle before the loop checks the connection again.
_IDLE = 5.0
_EVENT_QUEUE = 256
#: The largest attachment (protocol/limits.py MAX_ATTACHMENT); the client checks it again.
_MAX_UPLOAD = 100 * 1024 * 1024


def qr_data_uri(text: str) -> str:
    """An SVG QR code as a data: URI, made here so the page loads nothing from elsewhere."""
    uri: str = segno.make(text, error="M").svg_data_uri(scale=4, border=2)
    return uri


class Hub:
    """Fan-out of events to every open page; a page that does not keep up is dropped."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[Json | None]] = set()

    def publish(self, event: Json) -> None:
        for queue in list(self._queues):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._queues.discard(queue)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)  # tells the stream to end; the page reconnects

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[Json | None]]:
        queue: asyncio.Queue[Json | None] = asyncio.Queue(_EVENT_QUEUE)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)


def _chat_key(kind: str, name: str) -> str:
    return f"{kind}:{name}"


class UiService:
    """The one Client of this ``samizdat ui`` process and everything the page asks of it."""

    def __init__(self, home: Path, passphrase: str | None, transport: TransportOptions) -> None:
        """``passphrase`` None: the page asks for it (``samizdat ui --unlock-in-browser``)."""
        self.home = home
        self._passphrase = passphrase
        self._transport = transport
        self.client: Client | None = None
        self.hub = Hub()
        self._loop_task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._connection: Json = {"state": "starting", "sentence": "Starting…"}
        self._findings: Json | None = None
        self._confirms: dict[str, asyncio.Future[bool]] = {}
        self._flows: dict[str, asyncio.Task[None]] = {}
        self._flow_state: dict[str, Json] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._files = tempfile.TemporaryDirectory(prefix="samizdat-ui-")
        self._unlocking = False

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the identity if there is one (else the page shows the set-up screen); without
        a passphrase yet, the page shows the unlock screen first."""
        if self._passphrase is not None and Store.exists(self.home):
            self._adopt(await Client.open(self.home, self._passphrase, self._transport))

    def _adopt(self, client: Client) -> None:
        self.client = client
        # Reactions, edits, receipts and timer changes are stored without being yielded.
        client.on_stored = lambda: self.hub.publish({"type": "changed"})
        self._loop_task = asyncio.get_running_loop().create_task(self._run())
        self.hub.publish({"type": "changed"})

    async def close(self) -> None:
        tasks = [t for t in (self._loop_task, self._probe_task) if t is not None]
        tasks += [*self._flows.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        try:
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self.client is not None:
                await self.client.close()
        finally:
            # Files in transit are plaintext: they go whatever else failed.
            self._files.cleanup()

    def _need(self) -> Client:
        if self.client is None:
            raise LocalError(
                "unlock first" if self._passphrase is None else "set up an identity first"
            )
        return self.client

    def _secret(self) -> str:
        if self._passphrase is None:
            raise LocalError("unlock first")
        return self._passphrase

    # -- the background loop ------------------------------------------------------------

    async def _run(self) -> None:
        client = self._need()
        failures = 0
        while True:
            try:
                conn = await client.route()
                if self._connection.get("state") != "connected":
                    route = connectivity.route_info(conn)
                    self._findings = None
                    self._set_connection({"state": "connected", **asdict(route)})
                failures = 0
                async for message in client.listen(timeout=_IDLE):
                    self._on_message(message)
            except ConnectError as exc:
                failures += 1
                self._offline(str(exc))
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(reach.backoff(failures), 10.0))
            except SamizdatError as exc:
                # A refusal or a bad entry is not a reason to stop listening.
                log.info("listening failed: %s", type(exc).__name__)
                await asyncio.sleep(1.0)

    def _set_connection(self, state: Json) -> None:
        state["proxy"] = connectivity.proxy_label(self._need())
        self._connection = state
        self.hub.publish({"type": "connection", "connection": self.connection()})

    def _offline(self, reason: str) -> None:
        was_offline = self._connection.get("state") == "offline"
        self._set_connection(
            {"state": "offline", "sentence": "Cannot reach your server.", "error": reason}
        )
        if not was_offline or self._findings is None:
            self._start_probe()

    def _start_probe(self) -> None:
        if self._probe_task is not None and not self._probe_task.done():
            return
        self._probe_task = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        try:
            found = await connectivity.findings(self._need())
            self._findings = asdict(found)
        except SamizdatError as exc:
            self._findings = {"ok": False, "sentence": str(exc), "advice": [], "details": []}
        self.hub.publish({"type": "connection", "connection": self.connection()})

    def _on_message(self, message: Received) -> None:
        kind, name = ("group", message.group) if message.group else ("contact", message.sender)
        self.hub.publish(
            {
                "type": "message",
                "chat": {"kind": kind, "name": name},
                "from": message.sender,
                "text": message.text,
                "request": message.request,
            }
        )

    def connection(self) -> Json:
        return {**self._connection, "findings": self._findings}

    async def reconnect(self) -> None:
        """Dial again now (a relay or proxy was added): the loop wakes from its backoff."""
        await connectivity.reconnect(self._need())
        self._findings = None
        self._wake.set()

    # -- reading ------------------------------------------------------------------------

    def state(self) -> Json:
        if self.client is None:
            return {
                "ready": False,
                "locked": self._passphrase is None,
                "exists": Store.exists(self.home),
                "flows": self._flow_state,
            }
        client = self.client
        return {
            "ready": True,
            "name": client.name,
            "chats": self.chats(),
            "connection": self.connection(),
            "flows": self._flow_state,
            "read_receipts": actions.read_receipts(client),
            "delivery_receipts": actions.delivery_receipts(client),
        }

    def chats(self) -> list[Json]:
        client = self._need()
        out: list[Json] = []
        for info in client.contacts():
            if info.state == "blocked":
                continue
            items = client.history(info.name)
            incoming = [i.received_at for i in items if i.direction == "in"]
            last = items[-1] if items else None
            out.append(
                {
                    "kind": "contact",
                    "name": info.name,
                    "state": info.state,
                    "unread": read_marks.unread(client, _chat_key("contact", info.name), incoming),
                    "last": last.text[:120] if last else "",
                    "at": last.sent_at if last else 0,
                }
            )
        for group in groups.list_groups(client):
            gitems = groups.history(client, group.name)
            incoming = [i.received_at for i in gitems if i.direction == "in"]
            glast = gitems[-1] if gitems else None
            out.append(
                {
                    "kind": "group",
                    "name": group.name,
                    "state": "group" if group.active else "left",
                    "unread": read_marks.unread(client, _chat_key("group", group.name), incoming),
                    "last": glast.text[:120] if glast else "",
                    "at": glast.sent_at if glast else 0,
                    "members": group.members,
                    "admin": group.admin,
                }
            )
        out.sort(key=lambda c: (-int(c["at"]), str(c["name"])))
        return out

    def conversation(self, kind: str, name: str) -> Json:
        """The messages of one chat as shown now (replies, reactions, edits, deletions,
        receipts, timers and files applied), oldest first; opening it marks them read."""
        client = self._need()
        group = kind == "group"
        if group:
            members = groups.members(client, name)
            info: Json = {
                "members": [asdict(m) for m in members],
                "admin": any(m.you and m.admin for m in members),
            }
        else:
            contact = next((c for c in client.contacts() if c.name == name), None)
            if contact is None:
                raise LocalError("no such contact")
            info = {"state": contact.state}
        messages = [_message_json(m) for m in actions.conversation(client, name, group=group)]
        incoming = (
            [i.received_at for i in groups.history(client, name) if i.direction == "in"]
            if group
            else [i.received_at for i in client.history(name) if i.direction == "in"]
        )
        read_marks.mark_seen(client, _chat_key(kind, name), incoming)
        self._background(actions.mark_read(client, name, group=group))
        return {
            "kind": kind,
            "name": name,
            "messages": messages,
            "timer": timers.timer(client, name, group=group),
            "files": True,
            **info,
        }

    def _background(self, work: Coroutine[Any, Any, object]) -> None:
        """Run ``work`` without waiting for it; a failure only costs a receipt."""

        async def run() -> None:
            try:
                await work
            except SamizdatError as exc:
                log.info("background work failed: %s", type(exc).__name__)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def contacts(self) -> list[Json]:
        return [asdict(c) for c in self._need().contacts()]

    def safety(self, name: str) -> Json:
        client = self._need()
        digits = client.safety_number(name)
        return {
            "name": name,
            "number": format_safety_number(digits),
            "qr": qr_data_uri(verification.safety_qr_text(client, name)),
        }

    def devices(self) -> list[Json]:
        return [{"id": d.id, "current": d.current} for d in devices.list_devices(self._need())]

    def relays(self) -> list[Json]:
        return [
            {"id": r.link_id.hex(), "label": ", ".join(r.addresses)}
            for r in relays.listing(self._need())
        ]

    # -- acting (POST /api/do/NAME with a JSON object) ------------------------------------

    async def act(self, action: str, body: Json) -> Json:
        handler = _ACTIONS.get(action)
        if handler is None:
            raise LocalError("unknown action")
        result = await handler(self, body)
        if action not in ("confirm", "invite", "probe", "link_device"):
            self.hub.publish({"type": "changed"})
        return result

    async def _setup(self, body: Json) -> Json:
        if self.client is not None:
            raise LocalError("this home folder already has an identity")
        client = await Client.create(
            self.home, self._secret(), _text(body, "server"), _text(body, "name"), self._transport
        )
        self._adopt(client)
        return {"name": client.name}

    async def _join(self, body: Json) -> Json:
        if self.client is not None:
            raise LocalError("this home folder already has an identity")
        code, secret = _text(body, "code"), self._secret()

        async def run() -> None:
            client = await devices.join(
                self.home, secret, code, self._confirmer("join"), 300.0, self._transport
            )
            self._adopt(client)

        self._flow("join", run, "This device is now linked.")
        return {"flow": "join"}

    async def _unlock(self, body: Json) -> Json:
        """The passphrase from the unlock screen: it opens the identity, or, in a home
        without one, becomes the passphrase of the identity the set-up screen creates (the
        page asks for it twice). A wrong one is refused and nothing is kept."""
        if self._passphrase is not None or self._unlocking:
            raise LocalError("already unlocked (or unlocking)")
        secret = _text(body, "passphrase", strip=False)
        self._unlocking = True  # a second request meanwhile must not open a second Client
        try:
            if Store.exists(self.home):
                self._adopt(await Client.open(self.home, secret, self._transport))
            self._passphrase = secret
        finally:
            self._unlocking = False
        return {"ready": self.client is not None}

    async def _send(self, body: Json) -> Json:
        client = self._need()
        name, text = _text(body, "name"), _text(body, "text", strip=False)
        if not text.strip():
            raise LocalError("write something first")
        group = body.get("kind") == "group"
        reply_to = body.get("reply_to")
        if isinstance(reply_to, str) and reply_to:
            return {"id": await actions.reply(client, name, reply_to, text, group=group)}
        if group:
            return {"id": (await groups.send(client, name, text)).msg_id}
        try:
            return {"id": await client.send(name, text)}
        except ConnectError as exc:
            self._wake.set()
            raise ConnectError(
                f"{exc}: not delivered yet; it goes first with your next message"
            ) from exc

    async def _invite(self, body: Json) -> Json:
        link = await self._need().invite()
        return {"link": link, "qr": qr_data_uri(link)}

    async def _add_contact(self, body: Json) -> Json:
        name = _text(body, "name")
        await self._need().add_contact(_text(body, "link"), name)
        return {"name": name}

    async def _accept(self, body: Json) -> Json:
        await self._need().accept(_text(body, "name"))
        return {}

    async def _block(self, body: Json) -> Json:
        await self._need().block(_text(body, "name"))
        return {}

    async def _group_create(self, body: Json) -> Json:
        members = [str(m) for m in body.get("members", [])]
        return {"name": await groups.create(self._need(), _text(body, "name"), members)}

    async def _group_change(self, body: Json) -> Json:
        client, group = self._need(), _text(body, "group")
        contacts = [str(m) for m in body.get("members", [])]
        what = _text(body, "change")
        if what == "add":
            await groups.add(client, group, contacts)
        elif what == "remove":
            await groups.remove(client, group, contacts)
        elif what == "admin":
            await groups.promote(client, group, contacts)
        elif what == "leave":
            await groups.leave(client, group)
        elif what == "rename":
            return {"name": await groups.rename(client, group, _text(body, "new_name"))}
        else:
            raise LocalError("unknown group change")
        return {}

    async def _verify_manual(self, body: Json) -> Json:
        verification.mark_verified(self._need(), _text(body, "name"))
        return {}

    async def _verify_sas(self, body: Json) -> Json:
        client, name = self._need(), _text(body, "name")
        flow = f"verify:{name}"

        async def run() -> None:
            await verification.verify(client, name, self._confirmer(flow), 300.0)

        self._flow(flow, run, f"{name} is verified.")
        return {"flow": flow}

    async def _link_device(self, body: Json) -> Json:
        client = self._need()
        offer = await devices.start_link(client)

        async def run() -> None:
            linked = await devices.finish_link(client, offer, self._confirmer("link"), 600.0)
            self._flow_state["link"]["device"] = linked.id

        self._flow("link", run, "The new device is linked.")
        return {"flow": "link", "code": offer.code, "qr": qr_data_uri(offer.code)}

    async def _revoke_device(self, body: Json) -> Json:
        return {"id": await devices.revoke(self._need(), _text(body, "id"))}

    async def _relay_add(self, body: Json) -> Json:
        relay = relays.add(self._need(), _text(body, "link"))
        await self.reconnect()
        return {"id": relay.link_id.hex()}

    async def _relay_remove(self, body: Json) -> Json:
        relays.remove(self._need(), _text(body, "id"))
        await self.reconnect()
        return {}

    async def _proxy(self, body: Json) -> Json:
        label = connectivity.set_proxy(self._need(), str(body.get("url", "")))
        await self.reconnect()
        return {"proxy": label}

    async def _probe_now(self, body: Json) -> Json:
        self._need()
        self._findings = None
        self._start_probe()
        return {}

    @contextlib.asynccontextmanager
    async def _queued(self) -> AsyncIterator[None]:
        """Say that a change that did not reach the server yet is queued, not lost."""
        try:
            yield
        except ConnectError as exc:
            self._wake.set()
            raise ConnectError(
                f"{exc}: not delivered yet; it is queued and goes out later"
            ) from exc

    async def _react(self, body: Json) -> Json:
        emoji = body.get("emoji")
        if not isinstance(emoji, str):
            raise LocalError("emoji is missing")
        client, (name, group) = self._need(), _conv(body)
        async with self._queued():
            await actions.react(client, name, _text(body, "id"), emoji, group=group)
        return {}

    async def _edit(self, body: Json) -> Json:
        client, (name, group) = self._need(), _conv(body)
        async with self._queued():
            await actions.edit(client, name, _text(body, "id"), _text(body, "text"), group=group)
        return {}

    async def _delete(self, body: Json) -> Json:
        client, (name, group) = self._need(), _conv(body)
        async with self._queued():
            await actions.delete(client, name, _text(body, "id"), group=group)
        return {}

    async def _receipts(self, body: Json) -> Json:
        actions.set_read_receipts(self._need(), body.get("on") is True)
        return {"on": actions.read_receipts(self._need())}

    async def _delivery_receipts(self, body: Json) -> Json:
        actions.set_delivery_receipts(self._need(), body.get("on") is True)
        return {"on": actions.delivery_receipts(self._need())}

    async def _timer(self, body: Json) -> Json:
        seconds = body.get("seconds")
        if not isinstance(seconds, int):
            raise LocalError("seconds is missing")
        client, (name, group) = self._need(), _conv(body)
        await timers.set_timer(client, name, seconds, group=group)
        return {"seconds": seconds}

    async def send_file(
        self, name: str, filename: str, chunks: AsyncIterator[bytes], *, group: bool = False
    ) -> Json:
        """Keep the upload in a private temporary folder, send it to contact (or, with
        ``group``, group) ``name``, then delete it.

        Progress of the encrypted upload to the server is published as ``progress`` events.
        """
        client = self._need()
        transfer = secrets.token_hex(8)
        base = Path(filename.replace("\\", "/")).name.lstrip(".")[:200] or "file"
        folder = Path(self._files.name) / transfer
        folder.mkdir()
        path = folder / base
        try:
            written = 0
            with path.open("wb") as out:
                async for chunk in chunks:
                    written += len(chunk)
                    if written > _MAX_UPLOAD:
                        raise LocalError("the file is too large (100 MiB at most)")
                    out.write(chunk)
            msg_id = await attachments.send_file(
                client,
                name,
                path,
                group=group,
                progress=self._progress(transfer, name, base, "send"),
            )
        finally:
            path.unlink(missing_ok=True)
            folder.rmdir()
        self.hub.publish({"type": "changed"})
        return {"id": msg_id, "transfer": transfer}

    async def fetch_file(self, msg_id: str) -> tuple[Path, str]:
        """Download and decrypt a message's file into the private temporary folder.

        Returns its path (the caller deletes it once sent to the browser) and its name.
        """
        client = self._need()
        transfer = secrets.token_hex(8)
        folder = Path(self._files.name) / transfer
        folder.mkdir()
        path = folder / "file"
        progress = self._progress(transfer, "", "", "download")
        try:
            await attachments.download(client, msg_id, path, progress=progress)
        except BaseException:
            # With an interrupted download's part file, if any: this folder is never reused.
            shutil.rmtree(folder, ignore_errors=True)
            raise
        found = attachments.attachment_of(client, msg_id)
        name = found.name if found is not None else "file"
        return path, Path(name.replace("\\", "/")).name or "file"

    def _progress(
        self, transfer: str, chat: str, filename: str, what: str
    ) -> Callable[[int, int], None]:
        def report(done: int, total: int) -> None:
            self.hub.publish(
                {
                    "type": "progress",
                    "transfer": transfer,
                    "chat": chat,
                    "file": filename,
                    "what": what,
                    "done": done,
                    "total": total,
                }
            )

        return report

    async def _confirm(self, body: Json) -> Json:
        future = self._confirms.pop(_text(body, "flow"), None)
        if future is None or future.done():
            raise LocalError("nothing is waiting for this answer")
        future.set_result(bool(body.get("match")))
        return {}

    # -- flows ----------------------------------------------------------------------------

    def _confirmer(self, flow: str) -> Callable[[SasCode], Awaitable[bool]]:
        async def confirm(code: SasCode) -> bool:
            future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._confirms[flow] = future
            sas = {"code": str(code), "emoji": list(code.emoji)}
            self._flow_state[flow] = {"state": "compare", **sas}
            self.hub.publish({"type": "flow", "flow": flow, **self._flow_state[flow]})
            return await future

        return confirm

    def _flow(self, flow: str, run: Callable[[], Awaitable[None]], done: str) -> None:
        old = self._flows.get(flow)
        if old is not None and not old.done():
            raise LocalError("this is already in progress")
        self._flow_state[flow] = {"state": "waiting"}

        async def wrapped() -> None:
            try:
                await run()
                self._flow_state[flow].update(state="done", message=done)
            except SamizdatError as exc:
                self._flow_state[flow] = {"state": "failed", "message": str(exc)}
            finally:
                self._confirms.pop(flow, None)
            self.hub.publish({"type": "flow", "flow": flow, **self._flow_state[flow]})
            self.hub.publish({"type": "changed"})

        self._flows[flow] = asyncio.get_running_loop().create_task(wrapped())


def _message_json(m: actions.MessageView) -> Json:
    return {
        "id": m.id,
        "direction": m.direction,
        "author": "you" if m.direction == "out" else m.author,
        "text": m.text,
        "sent_at": m.sent_at,
        "reply_to": m.reply_to,
        "reactions": m.reactions,
        "edited": m.edited,
        "deleted": m.deleted,
        "delivered_to": m.delivered_to,
        "read_by": m.read_by,
        "expires_at": m.expires_at,
        "attachment": None if m.attachment is None else asdict(m.attachment),
    }


def _conv(body: Json) -> tuple[str, bool]:
    return _text(body, "name"), body.get("kind") == "group"


def _text(body: Json, key: str, strip: bool = True) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise LocalError(f"{key.replace('_', ' ')} is missing")
    return value.strip() if strip else value


_Action = Callable[[UiService, Json], Awaitable[Json]]
_ACTIONS: dict[str, _Action] = {
    "unlock": UiService._unlock,
    "setup": UiService._setup,
    "join": UiService._join,
    "send": UiService._send,
    "invite": UiService._invite,
    "add_contact": UiService._add_contact,
    "accept": UiService._accept,
    "block": UiService._block,
    "group_create": UiService._group_create,
    "group_change": UiService._group_change,
    "verify_manual": UiService._verify_manual,
    "verify_sas": UiService._verify_sas,
    "link_device": UiService._link_device,
    "revoke_device": UiService._revoke_device,
    "relay_add": UiService._relay_add,
    "relay_remove": UiService._relay_remove,
    "proxy": UiService._proxy,
    "probe": UiService._probe_now,
    "confirm": UiService._confirm,
    "react": UiService._react,
    "edit": UiService._edit,
    "delete": UiService._delete,
    "timer": UiService._timer,
    "read_receipts": UiService._receipts,
    "delivery_receipts": UiService._delivery_receipts,
}
