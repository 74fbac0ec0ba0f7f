"""Run ``samizdat ui``: one process holding the Client, serving the page on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import socket
import webbrowser
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Final

import uvicorn

from samizdat.client.connectivity import TransportOptions
from samizdat.errors import LocalError
from samizdat.web.app import build_app
from samizdat.web.service import UiService

__all__ = ["serve", "HOST"]

#: Never another interface: the page holds decrypted messages (docs/security.md).
HOST = "127.0.0.1"


class _Server(uvicorn.Server):
    """Signals are ours (:func:`serve`): uvicorn re-raises SIGTERM once it has stopped
    serving, which killed the process before it closed the client and removed the private
    file folder, and it listens only once serving, after the address is announced."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


#: Stop serving, then close (a second one forces it, as in uvicorn).
_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


async def serve(
    home: Path,
    passphrase: str | None,
    transport: TransportOptions,
    port: int,
    open_browser: bool,
    announce: Callable[[str], None],
) -> None:
    """Serve until interrupted (SIGINT/SIGTERM), then close the client.

    ``announce`` gets the one address with the access token in it. ``passphrase`` None:
    the page asks for it (docs/security.md, "The local UI").
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        raise LocalError(f"cannot listen on {HOST}:{port}: {exc.strerror}") from exc
    service = UiService(home, passphrase, transport)
    try:
        await service.start()
    except BaseException:
        sock.close()
        raise
    bound: int = sock.getsockname()[1]
    token = secrets.token_urlsafe(32)
    app = build_app(service, token, bound)
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,  # the first request carries the token in its URL
        lifespan="off",
        timeout_graceful_shutdown=1,
        ws="none",
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, server.handle_exit, sig, None)
    url = f"http://{HOST}:{bound}/?token={token}"
    try:
        announce(url)
        if open_browser:
            # In a thread: some browsers' launchers block until they exit.
            loop.run_in_executor(None, _open, url)
        await server.serve(sockets=[sock])
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        await service.close()
        sock.close()


def _open(url: str) -> None:
    with contextlib.suppress(Exception):
        webbrowser.open(url)
