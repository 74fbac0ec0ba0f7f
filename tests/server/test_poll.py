"""HTTPS long-polling (protocol §5.5) and descriptor re-issue, against a running server."""

from __future__ import annotations

import httpx
import msgspec

from samizdat.protocol import frames as f
from samizdat.protocol.descriptor import open_descriptor
from samizdat.protocol.links import decode_server_link
from samizdat.server.app import RunningServer
from tests.server.helpers import client_ssl_context

_frames = msgspec.msgpack.Decoder(list[bytes])


def _client(server: RunningServer) -> httpx.AsyncClient:
    descriptor = open_descriptor(decode_server_link(server.link).descriptor, 0)
    return httpx.AsyncClient(
        base_url=f"https://127.0.0.1:{server.port}",
        verify=client_ssl_context(descriptor),
        trust_env=False,
        timeout=30,
    )


async def _recv(http: httpx.AsyncClient, sid: str) -> tuple[list[f.ServerFrame], bool]:
    r = await http.post("/v1/poll/recv", headers={"x-samizdat-session": sid})
    assert r.status_code == 200
    frames = [f.decode_server_frame(b) for b in _frames.decode(r.content)]
    return frames, r.headers.get("x-samizdat-closed") == "1"


async def test_hello_over_long_polling_then_close(server: RunningServer) -> None:
    async with _client(server) as http:
        sid = (await http.post("/v1/poll/open")).text
        assert len(sid) == 64
        hello = f.Hello(versions=list(f.PROTOCOL_VERSIONS), client="test")
        r = await http.post(
            "/v1/poll/send", content=f.encode(hello), headers={"x-samizdat-session": sid}
        )
        assert r.status_code == 204
        frames, closed = await _recv(http, sid)
        assert [type(x) for x in frames] == [f.Welcome] and not closed
        # A request before login is answered in order, like on a WebSocket.
        r = await http.post(
            "/v1/poll/send",
            content=f.encode(f.Ack(rid=7, up_to=1)),
            headers={"x-samizdat-session": sid},
        )
        frames, _ = await _recv(http, sid)
        assert isinstance(frames[0], f.Error) and frames[0].rid == 7
        assert (await http.post("/v1/poll/close", headers={"x-samizdat-session": sid})).is_success
        r = await http.post("/v1/poll/recv", headers={"x-samizdat-session": sid})
        assert r.status_code == 404


async def test_unknown_session_and_frames_before_hello(server: RunningServer) -> None:
    async with _client(server) as http:
        for path in ("/v1/poll/send", "/v1/poll/recv"):
            r = await http.post(path, headers={"x-samizdat-session": "0" * 64})
            assert r.status_code == 404
        sid = (await http.post("/v1/poll/open")).text
        await http.post(
            "/v1/poll/send",
            content=f.encode(f.Ack(rid=1, up_to=1)),
            headers={"x-samizdat-session": sid},
        )
        frames, closed = await _recv(http, sid)
        assert isinstance(frames[0], f.Error) and closed  # hello first, then the session ends


async def test_reissue_pushes_a_newer_descriptor(server: RunningServer) -> None:
    async with _client(server) as http:
        sid = (await http.post("/v1/poll/open")).text
        hello = f.Hello(versions=list(f.PROTOCOL_VERSIONS), client="test")
        await http.post(
            "/v1/poll/send", content=f.encode(hello), headers={"x-samizdat-session": sid}
        )
        (welcome,), _ = await _recv(http, sid)
        assert isinstance(welcome, f.Welcome)
        (server.config.data_dir / "endpoints").write_text("wss://127.0.0.9:1/v1/ws\n# a comment\n")
        server.reissue()
        (update,), _ = await _recv(http, sid)
        assert isinstance(update, f.DescriptorUpdate)
        old = open_descriptor(welcome.descriptor, 0, expected_key=server.identity.server_key)
        new = open_descriptor(update.descriptor, 0, expected_key=server.identity.server_key)
        assert new.seq > old.seq
        assert [e.url for e in new.endpoints][1:] == ["wss://127.0.0.9:1/v1/ws"]
        assert new.endpoints[0] == old.endpoints[0]
        assert decode_server_link(server.link).descriptor == update.descriptor
