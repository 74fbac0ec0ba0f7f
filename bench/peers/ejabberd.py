"""ejabberd (Debian's package) driven with the same open-loop method as samizdat's bench.

    .venv/bin/python bench/peers/ejabberd.py [--rates 250,500,...] [--duration 8]

Installs ejabberd with apt-get if it is missing (root), then runs its own ejabberd node (not
the system service) from `ejabberdctl foreground` with a config file, spool and log
directories of its own under a temporary directory: one c2s listener on 127.0.0.1 without
TLS, shapers and rate limits off, mod_offline on, Erlang distribution bound to 127.0.0.1 on a
fixed port (no epmd), schedulers without busy-waiting (`+sbwt none`: idle spinning would
count as CPU per message). Users register in-band; sender i sends 1:1 <message type='chat'/>
stanzas to receiver i's bare JID. Figures: docs/performance.md ("Peers").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ladder import (  # noqa: E402
    Deadline,
    Step,
    climb,
    descendant_pids,
    free_port,
    parse_rates,
    process_name,
    run_step,
)
from xmpp import Stream, body_text  # noqa: E402

from openloop import open_loop  # noqa: E402

DOMAIN = "localhost"
PASSWORD = "bench-password"
BODY_SIZE = 1024  # as samizdat's bench: one short text message
DEFAULT_RATES = "100,200,400,700,1000,1500,2000,2500,3000,4000,6000,8000"
EJABBERDCTL = "/usr/sbin/ejabberdctl"

CONFIG = """\
hosts: ["{domain}"]
loglevel: warning
log_rotate_count: 0
auth_method: internal
auth_password_format: plain
default_db: mnesia
registration_timeout: infinity
listen:
  - port: {port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    shaper: none
    access: c2s
acl:
  local:
    user_regexp: ""
access_rules:
  c2s:
    allow: all
  register:
    allow: all
  local:
    allow: local
shaper_rules:
  max_user_sessions: 10
  max_user_offline_messages: 1000000
modules:
  mod_offline:
    access_max_user_messages: max_user_offline_messages
  mod_register:
    access: register
    ip_access: all
  mod_roster: {{}}
  mod_ping: {{}}
"""

CTL_CONFIG = """\
INET_DIST_INTERFACE=127.0.0.1
ERL_DIST_PORT={dist_port}
ERL_EPMD_ADDRESS=127.0.0.1
ERL_OPTIONS="+sbwt none +sbwtdcpu none +sbwtdio none"
"""


def ensure_installed() -> None:
    if Path(EJABBERDCTL).exists():
        return
    print("installing ejabberd from Debian's packages (apt-get) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "ejabberd"], check=True, env=env)


def ejabberd_version() -> str:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "ejabberd"], capture_output=True, text=True
    )
    return out.stdout.strip() or "?"


class Ejabberd:
    """One ejabberd node of our own: start(), the beam pid for CPU, stop()."""

    name = "ejabberd"

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "ejabberd"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.lanes: list[tuple[str, str]] = []

    def describe(self) -> str:
        return (
            f"ejabberd {ejabberd_version()} (Debian), one node, mnesia, c2s on 127.0.0.1 "
            "without TLS, shapers off, mod_offline on"
        )

    def start(self) -> None:
        ensure_installed()
        for sub in ("spool", "logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "ejabberd.yml").write_text(CONFIG.format(domain=DOMAIN, port=self.port))
        (self.dir / "ejabberdctl.cfg").write_text(CTL_CONFIG.format(dist_port=free_port()))
        # ejabberdctl, run as root, drops to the package's `ejabberd` user.
        shutil.chown(self.dir.parent, "ejabberd")
        for path in [self.dir, *self.dir.rglob("*")]:
            shutil.chown(path, "ejabberd", "ejabberd")
        node = f"bench{secrets.token_hex(3)}@localhost"
        self.proc = subprocess.Popen(
            [EJABBERDCTL, "--config-dir", str(self.dir), "--config", str(self.dir / "ejabberd.yml")]
            + [
                "--ctl-config",
                str(self.dir / "ejabberdctl.cfg"),
                "--spool",
                str(self.dir / "spool"),
            ]
            + ["--logs", str(self.dir / "logs"), "--node", node, "foreground"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.dir,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"ejabberd exited; see {self.dir / 'logs'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            self.stop()
            raise SystemExit("ejabberd did not start listening")
        beams = [p for p in descendant_pids(self.proc.pid) if process_name(p) == "beam.smp"]
        if len(beams) != 1:
            self.stop()
            raise SystemExit(f"expected one beam.smp under ejabberdctl, found {beams}")
        self.pid = beams[0]

    def stop(self) -> None:
        if self.pid:
            # The Erlang VM stops cleanly (init:stop) on SIGTERM.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        if self.proc is not None:
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                for pid in reversed(descendant_pids(self.proc.pid)):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.wait(10)

    def setup(self, lanes: int) -> None:
        tag = secrets.token_hex(3)
        self.lanes = [(f"s{tag}_{i}", f"r{tag}_{i}") for i in range(lanes)]
        asyncio.run(_register(self.port, [u for pair in self.lanes for u in pair]))

    def measure(self, rate: float, duration: float, processes: int = 1) -> Step:
        chunks = [self.lanes[k::processes] for k in range(processes)]
        receivers = [r for _, r in self.lanes]
        return run_step(
            rate,
            [self.pid],
            _receiver_process,
            (self.port, receivers, duration + 5),
            _sender_process,
            [(self.port, chunk, rate * len(chunk) / len(self.lanes), duration) for chunk in chunks],
        )


async def _register(port: int, users: list[str]) -> None:
    async def one(user: str) -> None:
        stream = await Stream.connect("127.0.0.1", port, DOMAIN)
        await stream.register(user, PASSWORD)
        await stream.close()

    for start in range(0, len(users), 20):
        await asyncio.gather(*(one(u) for u in users[start : start + 20]))


async def _login(port: int, user: str) -> Stream:
    stream = await Stream.connect("127.0.0.1", port, DOMAIN)
    await stream.login(user, PASSWORD, "bench")
    return stream


async def _sender(
    port: int, pairs: list[tuple[str, str]], rate: float, duration: float
) -> tuple[int, float]:
    streams = [await _login(port, s) for s, _ in pairs]
    readers = [asyncio.ensure_future(_discard(s)) for s in streams]
    filler = "x" * (BODY_SIZE - 20)

    async def send(slot: int, n: int, scheduled: int) -> None:
        stream = streams[slot]
        stream.message(f"{pairs[slot][1]}@{DOMAIN}", f"{scheduled} {filler}")
        await stream.writer.drain()  # XMPP has no per-message ack: "sent" = written out

    sent, elapsed = await open_loop(len(pairs), rate, duration, send)
    for task in readers:
        task.cancel()
    await asyncio.gather(*(s.close() for s in streams))
    return sent, elapsed


async def _discard(stream: Stream) -> None:
    while True:
        await stream.element()


def _sender_process(
    port: int, pairs: list[tuple[str, str]], rate: float, duration: float, out: Any
) -> None:
    out.put(asyncio.run(_sender(port, pairs, rate, duration)))


async def _receiver(port: int, users: list[str], expect_seconds: float, ready: Any) -> list[int]:
    streams = [await _login(port, u) for u in users]
    for stream in streams:
        stream.send("<presence/>")  # available: chat messages to the bare JID come here
    latencies: list[int] = []
    phase_start = time.time_ns()
    ready.set()
    deadline = Deadline(expect_seconds)

    async def drain(stream: Stream) -> None:
        while True:
            remaining = deadline.remaining()
            if remaining <= 0:
                return
            try:
                elem = await asyncio.wait_for(stream.element(), remaining)
            except TimeoutError:
                continue
            text = body_text(elem)
            if text:
                now = time.time_ns()
                deadline.arrived()
                stamp = int(text.split(" ", 1)[0])
                if stamp >= phase_start:
                    latencies.append(now - stamp)

    await asyncio.gather(*(drain(s) for s in streams))
    await asyncio.gather(*(s.close() for s in streams))
    return latencies


def _receiver_process(
    port: int, users: list[str], expect_seconds: float, ready: Any, out: Any
) -> None:
    out.put(asyncio.run(_receiver(port, users, expect_seconds, ready)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default=DEFAULT_RATES, help="offered messages/s, ascending")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per step")
    parser.add_argument("--lanes", type=int, default=20, help="sender→receiver pairs")
    parser.add_argument("--processes", type=int, default=1, help="sender processes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="samizdat-peer-") as tmp:
        server = Ejabberd(Path(tmp))
        server.start()
        try:
            server.setup(args.lanes)
            print(server.describe())
            climb(
                "ejabberd",
                parse_rates(args.rates),
                args.duration,
                lambda rate, duration: server.measure(rate, duration, args.processes),
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
