"""The composition root: real processes, signals, rate limits, HTTP pages, log privacy."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys
import time
from pathlib import Path

import httpx
import pytest

from samizdat.protocol import frames as f
from samizdat.protocol.descriptor import open_descriptor
from samizdat.protocol.links import decode_server_link
from samizdat.server.app import RunningServer, ServerConfig, start
from samizdat.server.ratelimit import RateLimits

from .helpers import FrameClient, User, client_ssl_context

SERVER_SCRIPT = (
    "import sys; from pathlib import Path;"
    "from samizdat.server.app import run, ServerConfig;"
    "run(ServerConfig(data_dir=Path(sys.argv[1])))"
)


async def spawn(data_dir: Path) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVER_SCRIPT,
        str(data_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    link = line.decode().strip()
    assert link.startswith("samizdat:server/"), line
    return proc, link


@pytest.mark.slow
async def test_sigkill_loses_nothing_acknowledged_and_sigterm_is_clean(tmp_path: Path) -> None:
    data_dir = tmp_path / "srv"
    proc, link = await spawn(data_dir)
    try:
        assert (data_dir / "server-link").read_text().strip() == link
        user = User.generate()
        device = user.devices[0]
        token = os.urandom(32)
        async with FrameClient(link) as c:
            await c.hello()
            await c.register(user, device)
            await c.request(f.AddToken(rid=c.rid(), token=token))
            deposits = [
                f.Deposit(
                    rid=100 + n,
                    token=token,
                    envelopes=[
                        f.Envelope(
                            device_id=device.device_id,
                            msg_id=(n * 10 + i).to_bytes(16, "big"),
                            body=os.urandom(100),
                        )
                        for i in range(5)
                    ],
                )
                for n in range(10)
            ]
            # Pipelined: every DepositOk must mean "on disk".
            for deposit in deposits:
                await c.send(deposit)
            for _ in deposits:
                answer = await c.recv()
                assert isinstance(answer, f.DepositOk) and answer.stored == 5
            proc.kill()  # SIGKILL, right after the last DepositOk
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    proc, link2 = await spawn(data_dir)
    try:
        d1 = decode_server_link(link).descriptor
        d2 = decode_server_link(link2).descriptor
        # Same server key and TLS pin after a restart; a newer descriptor.
        now = int(time.time() * 1000)
        old, new = open_descriptor(d1, now), open_descriptor(d2, now, expected_key=None)
        assert (new.server_key, new.tls_pin) == (old.server_key, old.tls_pin)
        assert new.seq > old.seq
        async with FrameClient(link2) as c:
            await c.hello()
            await c.request(
                f.Auth(
                    rid=c.rid(),
                    device_id=device.device_id,
                    proof=device.proof(c.descriptor.server_key, c.nonce),
                )
            )
            assert isinstance(await c.request(f.Subscribe(rid=c.rid())), f.Ok)
            entries: list[f.Entry] = []
            while len(entries) < 50:
                frame = await asyncio.wait_for(c.recv(), 10)
                assert isinstance(frame, f.Deliver)
                entries.extend(frame.entries)
            assert [e.seq for e in entries] == list(range(1, 51))
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        assert proc.stderr is not None
        log = (await proc.stderr.read()).decode()
        assert "server stopped" in log
        for secret in (device.device_id, token, user.user_key):
            assert secret.hex() not in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_http_pages(tmp_path: Path) -> None:
    running = await start(ServerConfig(data_dir=tmp_path, print_link=False))
    try:
        context = client_ssl_context(open_descriptor(running.descriptor, 0))
        async with httpx.AsyncClient(verify=context, trust_env=False) as http:
            index = await http.get(f"https://127.0.0.1:{running.port}/")
            assert index.status_code == 200 and "samizdat" in index.text
            health = await http.get(f"https://127.0.0.1:{running.port}/v1/health")
            assert health.json() == {"status": "ok"}
        # A client that trusts another CA must fail the handshake.
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(verify=ssl.create_default_context()) as http:
                await http.get(f"https://127.0.0.1:{running.port}/")
    finally:
        await running.stop()
    assert (tmp_path / "server-link").read_text().strip() == running.link


async def test_rate_limits(tmp_path: Path) -> None:
    limits = RateLimits(connection_rate=0.5, connection_burst=6, token_rate=0.5, token_burst=2)
    running = await start(ServerConfig(data_dir=tmp_path, rate_limits=limits, print_link=False))
    try:
        async with FrameClient(running.link) as c:
            await c.hello()
            user = User.generate()
            await c.register(user, user.devices[0])
            token = os.urandom(32)
            await c.request(f.AddToken(rid=c.rid(), token=token))
            envelope = f.Envelope(device_id=user.devices[0].device_id, msg_id=bytes(16), body=b"x")
            for _ in range(2):
                ok = await c.request(f.Deposit(rid=c.rid(), token=token, envelopes=[envelope]))
                assert isinstance(ok, f.DepositOk)
            # Third use of the token: per-token limit.
            await c.expect_error(
                f.Deposit(rid=c.rid(), token=token, envelopes=[envelope]), "rate_limited"
            )
            # Seventh frame on this connection: per-connection limit.
            await c.expect_error(f.Ack(rid=c.rid(), up_to=1), "rate_limited")
    finally:
        await running.stop()


async def test_logs_carry_no_secrets(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    user = User.generate()
    device = user.devices[0]
    token = os.urandom(32)
    async with FrameClient(server.link) as c:
        await c.hello()
        await c.register(user, device)
        await c.request(f.AddToken(rid=c.rid(), token=token))
        await c.send_raw(b"\xc1")
        await c.recv()
    await server.stop()
    text = caplog.text
    for secret in (device.device_id, token, user.user_key):
        assert secret.hex() not in text and repr(secret) not in text
