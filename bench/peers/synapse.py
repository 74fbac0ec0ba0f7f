"""Matrix Synapse (from PyPI) driven with the same open-loop method as samizdat's bench.

    .venv/bin/python bench/peers/synapse.py [--db sqlite|postgresql://…] [--rates 10,20,…]

Creates its own virtual environment under bench/.peers/ (gitignored) with `matrix-synapse`
from PyPI on first use, then runs one homeserver process from a config file it writes into
a temporary directory: one client-API listener on 127.0.0.1 without TLS, SQLite (or a fresh
database on the given PostgreSQL, dropped afterwards), presence off, no federation listener
and no remote servers allowed, every rate limit raised out of reach. Users are registered
with the registration shared secret; each sender/receiver pair shares a direct-message room.
Senders PUT m.room.message events (the reply comes once the event is persisted); receivers
long-poll /sync. Figures: docs/performance.md ("Peers").
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ladder import Deadline, Step, climb, free_port, parse_rates, run_step  # noqa: E402

from openloop import open_loop  # noqa: E402

VENV = Path(__file__).resolve().parents[1] / ".peers" / "synapse-venv"
SERVER_NAME = "bench.localhost"
BODY_SIZE = 1024  # as samizdat's bench: one short text message
DEFAULT_RATES = "5,10,15,20,25,30,40,60,80"
UNLIMITED = {"per_second": 1_000_000, "burst_count": 1_000_000}
SYNC_FILTER = json.dumps(
    {
        "presence": {"types": []},
        "account_data": {"types": []},
        "room": {
            "timeline": {"limit": 1000, "types": ["m.room.message"]},
            "state": {"types": []},
            "ephemeral": {"types": []},
            "account_data": {"types": []},
        },
    },
    separators=(",", ":"),
)


def ensure_venv() -> Path:
    """bench/.peers/synapse-venv with matrix-synapse (and psycopg2 for PostgreSQL)."""
    python = VENV / "bin" / "python"
    if not (VENV / ".installed").exists():
        print(f"creating {VENV} and installing matrix-synapse from PyPI ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "matrix-synapse", "psycopg2-binary"], check=True)
        (VENV / ".installed").write_text("")
    return python


def synapse_version(python: Path) -> str:
    out = subprocess.run(
        [str(python), "-c", "import synapse; print(synapse.__version__)"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or "?"


class Synapse:
    """One homeserver process of our own: start(), its pid for CPU, stop()."""

    def __init__(self, workdir: Path, db: str = "sqlite") -> None:
        self.dir = workdir / "synapse"
        self.db = db
        self.name = "Synapse (SQLite)" if db == "sqlite" else "Synapse (PostgreSQL)"
        self.pg_database = ""
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.secret = secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.python = VENV / "bin" / "python"
        self.pairs: list[tuple[str, str, str]] = []  # (sender token, receiver token, room)

    def describe(self) -> str:
        store = "SQLite (WAL)" if self.db == "sqlite" else "PostgreSQL (synchronous_commit=on)"
        return (
            f"Synapse {synapse_version(self.python)}, one process, {store}, HTTP on 127.0.0.1 "
            "without TLS, presence/federation/rate limits off"
        )

    def _database(self) -> dict[str, Any]:
        if self.db == "sqlite":
            return {"name": "sqlite3", "args": {"database": str(self.dir / "homeserver.db")}}
        url = urllib.parse.urlsplit(self.db)
        self.pg_database = f"synapse_bench_{secrets.token_hex(4)}"
        # Synapse wants C collation; template0 lets us choose it.
        _psql(
            self.db,
            f"CREATE DATABASE {self.pg_database} ENCODING 'UTF8' LC_COLLATE 'C' "
            "LC_CTYPE 'C' TEMPLATE template0",
        )
        return {
            "name": "psycopg2",
            "args": {
                "user": url.username or "postgres",
                "password": url.password or "",
                "host": url.hostname or "127.0.0.1",
                "port": url.port or 5432,
                "database": self.pg_database,
                "cp_min": 5,
                "cp_max": 10,
            },
        }

    def start(self) -> None:
        self.python = ensure_venv()
        self.dir.mkdir(parents=True)
        log_config = self.dir / "log.yaml"
        log_config.write_text(
            json.dumps(
                {
                    "version": 1,
                    "formatters": {"f": {"format": "%(asctime)s %(name)s %(message)s"}},
                    "handlers": {
                        "file": {
                            "class": "logging.FileHandler",
                            "filename": str(self.dir / "homeserver.log"),
                            "formatter": "f",
                        }
                    },
                    "root": {"level": "WARNING", "handlers": ["file"]},
                    "disable_existing_loggers": False,
                }
            )
        )
        config: dict[str, Any] = {
            "server_name": SERVER_NAME,
            "public_baseurl": self.base + "/",
            "pid_file": str(self.dir / "homeserver.pid"),
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": self._database(),
            "log_config": str(log_config),
            "media_store_path": str(self.dir / "media"),
            "signing_key_path": str(self.dir / "signing.key"),
            "registration_shared_secret": self.secret,
            "macaroon_secret_key": secrets.token_hex(16),
            "form_secret": secrets.token_hex(16),
            "report_stats": False,
            "enable_metrics": False,
            "url_preview_enabled": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "federation_domain_whitelist": [],
            "presence": {"enabled": False},
            "bcrypt_rounds": 4,  # registration speed only; not on the message path
            "rc_message": UNLIMITED,
            "rc_registration": UNLIMITED,
            "rc_login": {"address": UNLIMITED, "account": UNLIMITED, "failed_attempts": UNLIMITED},
            "rc_joins": {"local": UNLIMITED, "remote": UNLIMITED},
            "rc_joins_per_room": UNLIMITED,
            "rc_invites": {"per_room": UNLIMITED, "per_user": UNLIMITED, "per_issuer": UNLIMITED},
            "rc_room_creation": UNLIMITED,
            "rc_presence": {"per_user": UNLIMITED},
        }
        path = self.dir / "homeserver.yaml"
        path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        module = [str(self.python), "-m", "synapse.app.homeserver", "--config-path", str(path)]
        subprocess.run([*module, "--generate-keys"], check=True, cwd=self.dir, capture_output=True)
        self.proc = subprocess.Popen(
            module, cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"synapse exited; see {self.dir / 'homeserver.log'}")
            try:
                if httpx.get(self.base + "/_matrix/client/versions", timeout=2).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise SystemExit("synapse did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.pg_database:
            _psql(self.db, f"DROP DATABASE IF EXISTS {self.pg_database}")

    def setup(self, lanes: int) -> None:
        self.pairs = asyncio.run(_setup(self.base, self.secret, lanes))

    def measure(self, rate: float, duration: float, processes: int = 1) -> Step:
        chunks = [self.pairs[k::processes] for k in range(processes)]
        return run_step(
            rate,
            [self.pid],
            _receiver_process,
            (self.base, [p[1] for p in self.pairs], duration + 5),
            _sender_process,
            [(self.base, chunk, rate * len(chunk) / len(self.pairs), duration) for chunk in chunks],
        )


def _psql(url: str, statement: str) -> None:
    async def run() -> None:
        import asyncpg  # only the PostgreSQL variant needs it

        conn = await asyncpg.connect(url)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _register(http: httpx.AsyncClient, secret: str, user: str) -> tuple[str, str]:
    url = "/_synapse/admin/v1/register"
    nonce = (await http.get(url)).raise_for_status().json()["nonce"]
    password = secrets.token_hex(8)
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    mac.update(f"{nonce}\0{user}\0{password}\0notadmin".encode())
    body = {
        "nonce": nonce,
        "username": user,
        "password": password,
        "admin": False,
        "mac": mac.hexdigest(),
    }
    reply = (await http.post(url, json=body)).raise_for_status().json()
    return reply["user_id"], reply["access_token"]


async def _setup(base: str, secret: str, lanes: int) -> list[tuple[str, str, str]]:
    tag = secrets.token_hex(3)
    pairs = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        for i in range(lanes):
            _, sender = await _register(http, secret, f"s{tag}_{i}")
            receiver_id, receiver = await _register(http, secret, f"r{tag}_{i}")
            room = (
                (
                    await http.post(
                        "/_matrix/client/v3/createRoom",
                        headers=_auth(sender),
                        json={
                            "preset": "trusted_private_chat",
                            "is_direct": True,
                            "invite": [receiver_id],
                        },
                    )
                )
                .raise_for_status()
                .json()["room_id"]
            )
            joined = await http.post(
                f"/_matrix/client/v3/join/{urllib.parse.quote(room)}",
                headers=_auth(receiver),
                json={},
            )
            joined.raise_for_status()
            pairs.append((sender, receiver, room))
    return pairs


async def _sender(
    base: str, pairs: list[tuple[str, str, str]], rate: float, duration: float
) -> tuple[int, float]:
    limits = httpx.Limits(max_connections=len(pairs) + 2, max_keepalive_connections=len(pairs))
    filler = "x" * (BODY_SIZE - 20)
    run = secrets.token_hex(4)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:

        async def send(slot: int, n: int, scheduled: int) -> None:
            token, _, room = pairs[slot]
            url = (
                f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/send/m.room.message/"
                f"{run}-{slot}-{n}"
            )
            reply = await http.put(
                url,
                headers=_auth(token),
                json={"msgtype": "m.text", "body": f"{scheduled} {filler}"},
            )
            reply.raise_for_status()  # 200 once the event is persisted

        return await open_loop(len(pairs), rate, duration, send)


def _sender_process(
    base: str, pairs: list[tuple[str, str, str]], rate: float, duration: float, out: Any
) -> None:
    out.put(asyncio.run(_sender(base, pairs, rate, duration)))


async def _receiver(base: str, tokens: list[str], expect_seconds: float, ready: Any) -> list[int]:
    limits = httpx.Limits(max_connections=len(tokens) + 2, max_keepalive_connections=len(tokens))
    latencies: list[int] = []
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:

        async def sync(token: str, since: str | None, timeout_ms: int) -> dict[str, Any]:
            params = {"filter": SYNC_FILTER, "timeout": str(timeout_ms)}
            if since:
                params["since"] = since
            reply = await http.get("/_matrix/client/v3/sync", params=params, headers=_auth(token))
            result: dict[str, Any] = reply.raise_for_status().json()
            return result

        # Catch up first: what earlier steps left is not measured.
        positions = [(await sync(t, None, 0))["next_batch"] for t in tokens]
        phase_start = time.time_ns()
        ready.set()
        deadline = Deadline(expect_seconds)

        async def poll(token: str, since: str) -> None:
            while True:
                remaining = deadline.remaining()
                if remaining <= 0:
                    return
                try:
                    result = await asyncio.wait_for(sync(token, since, 30_000), remaining)
                except TimeoutError:
                    continue
                now = time.time_ns()
                since = result["next_batch"]
                for room in result.get("rooms", {}).get("join", {}).values():
                    for event in room.get("timeline", {}).get("events", []):
                        body = event.get("content", {}).get("body", "")
                        stamp = int(body.split(" ", 1)[0]) if body else 0
                        if stamp >= phase_start:
                            latencies.append(now - stamp)
                            deadline.arrived()

        await asyncio.gather(*(poll(t, p) for t, p in zip(tokens, positions, strict=True)))
    return latencies


def _receiver_process(
    base: str, tokens: list[str], expect_seconds: float, ready: Any, out: Any
) -> None:
    out.put(asyncio.run(_receiver(base, tokens, expect_seconds, ready)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default="sqlite", help="sqlite, or a postgresql:// URL")
    parser.add_argument("--rates", default=DEFAULT_RATES, help="offered messages/s, ascending")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per step")
    parser.add_argument("--lanes", type=int, default=20, help="sender→receiver pairs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="samizdat-peer-") as tmp:
        server = Synapse(Path(tmp), args.db)
        server.start()
        try:
            server.setup(args.lanes)
            print(server.describe())
            climb(server.name, parse_rates(args.rates), args.duration, server.measure)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
