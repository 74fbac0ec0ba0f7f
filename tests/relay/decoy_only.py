"""The relay's web server with no relay behind it: the baseline a probe must not tell apart.

    python -m tests.relay.decoy_only DATA_DIR HOST PORT

``DATA_DIR`` is a copy of a relay's folder (same certificate, same master key). Every
link in it is revoked and no upstream is configured, so no request can ever reach a
server: this process is only the decoy site, on the relay's own code path and limits as
``samizdat relay`` builds them (cli_relay.py), with the probe suite's address rate.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from samizdat.relay import Relay, RelayLimits, load_identity
from samizdat.relay.config import server_context_for
from samizdat.relay.server import small_tls_buffers

#: The probe suite connects often from one address; both sides get the same limits.
PROBE_LIMITS = RelayLimits(address_rate=1000.0, address_burst=4000.0)


async def main(folder: Path, host: str, port: int) -> None:
    identity = load_identity(folder, [host])
    for link_id, active in list(identity.links.items()):
        if active:
            identity.revoke(link_id)
    small_tls_buffers()
    relay = Relay(identity, server_context_for(identity), {}, PROBE_LIMITS)
    await relay.listen(host, port)
    (folder / "decoy-ready").write_text(f"{port}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await relay.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
