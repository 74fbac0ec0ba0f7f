"""Real server processes and CLI runs for end-to-end tests (loopback only)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ServerProcess", "free_port", "run_cli", "scan_for"]

PASSPHRASE = "correct horse battery staple"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    """`samizdat server` in its own process, restartable on the same port and data folder."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    extra_args: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = None
    link: str = ""

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def start(self, timeout: float = 20.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        link_file = self.data_dir / "server-link"
        link_file.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "samizdat",
                "server",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                f"127.0.0.1:{self.port}",
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            if link_file.exists() and link_file.read_text().strip():
                self.link = link_file.read_text().strip()
                self._wait_listening(deadline)
                return self.link
            time.sleep(0.05)
        raise RuntimeError("server did not start in time")

    def _wait_listening(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server is not listening")

    def kill(self) -> None:
        """SIGKILL: no chance to flush or close anything."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def run_cli(
    home: Path, *args: str, timeout: float = 60.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SAMIZDAT_HOME=str(home), SAMIZDAT_PASSPHRASE=PASSPHRASE)
    result = subprocess.run(
        [sys.executable, "-m", "samizdat", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"samizdat {args[0]} exited {result.returncode}: {result.stderr[-2000:]}"
        )
    return result


def scan_for(root: Path, needles: Sequence[bytes]) -> list[tuple[Path, bytes]]:
    """Every (file, needle) where a needle occurs in a file under root (or root itself)."""
    hits: list[tuple[Path, bytes]] = []
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            if needle in data:
                hits.append((path, needle))
    return hits


async def terminate(proc: asyncio.subprocess.Process | None, grace: float = 10) -> None:
    """SIGTERM a child process started with asyncio, then SIGKILL it after ``grace`` seconds."""
    if proc is None or proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        proc.kill()
        await proc.wait()
