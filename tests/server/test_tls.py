"""The server's TLS context: what every connection's handshake costs and carries."""

from __future__ import annotations

import asyncio
import socket
import ssl

from samizdat.protocol.descriptor import open_descriptor
from samizdat.server.app import RunningServer

from .helpers import client_ssl_context


def _fetch_session(context: ssl.SSLContext, port: int) -> tuple[ssl.SSLSession | None, str, bytes]:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: samizdat\r\nConnection: close\r\n\r\n")
        reply = b""
        # Reading to the end also reads any NewSessionTicket the server sent.
        while chunk := tls.recv(65536):
            reply += chunk
        return tls.session, tls.version() or "", reply


async def test_the_server_issues_no_session_tickets(server: RunningServer) -> None:
    # No client resumes (docs/performance.md, "Third round: connecting"): tickets would
    # be two encryptions and ~500 bytes per handshake for nothing.
    context = client_ssl_context(open_descriptor(server.descriptor, 0))
    session, version, reply = await asyncio.to_thread(_fetch_session, context, server.port)
    assert version == "TLSv1.3"
    assert reply.startswith(b"HTTP/1.1 ")
    assert session is not None
    assert not session.has_ticket
