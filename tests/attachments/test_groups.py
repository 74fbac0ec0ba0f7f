"""A file sent to a group: every member downloads it from the sender's server and it
checks (the Attachment travels inside the Megolm message, protocol §12.1)."""

from __future__ import annotations

from pathlib import Path

from samizdat.client import attachments, groups
from samizdat.server.app import RunningServer
from tests.groups.helpers import befriend, drain, link, new_user

from .conftest import make_file, sha256_of


async def test_group_members_download_a_file(inproc: RunningServer, tmp_path: Path) -> None:
    ann, bea, cid = [await new_user(tmp_path, n, inproc.link) for n in ("ann", "bea", "cid")]
    try:
        await befriend(ann, bea)
        await befriend(ann, cid)
        name = await groups.create(ann, "club", ["bea", "cid"])
        for member in (bea, cid):
            await drain(member)
        digest = make_file(tmp_path / "minutes.txt", 200_000)
        msg_id = await attachments.send_file(
            ann, name, tmp_path / "minutes.txt", "the minutes", group=True
        )
        for member in (bea, cid):
            got = [m for m in await drain(member) if m.id == msg_id]
            assert [m.text for m in got] == ["the minutes"]
            assert got[0].attachment is not None and got[0].attachment.size == 200_000
            info = attachments.attachment_of(member, msg_id)
            assert info is not None and info.name == "minutes.txt"
            out = await attachments.download(member, msg_id, tmp_path / f"{member.name}.txt")
            assert sha256_of(out) == digest
    finally:
        for client in (ann, bea, cid):
            await client.close()


async def test_a_file_sent_one_to_one_opens_on_the_senders_other_device(
    inproc: RunningServer, tmp_path: Path
) -> None:
    ann, bea = [await new_user(tmp_path, n, inproc.link) for n in ("ann", "bea")]
    laptop, _, _ = await link(ann, tmp_path / "ann-laptop")
    try:
        await befriend(ann, bea)
        await drain(laptop)
        digest = make_file(tmp_path / "photo.jpg", 150_000)
        msg_id = await attachments.send_file(ann, "bea", tmp_path / "photo.jpg", "a photo")
        await drain(laptop)
        sent = [h for h in laptop.history("bea") if h.id == msg_id]
        assert [(h.direction, h.text) for h in sent] == [("out", "a photo")]
        assert sent[0].attachment is not None and sent[0].attachment.size == 150_000
        out = await attachments.download(laptop, msg_id, tmp_path / "on-laptop.jpg")
        assert sha256_of(out) == digest
    finally:
        for client in (ann, bea, laptop):
            await client.close()
