"""A relay's data directory: master key, TLS certificate, issued links, upstreams.

* ``relay.key`` — 32 random bytes; every link's secret is derived from it (mode 0600);
* ``links.json`` — the link ids issued, and which are revoked (revoking one is removing
  its id: a proof for it is then served the decoy site like any stranger);
* ``tls.pem`` / ``tls.key`` — a self-signed certificate, made on first start, used
  unless the operator gives ``--cert``/``--key`` (a real certificate for a real name).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from samizdat.errors import LocalError, ProtocolError
from samizdat.protocol.descriptor import open_descriptor
from samizdat.protocol.links import decode_server_link, encode_relay_link
from samizdat.protocol.relay import RelayLink, link_secret

__all__ = ["Upstream", "RelayIdentity", "load_identity", "parse_upstream", "server_context_for"]


@dataclass(frozen=True)
class Upstream:
    """One server this relay forwards to, and the addresses it dials for it."""

    server_key: bytes
    addresses: tuple[tuple[str, int], ...]


@dataclass
class RelayIdentity:
    folder: Path
    master_key: bytes = field(repr=False)
    cert_path: Path
    key_path: Path
    #: DER of the certificate clients anchor on (self-signed mode), else empty.
    cert_der: bytes = field(repr=False)
    links: dict[str, bool] = field(default_factory=dict, repr=False)
    _mtime: int = field(default=-1, repr=False)

    @property
    def pin(self) -> bytes:
        if not self.cert_der:
            return b""
        cert = x509.load_der_x509_certificate(self.cert_der)
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(spki).digest()

    def active(self, link_id: bytes) -> bool:
        """Whether ``link_id`` was issued and not revoked (re-read when links.json changes,
        so ``--revoke`` and ``--new-link`` take effect on a running relay)."""
        path = self.folder / "links.json"
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            mtime = 0
        if mtime != self._mtime:
            self._mtime = mtime
            self.links = _read_links(path)
        return self.links.get(link_id.hex(), False)

    def secret(self, link_id: bytes) -> bytes:
        return link_secret(self.master_key, link_id)

    def new_link_id(self) -> bytes:
        link_id = os.urandom(8)
        self.links[link_id.hex()] = True
        self._save()
        return link_id

    def revoke(self, link_id_hex: str) -> bool:
        if link_id_hex not in self.links:
            return False
        self.links[link_id_hex] = False
        self._save()
        return True

    def link(
        self,
        link_id: bytes,
        addresses: list[str],
        sni: str = "",
        servers: list[bytes] | None = None,
        path: str = "/",
    ) -> str:
        """The ``samizdat:relay/...`` text for one link id."""
        relay = RelayLink(
            version=1,
            addresses=addresses,
            tls_ca=self.cert_der,
            tls_pin=self.pin,
            sni=sni,
            link_id=link_id,
            secret=self.secret(link_id),
            servers=list(servers or []),
            path=path,
        )
        return encode_relay_link(relay)

    def _save(self) -> None:
        tmp = self.folder / "links.json.tmp"
        tmp.write_text(json.dumps({"links": self.links}, indent=1))
        os.replace(tmp, self.folder / "links.json")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _self_signed(folder: Path, names: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    # A plain-looking web server certificate: the first name as CN, all as SANs.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    sans: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_private(
        folder / "tls.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    (folder / "tls.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def load_identity(
    folder: Path, names: list[str], cert: Path | None = None, key: Path | None = None
) -> RelayIdentity:
    """Load or create the relay's files in ``folder``.

    Raises:
        LocalError: unreadable files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    master_path = folder / "relay.key"
    if not master_path.exists():
        _write_private(master_path, os.urandom(32))
    master = master_path.read_bytes()
    if len(master) != 32:
        raise LocalError("relay.key is damaged")
    if cert is None or key is None:
        if not (folder / "tls.pem").exists():
            _self_signed(folder, names)
        cert, key = folder / "tls.pem", folder / "tls.key"
        der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
    else:
        der = b""  # a real certificate: clients use the system's CAs and the name
    return RelayIdentity(folder, master, cert, key, der, _read_links(folder / "links.json"))


def _read_links(path: Path) -> dict[str, bool]:
    try:
        raw = json.loads(path.read_text())["links"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {str(k): bool(v) for k, v in raw.items()}


def server_context_for(identity: RelayIdentity) -> ssl.SSLContext:
    """The relay's TLS server context: a web server's, offering HTTP/1.1."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(identity.cert_path, identity.key_path)
    context.set_alpn_protocols(["http/1.1"])
    return context


def parse_upstream(text: str, now_ms: int) -> Upstream:
    """``LINK`` or ``LINK=HOST:PORT``: a server link, optionally with the address this
    relay reaches it at (a private network, the same machine) instead of its endpoints.

    Raises:
        LocalError: not a valid server link.
    """
    link, sep, override = text.strip().partition("=")
    try:
        descriptor = open_descriptor(decode_server_link(link).descriptor, now_ms)
    except ProtocolError as exc:
        raise LocalError(f"--upstream is not a valid server link: {exc.message}") from exc
    addresses: list[tuple[str, int]] = []
    if sep:
        host, _, port = override.rpartition(":")
        if not port.isdigit():
            raise LocalError("--upstream LINK=HOST:PORT needs a port")
        addresses.append((host.strip("[]"), int(port)))
    else:
        from urllib.parse import urlsplit

        for endpoint in descriptor.endpoints:
            parts = urlsplit(endpoint.url)
            if parts.hostname:
                addresses.append((parts.hostname, parts.port or 443))
    return Upstream(descriptor.server_key, tuple(addresses))
