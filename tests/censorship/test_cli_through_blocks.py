"""The command line uses the same failover from the first second: ``init``, ``invite``,
``add``, ``send``, ``listen`` and ``status`` as real processes, with the global flags, while
the server's name is deleted from DNS and only DoH knows it."""

from __future__ import annotations

import json

from tests.censorship.conftest import NAME, PASSPHRASE, World, flags
from tests.censorship.net import DohServer, free_port, run_cli


async def test_every_command_through_doh(world: World) -> None:
    port = free_port("127.0.0.2")
    server = await world.server("127.0.0.2", "--public-host", NAME, port=port)
    dns = await world.dns({NAME: None})
    doh = world.add(await DohServer(world.tmp / "doh", {NAME: "127.0.0.2"}).start())
    net = flags(dns, doh.url, doh.ca_file)
    alice, bob = world.tmp / "alice", world.tmp / "bob"

    async def cli(home: object, *args: str) -> str:
        code, out, err = await run_cli(home, *net, *args, passphrase=PASSPHRASE)  # type: ignore[arg-type]
        assert code == 0, err[-2000:]
        return out

    await cli(alice, "init", "--server", server.link, "--name", "alice")
    await cli(bob, "init", "--server", server.link, "--name", "bob")
    invite = json.loads(await cli(alice, "invite", "--json"))["link"]
    await cli(bob, "add", invite, "--name", "alice")
    await cli(bob, "send", "alice", "over DoH")
    line = json.loads(await cli(alice, "listen", "--json", "--count", "1", "--timeout", "10"))
    assert (line["from"], line["text"]) == ("bob", "over DoH")
    status = json.loads(await cli(alice, "status", "--json"))
    assert (status["resolver"], status["transport"]) == ("doh", "wss")
    assert status["address"] == "127.0.0.2"
    assert doh.queries.count(NAME) >= 5  # every process had to ask DoH
