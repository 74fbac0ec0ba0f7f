"""A trivial server that speaks the samizdat protocol and stores nothing: the yardstick for
the load generator's own ceiling (NOT the real server; bench/README.md).

Real TLS (a samizdat server identity: CA, pinned leaf, signed descriptor, server link in
``DATA_DIR/server-link``) and a real WebSocket (picows on uvloop), frames decoded and encoded
with samizdat.protocol.frames. Hello → Welcome; Register/Auth → AuthOk; AddToken, Subscribe,
Ack → Ok; every Deposit → DepositOk, and each of its envelopes is pushed at once as a Deliver
to the subscribed connection of its device (kept in memory until the device subscribes, so
the backlog and reconnect-storm benches run against it too). No storage, no tokens checked.

    python bench/null_server.py DATA_DIR [--port 0]
"""

from __future__ import annotations

import argparse
import os
import ssl
import time
from collections import defaultdict
from pathlib import Path

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

from rawclient import raise_nofile
from samizdat.protocol import frames as f
from samizdat.protocol.descriptor import SignedDescriptor
from samizdat.protocol.limits import MAX_ENTRIES_PER_DELIVER
from samizdat.protocol.links import ServerLink, encode_server_link
from samizdat.server.identity import endpoint_url, load_or_create_identity


class State:
    def __init__(self, descriptor: SignedDescriptor) -> None:
        self.descriptor = descriptor
        self.subscribers: dict[bytes, Conn] = {}
        self.queued: defaultdict[bytes, list[f.Entry]] = defaultdict(list)
        self.seq = 0


class Conn(WSListener):
    def __init__(self, state: State) -> None:
        super().__init__()
        self.state = state
        self.transport: WSTransport | None = None
        self.device_id = b""

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.state.subscribers.get(self.device_id) is self:
            del self.state.subscribers[self.device_id]

    def send(self, frame: f.ServerFrame) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.BINARY, f.encode(frame))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type is not WSMsgType.BINARY:
            return
        req = f.decode_client_frame(frame.get_payload_as_bytes())
        state = self.state
        now = int(time.time() * 1000)
        match req:
            case f.Deposit():
                self.send(f.DepositOk(rid=req.rid, stored=len(req.envelopes), duplicates=0))
                for env in req.envelopes:
                    state.seq += 1
                    entry = f.Entry(
                        seq=state.seq, msg_id=env.msg_id, body=env.body, received_at=now
                    )
                    target = state.subscribers.get(env.device_id)
                    if target is None:
                        state.queued[env.device_id].append(entry)
                    else:
                        target.send(f.Deliver(entries=[entry]))
            case f.Ack() | f.AddToken():
                self.send(f.Ok(rid=req.rid))
            case f.Hello():
                self.send(
                    f.Welcome(
                        version=1,
                        nonce=os.urandom(32),
                        descriptor=state.descriptor,
                        server_time=now,
                        limits=f.Limits(),
                    )
                )
            case f.Register() | f.Auth():
                self.device_id = (
                    req.device.device_id if isinstance(req, f.Register) else req.device_id
                )
                self.send(
                    f.AuthOk(
                        rid=req.rid,
                        device_id=self.device_id,
                        one_time_keys=0,
                        has_fallback_key=False,
                    )
                )
            case f.Subscribe():
                self.send(f.Ok(rid=req.rid))
                state.subscribers[self.device_id] = self
                backlog = state.queued.pop(self.device_id, [])
                for start in range(0, len(backlog), MAX_ENTRIES_PER_DELIVER):
                    self.send(f.Deliver(entries=backlog[start : start + MAX_ENTRIES_PER_DELIVER]))
            case _:
                self.send(f.Error(rid=f.request_id(req), code="bad_frame", message="null server"))


async def serve(data_dir: Path, port: int) -> None:
    raise_nofile(30000)
    identity = load_or_create_identity(data_dir, ["127.0.0.1"])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(identity.cert_path), str(identity.key_path))
    holder: list[State] = []
    server = await ws_create_server(
        lambda request: Conn(holder[0]),
        "127.0.0.1",
        port,
        ssl=ctx,
        max_frame_size=2**20,
        backlog=4096,
    )
    bound = server.sockets[0].getsockname()[1]
    descriptor = identity.descriptor([endpoint_url("127.0.0.1", bound)], int(time.time() * 1000))
    holder.append(State(descriptor))
    link = encode_server_link(ServerLink(version=1, descriptor=descriptor))
    tmp = data_dir / "server-link.tmp"
    tmp.write_text(link + "\n")
    tmp.rename(data_dir / "server-link")
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    uvloop.run(serve(args.data_dir, args.port))


if __name__ == "__main__":
    main()
