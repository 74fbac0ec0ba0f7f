"""Capture samizdat's own TLS ClientHello on loopback and print its JA3 and JA4 fingerprints.

    .venv/bin/python bench/clienthello.py

Censors fingerprint ClientHellos (cipher suites, extensions, curves, their order) to tell
one program from another; docs/censorship.md compares ours with Chromium's. The context is
the one the client really uses (transport/tls.py), captured before any server answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import ssl
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samizdat.protocol.descriptor import Descriptor, Endpoint  # noqa: E402
from samizdat.server.identity import load_or_create_identity  # noqa: E402
from samizdat.transport.tls import server_context  # noqa: E402

GREASE = {0x0A0A + 0x1010 * i for i in range(16)}


def _u16s(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def parse(hello: bytes) -> dict[str, object]:
    """The fields JA3/JA4 read from one ClientHello record."""
    i = 9
    version = int.from_bytes(hello[i : i + 2], "big")
    i += 2 + 32
    i += 1 + hello[i]
    n = int.from_bytes(hello[i : i + 2], "big")
    ciphers = _u16s(hello[i + 2 : i + 2 + n])
    i += 2 + n
    i += 1 + hello[i]
    end = i + 2 + int.from_bytes(hello[i : i + 2], "big")
    i += 2
    extensions: list[int] = []
    curves: list[int] = []
    points: list[int] = []
    sigalgs: list[int] = []
    alpn: list[str] = []
    versions: list[int] = []
    sni = False
    while i + 4 <= end:
        kind = int.from_bytes(hello[i : i + 2], "big")
        length = int.from_bytes(hello[i + 2 : i + 4], "big")
        body = hello[i + 4 : i + 4 + length]
        extensions.append(kind)
        if kind == 0:
            sni = True
        elif kind == 10:
            curves = _u16s(body[2:])
        elif kind == 11:
            points = list(body[1:])
        elif kind == 13:
            sigalgs = _u16s(body[2:])
        elif kind == 16:
            j = 2
            while j < len(body):
                alpn.append(body[j + 1 : j + 1 + body[j]].decode())
                j += 1 + body[j]
        elif kind == 43:
            versions = list(_u16s(body[1:]))
        i += 4 + length
    return {
        "version": version,
        "ciphers": [c for c in ciphers if c not in GREASE],
        "extensions": [e for e in extensions if e not in GREASE],
        "curves": [c for c in curves if c not in GREASE],
        "points": points,
        "sigalgs": sigalgs,
        "alpn": alpn,
        "versions": [v for v in versions if v not in GREASE],
        "sni": sni,
    }


def ja3(f: dict[str, object]) -> tuple[str, str]:
    def join(key: str) -> str:
        return "-".join(str(x) for x in f[key])  # type: ignore[attr-defined]

    text = ",".join(
        [str(f["version"]), join("ciphers"), join("extensions"), join("curves"), join("points")]
    )
    return text, hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - JA3 is MD5


def ja4(f: dict[str, object]) -> str:
    ciphers: list[int] = f["ciphers"]  # type: ignore[assignment]
    extensions: list[int] = f["extensions"]  # type: ignore[assignment]
    versions: list[int] = f["versions"]  # type: ignore[assignment]
    alpn: list[str] = f["alpn"]  # type: ignore[assignment]
    sigalgs: list[int] = f["sigalgs"]  # type: ignore[assignment]
    top = max(versions) if versions else int(str(f["version"]))
    tls = {0x0304: "13", 0x0303: "12"}.get(top, "00")
    first = alpn[0] if alpn else ""
    a = (
        f"t{tls}{'d' if f['sni'] else 'i'}{min(len(ciphers), 99):02d}"
        f"{min(len(extensions), 99):02d}{(first[0] + first[-1]) if first else '00'}"
    )
    b = hashlib.sha256(",".join(f"{c:04x}" for c in sorted(ciphers)).encode()).hexdigest()[:12]
    ext = ",".join(f"{e:04x}" for e in sorted(extensions) if e not in (0, 16))
    sig = ",".join(f"{s:04x}" for s in sigalgs)
    c = hashlib.sha256(f"{ext}_{sig}".encode()).hexdigest()[:12]
    return f"{a}_{b}_{c}"


async def capture(context: ssl.SSLContext, sni: str | None) -> bytes:
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def grab(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readexactly(5)
        got.set_result(head + await reader.readexactly(int.from_bytes(head[3:5], "big")))
        writer.transport.abort()

    server = await asyncio.start_server(grab, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=sni or "")
    except (ssl.SSLError, OSError):
        pass
    hello = await got
    server.close()
    await server.wait_closed()
    return hello


async def capture_chromium(chromium: str, sni: str | None) -> bytes:
    """Chromium's own ClientHello to a loopback listener (headless, no network)."""
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def grab(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readexactly(5)
        body = await reader.readexactly(int.from_bytes(head[3:5], "big"))
        if not got.done():
            got.set_result(head + body)
        writer.transport.abort()

    server = await asyncio.start_server(grab, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    host = sni or "127.0.0.1"
    with tempfile.TemporaryDirectory() as profile:
        browser = await asyncio.create_subprocess_exec(
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            # The name resolves to loopback inside the browser only: nothing leaves the host.
            f"--host-resolver-rules=MAP {host} 127.0.0.1",
            f"https://{host}:{port}/",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            hello = await asyncio.wait_for(got, 30)
        finally:
            browser.kill()
            await browser.wait()
    server.close()
    await server.wait_closed()
    return hello


def _report(label: str, fields: dict[str, object]) -> None:
    text, digest = ja3(fields)
    print(f"\n{label}:")
    print(f"  ciphers ({len(fields['ciphers'])}): {fields['ciphers']}")  # type: ignore[arg-type]
    print(f"  extensions: {fields['extensions']}")
    print(f"  curves: {fields['curves']}  alpn: {fields['alpn']}")
    print(f"  JA3 string: {text}")
    print(f"  JA3: {digest}")
    print(f"  JA4: {ja4(fields)}")


async def main() -> None:

    with tempfile.TemporaryDirectory() as folder:
        identity = load_or_create_identity(Path(folder), ["127.0.0.1"])
        descriptor = Descriptor(
            server_key=identity.server_key,
            seq=1,
            endpoints=[Endpoint(url="wss://127.0.0.1:1/v1/ws")],
            tls_ca=identity.ca_der,
            tls_pin=identity.tls_pin,
            issued_at=0,
            expires_at=1,
        )
        context = server_context(descriptor)
    print(f"OpenSSL: {ssl.OPENSSL_VERSION}")
    for label, sni in (("host name endpoint", "chat.example.org"), ("IP literal", None)):
        _report(f"samizdat, {label}", parse(await capture(context, sni)))
    chromium = shutil.which("chromium")
    if chromium is None:
        print("\nChromium: not installed (apt-get install chromium) - not compared")
        return
    probe = await asyncio.create_subprocess_exec(
        chromium, "--version", stdout=asyncio.subprocess.PIPE
    )
    version = (await probe.communicate())[0].decode()
    for label, sni in (("host name", "chat.example.org"), ("IP literal", None)):
        _report(f"{version.strip()}, {label}", parse(await capture_chromium(chromium, sni)))


if __name__ == "__main__":
    asyncio.run(main())
