"""Sending and fetching files: encrypt in chunks, upload resumably, download and check
(docs/protocol.md §5.3.11, §12; docs/decisions/2026-11-29-attachment-blobs.md).

Upload: the file is read twice, one chunk at a time (never whole): once for its SHA-256,
once to seal and send each chunk (``crypto.attachment``) as a ``BlobWrite`` to our own
server, a few writes in flight. Its key, read secret and blob id are recorded first
(``upload`` records, by the file's SHA-256), so uploading the same file again after a
crash or a restart continues from what the server holds. The file is padded with zeros
to its Padmé length (``crypto.padding.padme``, at most ~12 % more), so the server stores
and counts a size bucket, not the file's size; the ``Attachment`` carries both, and a
download keeps the file's bytes only. A broken connection (or a refusal that a retry can cure)
reopens the connection, asks the server how much it holds (``BlobOpen`` again) and
continues from there. The message then carries an ``Attachment`` (key, hash, read
secret, our server's descriptor) inside the end-to-end encryption.

Download: ``BlobRead`` chunk after chunk from the uploader's server (any server: reads
are anonymous, authorised by the read secret), each opened and appended to
``OUT.<blob>.part``; a broken connection resumes at the next chunk, and so does the next
download of the same attachment after a crash; the SHA-256 of the whole plaintext must
match before the part becomes ``OUT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mimetypes
import secrets
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

from samizdat.client import records as rec
from samizdat.client.connection import now_ms
from samizdat.client.peers import verified_descriptor
from samizdat.crypto.attachment import (
    CHUNK_CIPHER,
    CHUNK_PLAIN,
    AttachmentCipher,
    chunk_count,
    chunk_plain_size,
    ciphertext_size,
)
from samizdat.crypto.padding import padme
from samizdat.errors import (
    ConnectError,
    DecryptionError,
    ErrorCode,
    LocalError,
    NotFound,
    ServerRefused,
)
from samizdat.protocol import blobs as b
from samizdat.protocol import frames, limits

if TYPE_CHECKING:
    from samizdat.client.app import Client
    from samizdat.client.connection import Connection
    from samizdat.client.store import Store

__all__ = [
    "AttachmentInfo",
    "Progress",
    "upload_file",
    "send_file",
    "download",
    "fetch_attachment",
    "delete_blob",
    "attachment_of",
    "remember",
    "summary",
    "stored_summary",
    "forget",
]

#: Writes or reads in flight on one connection (throughput over a slow round trip).
WINDOW: Final = 4
#: Consecutive failed attempts (no byte of progress in between) before giving up.
MAX_ATTEMPTS: Final = 8
_RETRYABLE: Final = {ErrorCode.RATE_LIMITED, ErrorCode.CONFLICT, ErrorCode.INTERNAL}
_KIND: Final = "attachment"
_UPLOADS: Final = "upload"
#: An unfinished upload older than this starts over (its partial blob has likely expired).
MAX_RESUME_AGE_MS: Final = 7 * 86_400_000
_OCTETS: Final = "application/octet-stream"

#: Called with (bytes done, bytes in all) as a transfer advances.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class AttachmentInfo:
    """What a history entry shows of a file (no key, no secret)."""

    name: str
    size: int
    media_type: str
    #: When the uploader's server deletes the ciphertext (ms since the epoch; 0 unknown).
    expires_at: int


def summary(attachment: b.Attachment) -> AttachmentInfo:
    return AttachmentInfo(
        name=attachment.name,
        size=attachment.size,
        media_type=attachment.media_type,
        expires_at=attachment.expires_at,
    )


def remember(store: Store, msg_id: bytes, attachment: b.Attachment) -> None:
    """Keep the attachment of message ``msg_id`` (encrypted at rest like every record)."""
    store.put(_KIND, msg_id, b.encode_attachment(attachment))


def attachment_of(client: Client, msg_id: str) -> b.Attachment | None:
    """The attachment of the message with this id (hex), if it had one."""
    try:
        raw = client._store.get(_KIND, bytes.fromhex(msg_id))
    except ValueError:
        return None
    return None if raw is None else b.decode_attachment(raw)


def stored_summary(store: Store, msg_id: bytes) -> AttachmentInfo | None:
    raw = store.get(_KIND, msg_id)
    return None if raw is None else summary(b.decode_attachment(raw))


def forget(store: Store, msg_id: bytes) -> b.Attachment | None:
    """Drop the attachment reference of a deleted or expired message (client/msgstate.py);
    returns it, so that its uploader can delete the blob too."""
    raw = store.get(_KIND, msg_id)
    if raw is None:
        return None
    store.delete(_KIND, msg_id)
    return b.decode_attachment(raw)


# -- upload ---------------------------------------------------------------------------


def _sha256_of(path: Path) -> tuple[bytes, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
    return digest.digest(), size


def _sealed_chunk(fh: BinaryIO, cipher: AttachmentCipher, padded: int, index: int) -> bytes:
    """Chunk ``index`` of the file padded with zeros to ``padded`` bytes, sealed."""
    fh.seek(index * CHUNK_PLAIN)
    wanted = chunk_plain_size(padded, index)
    plain = fh.read(wanted)
    plain += bytes(wanted - len(plain))
    return cipher.seal(index, plain, final=index == chunk_count(padded) - 1)


async def _after_failure(
    client: Client, server_key: bytes, exc: ConnectError | ServerRefused, attempts: int
) -> int:
    """Wait before the next attempt of a transfer (reconnecting after a broken connection);
    raises ``exc`` when it is final: a refusal that cannot pass, or too many attempts."""
    if isinstance(exc, ServerRefused) and exc.code not in _RETRYABLE:
        raise exc
    attempts += 1
    if attempts >= MAX_ATTEMPTS:
        raise exc
    if isinstance(exc, ConnectError):
        await client._drop(server_key)
    await asyncio.sleep(min(2.0, 0.05 * 2**attempts))
    return attempts


async def upload_file(
    client: Client,
    path: Path,
    *,
    ttl_ms: int | None = None,
    media_type: str | None = None,
    name: str | None = None,
    progress: Progress | None = None,
) -> b.Attachment:
    """Encrypt ``path`` with a fresh key and upload it to our server; resumes on breaks.

    Args:
        ttl_ms: delete the blob sooner than the server's default (the mailbox TTL).

    Raises:
        LocalError: no such file, or larger than ``limits.MAX_ATTACHMENT``.
        ConnectError, ServerRefused: gave up (``quota`` is never retried).
    """
    try:
        sha256, size = await asyncio.to_thread(_sha256_of, path)
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise NotFound("no such file") from exc
    if size > limits.MAX_ATTACHMENT:
        raise LocalError(f"a file may have at most {limits.MAX_ATTACHMENT} bytes")
    pending = _pending_upload(client, sha256, ttl_ms)
    key, secret, blob_id = pending.key, pending.secret, pending.blob_id
    cipher = AttachmentCipher(key)
    padded = padme(size)  # MAX_ATTACHMENT is a Padmé length: never past it
    total = ciphertext_size(padded)
    opening = b.BlobOpen(
        rid=0,
        blob_id=blob_id,
        size=total,
        read_hash=hashlib.sha256(secret).digest(),
        ttl_ms=ttl_ms,
    )
    expires_at = 0
    with path.open("rb") as fh:
        attempts = 0
        held = 0
        while True:
            try:
                conn = await client._own()
                status = await conn.call(opening, b.BlobStatus)
                expires_at = status.expires_at
                if status.received > held:  # progress since the last failure
                    held, attempts = status.received, 0
                if status.received == total:
                    break
                await _write_from(conn, fh, cipher, opening, padded, status.received, progress)
                break
            except (ConnectError, ServerRefused) as exc:
                if isinstance(exc, ServerRefused) and exc.code == ErrorCode.CONFLICT:
                    # The recorded blob id is taken (another's, or other sizes): the next
                    # upload of this file draws a new one instead of meeting it again.
                    _forget_upload(client, sha256)
                attempts = await _after_failure(client, client._identity.server_key, exc, attempts)
    _forget_upload(client, sha256)
    signed, _ = client.own_descriptor()
    return b.Attachment(
        blob_id=blob_id,
        secret=secret,
        key=key,
        sha256=sha256,
        size=size,
        padded=padded,
        server=signed,
        # Cut to what a receiver's decoder accepts (protocol §12.1), or it drops the message.
        media_type=(media_type or mimetypes.guess_type(path.name)[0] or _OCTETS)[:127],
        name=(name if name is not None else path.name)[: limits.MAX_TEXT],
        expires_at=expires_at,
    )


def _pending_upload(client: Client, sha256: bytes, ttl_ms: int | None) -> rec.PendingUpload:
    """The unfinished upload of this file (same content, same TTL) to continue, or a new
    one, recorded before the first chunk leaves. Records past MAX_RESUME_AGE go."""
    now = now_ms()
    store = client._store
    with store.locked():
        held: rec.PendingUpload | None = None
        for raw in store.values(_UPLOADS):
            record = rec.decode(raw, rec.PendingUpload)
            if now - record.started_at > MAX_RESUME_AGE_MS:
                store.delete(_UPLOADS, record.sha256)
            elif record.sha256 == sha256 and record.ttl_ms == ttl_ms:
                held = record
        if held is not None:
            return held
        fresh = rec.PendingUpload(
            sha256=sha256,
            key=secrets.token_bytes(32),
            secret=secrets.token_bytes(32),
            blob_id=secrets.token_bytes(16),
            ttl_ms=ttl_ms,
            started_at=now,
        )
        store.put(_UPLOADS, sha256, rec.encode(fresh))
        return fresh


def _forget_upload(client: Client, sha256: bytes) -> None:
    with client._store.locked():
        client._store.delete(_UPLOADS, sha256)


async def _write_from(
    conn: Connection,
    fh: BinaryIO,
    cipher: AttachmentCipher,
    opening: b.BlobOpen,
    padded: int,
    received: int,
    progress: Progress | None,
) -> None:
    """Send every chunk from ``received`` on, up to WINDOW writes in flight, in order."""
    count = chunk_count(padded)
    total = ciphertext_size(padded)
    index = received // CHUNK_CIPHER
    pending: deque[asyncio.Task[b.BlobStatus]] = deque()
    try:
        while index < count or pending:
            while index < count and len(pending) < WINDOW:
                data = _sealed_chunk(fh, cipher, padded, index)
                frame = b.BlobWrite(
                    rid=0, blob_id=opening.blob_id, offset=index * CHUNK_CIPHER, data=data
                )
                pending.append(asyncio.create_task(conn.call(frame, b.BlobStatus)))
                index += 1
                # Let the task send now, so frames leave in index order.
                await asyncio.sleep(0)
            status = await pending.popleft()
            if progress is not None:
                progress(status.received, total)
    finally:
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task


async def send_file(
    client: Client,
    name: str,
    path: Path,
    text: str = "",
    *,
    group: bool = False,
    ttl_ms: int | None = None,
    media_type: str | None = None,
    progress: Progress | None = None,
) -> str:
    """Upload ``path`` and send it to contact (or, with ``group``, group) ``name`` with an
    optional caption.

    Without ``ttl_ms`` the blob lives as long as the conversation's disappearing-message
    timer, if one is set (client/timers.py), else the server's default.
    Returns the message id (hex), which ``download`` takes on the other side.
    Raises what :func:`upload_file`, ``Client.send`` and ``groups.send`` raise.
    """
    # Imported here: timers and groups import modules that import this one.
    from samizdat.client import groups, timers

    if ttl_ms is None:
        seconds = timers.timer(client, name, group)
        ttl_ms = seconds * 1000 if seconds else None
    attachment = await upload_file(
        client, path, ttl_ms=ttl_ms, media_type=media_type, progress=progress
    )
    if group:
        return (await groups.send(client, name, text, attachment=attachment)).msg_id
    return await client.send(name, text, attachment=attachment)


async def delete_blob(client: Client, attachment: b.Attachment) -> None:
    """Delete the ciphertext of an attachment we uploaded (delete-for-everyone, timers).

    Deleting a blob that is gone already succeeds. Raises ConnectError, ServerRefused.
    """
    for attempt in range(2):
        conn = await client._own()
        try:
            await conn.call(b.BlobDelete(rid=0, blob_id=attachment.blob_id), frames.Ok)
            return
        except ConnectError:
            await client._drop(client._identity.server_key)
            if attempt:
                raise


# -- download -------------------------------------------------------------------------


def _default_out(attachment: b.Attachment) -> Path:
    # Only the last path component, so a hostile name cannot point outside the cwd.
    printable = "".join(c if c.isprintable() else "_" for c in attachment.name)
    base = Path(printable.replace("\\", "/")).name.lstrip(".") or "attachment"
    return Path.cwd() / base


def _full_id(client: Client, msg_id: str) -> str:
    """A full message id, or the one id of a file in a 1:1 history that starts with
    ``msg_id`` (``history`` shows the first 8 digits)."""
    msg_id = msg_id.strip().lower()
    if len(msg_id) >= 32 or len(msg_id) < 4:
        return msg_id
    found = {
        item.id
        for contact in client.contacts()
        for item in client.history(contact.name)
        if item.attachment is not None and item.id.startswith(msg_id)
    }
    if len(found) > 1:
        raise LocalError("more than one file starts with this id; give more digits")
    return found.pop() if found else msg_id


async def download(
    client: Client, msg_id: str, out: Path | None = None, progress: Progress | None = None
) -> Path:
    """Fetch, decrypt and check the attachment of message ``msg_id`` (hex, or a unique
    prefix of at least 4 digits) into ``out``.

    Without ``out``: the file's own name (its last component) in the current directory,
    never overwriting an existing file.

    Raises:
        NotFound: no such message with an attachment. LocalError: ``out`` exists.
        DecryptionError: a chunk or the whole file does not check (nothing is kept).
        ConnectError, ServerRefused: gave up (``not_found``: deleted or expired).
    """
    attachment = attachment_of(client, _full_id(client, msg_id))
    if attachment is None:
        raise NotFound("no attachment with this message id")
    if out is None:
        out = _default_out(attachment)
        if out.exists():
            raise LocalError("a file of that name exists; choose another with --out")
    return await fetch_attachment(client, attachment, out, progress)


async def fetch_attachment(
    client: Client, attachment: b.Attachment, out: Path, progress: Progress | None = None
) -> Path:
    """Download ``attachment`` into ``out`` (see :func:`download`).

    An interrupted download (the process killed, or a network that stayed down) leaves
    ``OUT.<blob>.part``, and the next download of the same attachment continues after its
    complete chunks; a file that does not check is never kept.
    """
    descriptor = verified_descriptor(attachment.server)
    server_key = descriptor.server_key
    part = out.with_name(f"{out.name}.{attachment.blob_id.hex()[:12]}.part")
    cipher = AttachmentCipher(attachment.key)
    count = chunk_count(attachment.blob_plaintext)
    attempts = 0
    try:
        index, digest = await asyncio.to_thread(_resume_part, part)
        with part.open("ab") as fh:
            while index < count:
                try:
                    conn = await client._connection(server_key, attachment.server)
                    chunks = _read_from(conn, attachment, cipher, index)
                    async with contextlib.aclosing(chunks):
                        async for plain in chunks:
                            # The padding past the file's size is not the file's.
                            kept = plain[: max(0, attachment.size - index * CHUNK_PLAIN)]
                            fh.write(kept)
                            digest.update(kept)
                            index += 1
                            attempts = 0
                            if progress is not None:
                                progress(fh.tell(), attachment.size)
                except (ConnectError, ServerRefused) as exc:
                    attempts = await _after_failure(client, server_key, exc, attempts)
        if digest.digest() != attachment.sha256:
            raise DecryptionError("the file does not match its hash")
        part.replace(out)
    except BaseException as exc:
        # Kept to resume: an interruption. Anything else (a file that does not check, a
        # blob that is gone) leaves nothing behind.
        if isinstance(exc, Exception) and not isinstance(exc, ConnectError):
            part.unlink(missing_ok=True)
        raise
    return out


def _resume_part(part: Path) -> tuple[int, hashlib._Hash]:
    """Cut ``part`` to its complete chunks; the next chunk's index and the hash so far."""
    if not part.exists():
        return 0, hashlib.sha256()
    index = part.stat().st_size // CHUNK_PLAIN
    with part.open("r+b") as fh:
        fh.truncate(index * CHUNK_PLAIN)
        return index, hashlib.file_digest(fh, "sha256")


async def _read_from(
    conn: Connection, attachment: b.Attachment, cipher: AttachmentCipher, start: int
) -> AsyncGenerator[bytes, None]:
    """Plaintext chunks from ``start`` on, in order, up to WINDOW reads in flight."""
    count = chunk_count(attachment.blob_plaintext)
    total = ciphertext_size(attachment.blob_plaintext)
    index = wanted = start
    pending: deque[asyncio.Task[b.BlobData]] = deque()
    try:
        while index < count:
            while wanted < count and len(pending) < WINDOW:
                frame = b.BlobRead(
                    rid=0,
                    blob_id=attachment.blob_id,
                    secret=attachment.secret,
                    offset=wanted * CHUNK_CIPHER,
                )
                pending.append(asyncio.create_task(conn.call(frame, b.BlobData)))
                wanted += 1
            data = await pending.popleft()
            if data.size != total or data.offset != index * CHUNK_CIPHER:
                raise DecryptionError("the blob does not match its attachment")
            yield cipher.open(index, data.data, final=index == count - 1)
            index += 1
    finally:
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task
