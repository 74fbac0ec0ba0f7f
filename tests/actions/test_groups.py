"""Replies, reactions, edits and delete-for-everyone in a group (issue 6, "Must show").

Three users, two of them with a second (linked) device: every action has to show the same
way on every device of every member, the author's own other device included.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from samizdat.client import actions, groups, timers
from samizdat.client.actions import MessageView
from samizdat.client.app import Client
from tests.e2e.harness import ServerProcess
from tests.groups.helpers import befriend, drain, link, new_user


@pytest.fixture
async def team(tmp_path: Path, server: ServerProcess) -> AsyncIterator[dict[str, Client]]:
    users = {n: await new_user(tmp_path, n, server.link) for n in ("ann", "bea", "cid")}
    devices = dict(users)
    try:
        await befriend(users["ann"], users["bea"])
        await befriend(users["ann"], users["cid"])
        for owner in ("ann", "bea"):
            laptop, _, _ = await link(users[owner], tmp_path / f"{owner}-laptop")
            devices[f"{owner}-laptop"] = laptop
        await _drain_all(devices, rounds=1)  # ann learns the laptops before creating
        await groups.create(users["ann"], "plotters", ["bea", "cid"])
        await _drain_all(devices)
        yield devices
    finally:
        for client in devices.values():
            await client.close()


async def _drain_all(devices: dict[str, Client], rounds: int = 2) -> None:
    for _ in range(rounds):
        for client in devices.values():
            await drain(client, idle=0.5)


def _view(client: Client, msg_id: str) -> MessageView:
    found = [v for v in actions.conversation(client, "plotters", group=True) if v.id == msg_id]
    assert len(found) == 1, msg_id
    return found[0]


async def test_actions_then_a_timer_on_every_device(team: dict[str, Client]) -> None:
    await _actions_show_on_every_device_of_every_member(team)
    await _a_group_timer_set_by_any_member(team)


async def _actions_show_on_every_device_of_every_member(team: dict[str, Client]) -> None:
    ann, bea, cid = team["ann"], team["bea"], team["cid"]
    hello = (await groups.send(ann, "plotters", "hello group")).msg_id
    await _drain_all(team, rounds=1)
    reply = await actions.reply(bea, "plotters", hello, "hello ann", group=True)
    await actions.react(cid, "plotters", hello, "🎉", group=True)
    await actions.react(team["bea-laptop"], "plotters", hello, "👍", group=True)
    await actions.edit(ann, "plotters", hello, "hello, edited", group=True)
    oops = (await groups.send(ann, "plotters", "wrong group")).msg_id
    await _drain_all(team, rounds=1)
    await actions.delete(team["ann-laptop"], "plotters", oops, group=True)
    await _drain_all(team)
    for device, client in team.items():
        first = _view(client, hello)
        assert (first.text, first.edited) == ("hello, edited", True), device
        assert first.reactions == {"bea": "👍", "cid": "🎉"}, device
        assert first.edits == (["hello group"] if device.startswith("ann") else []), device
        answer = _view(client, reply)
        assert (answer.text, answer.reply_to) == ("hello ann", hello), device
        gone = _view(client, oops)
        assert (gone.deleted, gone.text) == (True, ""), device
    # Receipts come back to the author's devices only, from each member.
    await _drain_all(team, rounds=1)
    for device in ("ann", "ann-laptop"):
        assert set(_view(team[device], hello).delivered_to) >= {"bea", "cid"}, device
    assert _view(bea, hello).delivered_to == []


async def _a_group_timer_set_by_any_member(team: dict[str, Client]) -> None:
    await timers.set_timer(team["cid"], "plotters", 5, group=True)
    await _drain_all(team, rounds=1)
    assert {d: timers.timer(c, "plotters", group=True) for d, c in team.items()} == dict.fromkeys(
        team, 5
    )
    msg = (await groups.send(team["bea"], "plotters", "gone soon")).msg_id
    await _drain_all(team, rounds=1)
    expires_at = _view(team["ann"], msg).expires_at
    assert expires_at is not None
    await asyncio.sleep(max(0.0, expires_at / 1000 - time.time()) + 1.0)
    for device, client in team.items():
        timers.sweep(client)
        ids = {v.id for v in actions.conversation(client, "plotters", group=True)}
        assert msg not in ids, device
