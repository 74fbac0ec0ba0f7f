"""Relay links from the command line and from the operator's descriptor."""

from __future__ import annotations

import json

from samizdat.protocol.descriptor import open_descriptor
from samizdat.protocol.links import decode_server_link
from samizdat.transport import TransportOptions
from samizdat.transport.dial import now_ms
from tests.censorship.conftest import PASSPHRASE, World, converse, wait_for
from tests.censorship.net import Middlebox, free_port, run_cli
from tests.relay.conftest import start_relay, upstream


async def test_relays_add_list_remove(world: World) -> None:
    server = await world.server("127.0.0.2", port=free_port("127.0.0.2"))
    relay = await start_relay(world, "127.0.0.9", free_port("127.0.0.9"), "--upstream", server.link)
    home = world.tmp / "carol"

    async def cli(*args: str) -> str:
        code, out, err = await run_cli(home, *args, passphrase=PASSPHRASE)
        assert code == 0, err[-2000:]
        return out

    await cli("init", "--server", server.link, "--name", "carol")
    link_id = relay.link.link_id.hex()
    assert link_id in await cli("relays", "add", relay.link_text)
    listed = json.loads(await cli("relays", "list", "--json"))
    assert listed == [{"id": link_id, "addresses": relay.link.addresses, "sni": ""}]
    assert relay.link.secret.hex() not in json.dumps(listed)
    assert link_id in await cli("relays", "remove", link_id[:6])
    assert json.loads(await cli("relays", "list", "--json")) == []
    code, _, err = await run_cli(
        home, "relays", "add", "samizdat:relay/AAAA", passphrase=PASSPHRASE
    )
    assert code == 1 and "relay link" in err


async def test_descriptor_lists_the_relay(world: World) -> None:
    port = free_port("127.0.0.2")
    box = world.add(await Middlebox("127.0.0.7", port, ("127.0.0.2", port)).start())
    box.block()
    server = await world.server("127.0.0.2", "--public-host", "127.0.0.7", port=port)
    relay = await start_relay(
        world, "127.0.0.9", free_port("127.0.0.9"),
        "--upstream", upstream(server.link, "127.0.0.2", port),
    )  # fmt: skip
    # The operator lists the relay and re-signs the descriptor (SIGHUP).
    old = server.link
    (server.data_dir / "relays").write_text(relay.link_text + "\n")
    server.hup()
    await wait_for(lambda: server.link != old, 10)
    descriptor = open_descriptor(decode_server_link(server.link).descriptor, now_ms())
    assert [r.link_id for r in descriptor.relays] == [relay.link.link_id]

    # Clients that added no relay of their own learn it from the descriptor.
    alice, _ = await converse(world, server.link, TransportOptions(stagger=0.1))
    conn = await alice.route()
    assert conn.candidate is not None and conn.candidate.route.kind == "relay"
    assert (await relay.stats())["upstream_connections"] >= 2
