"""The server's long-term key, its TLS certificates and its signed descriptor (DESIGN §4).

On first start in a data directory this creates:

* ``server.key`` — the Ed25519 seed that signs descriptors (mode 0600);
* ``tls-ca.pem`` / ``tls-ca.key`` — a self-signed CA; its DER goes into the descriptor
  and is the only anchor a client trusts;
* ``tls.pem`` / ``tls.key`` — the TLS leaf signed by that CA, presented by the server
  alone (every client has the CA from the descriptor: sending it too cost each client a
  certificate decode and the CA's ~400 bytes per handshake);
  clients also pin the SHA-256 of its SubjectPublicKeyInfo.

Later starts reuse them. The leaf is re-issued (and the pin changes) only when it is
close to expiry; the descriptor is re-signed on every start, with a higher ``seq``.

``rotate_server_key`` replaces ``server.key`` with a new key, keeping the old one as
``server.key.old-<ms>`` and appending the handover, signed by both keys, to
``server.rotations``; descriptors carry the last few hops (protocol §4).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from samizdat.crypto.signing import SigningKey
from samizdat.protocol.descriptor import (
    MAX_ROTATIONS,
    Descriptor,
    Endpoint,
    SignedDescriptor,
    SignedRotation,
    open_rotation,
    sign_descriptor,
    sign_rotation,
)
from samizdat.protocol.links import ServerLink, encode_server_link
from samizdat.protocol.relay import RelayLink

__all__ = [
    "DESCRIPTOR_LIFETIME_MS",
    "ServerIdentity",
    "load_or_create_identity",
    "rotate_server_key",
    "reload_server_key",
    "endpoint_url",
    "spki_pin",
    "write_private",
]

DESCRIPTOR_LIFETIME_MS: Final = 30 * 24 * 3600 * 1000
_CA_LIFETIME = datetime.timedelta(days=3650)
_LEAF_LIFETIME = datetime.timedelta(days=365)
_LEAF_RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class ServerIdentity:
    """Paths and public parts of the server's keys. Never shows a secret."""

    signing_key: SigningKey = field(repr=False)
    ca_der: bytes = field(repr=False)
    cert_path: Path
    key_path: Path
    tls_pin: bytes = field(repr=False)
    #: The last key rotations, oldest first, ending at this key (``server.rotations``).
    rotations: tuple[SignedRotation, ...] = ()

    @property
    def server_key(self) -> bytes:
        return self.signing_key.public_bytes

    def descriptor(
        self,
        endpoints: list[str],
        now_ms: int,
        seq: int | None = None,
        relays: list[RelayLink] | None = None,
    ) -> SignedDescriptor:
        """A freshly signed descriptor for ``endpoints`` (URLs); ``seq`` defaults to now.
        ``relays``: relays the operator lists for every client (protocol §11.4)."""
        descriptor = Descriptor(
            server_key=self.server_key,
            # Time as seq: increases across restarts without keeping a counter.
            seq=now_ms if seq is None else seq,
            endpoints=[Endpoint(url=url) for url in endpoints],
            tls_ca=self.ca_der,
            tls_pin=self.tls_pin,
            issued_at=now_ms,
            expires_at=now_ms + DESCRIPTOR_LIFETIME_MS,
            relays=list(relays or []),
            rotations=list(self.rotations),
        )
        return sign_descriptor(descriptor, self.signing_key)

    def link(self, descriptor: SignedDescriptor) -> str:
        return encode_server_link(ServerLink(version=1, descriptor=descriptor))


def endpoint_url(host: str, port: int) -> str:
    """``wss://host:port/v1/ws``, with IPv6 literals in brackets."""
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"wss://{host}:{port}/v1/ws"


def spki_pin(cert: x509.Certificate) -> bytes:
    """SHA-256 of the certificate's SubjectPublicKeyInfo (DER), as descriptors carry it."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically, readable by the owner only (0600 from creation on)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(["127.0.0.1", "localhost", *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _make_ca(now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "samizdat server CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: list[str],
    now: datetime.datetime,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "samizdat server")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _LEAF_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_sans(hosts)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


_rotations_decoder = msgspec.msgpack.Decoder(list[SignedRotation])


def _load_rotations(data_dir: Path, current: bytes) -> list[SignedRotation]:
    path = data_dir / "server.rotations"
    if not path.exists():
        return []
    chain = _rotations_decoder.decode(path.read_bytes())
    # A hop to a key that never got saved (a crash mid-rotation) would break the chain.
    while chain and open_rotation(chain[-1]).new_key != current:
        chain.pop()
    return chain[-MAX_ROTATIONS:]


def rotate_server_key(identity: ServerIdentity, data_dir: Path, now_ms: int) -> ServerIdentity:
    """Replace ``server.key`` in ``data_dir`` with a new key handed over by the current one.

    Returns the identity with the new key and the rotation chain ending at it. The old
    seed stays in ``server.key.old-<now_ms>`` (mode 0600). The rotations file is written
    before the key: after a crash in between, the old key is still in place and loading
    drops the hop to the lost key.
    """
    old, new = identity.signing_key, SigningKey.generate()
    chain = [*_load_rotations(data_dir, old.public_bytes), sign_rotation(old, new, now_ms)]
    chain = chain[-MAX_ROTATIONS:]
    write_private(data_dir / f"server.key.old-{now_ms}", old.secret_bytes())
    _write_public(data_dir / "server.rotations", msgspec.msgpack.encode(chain))
    write_private(data_dir / "server.key", new.secret_bytes())
    return dataclasses.replace(identity, signing_key=new, rotations=tuple(chain))


def reload_server_key(identity: ServerIdentity, data_dir: Path) -> ServerIdentity:
    """``identity`` with the key now in ``data_dir/server.key`` and its rotations: how the
    other nodes sharing an identity directory follow a rotation made by one of them."""
    key = SigningKey.from_secret_bytes((data_dir / "server.key").read_bytes())
    if key.public_bytes == identity.server_key:
        return identity
    chain = tuple(_load_rotations(data_dir, key.public_bytes))
    return dataclasses.replace(identity, signing_key=key, rotations=chain)


def load_or_create_identity(data_dir: Path, hosts: list[str]) -> ServerIdentity:
    """Load the server's keys from ``data_dir``, creating whatever is missing.

    Args:
        data_dir: the server's data directory (created with mode 0700 if missing).
        hosts: names and addresses to put in a new leaf certificate's SAN (clients do
            not check them, but ordinary TLS tools like to see them).
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    key_file = data_dir / "server.key"
    if key_file.exists():
        signing_key = SigningKey.from_secret_bytes(key_file.read_bytes())
    else:
        signing_key = SigningKey.generate()
        write_private(key_file, signing_key.secret_bytes())

    ca_cert_file, ca_key_file = data_dir / "tls-ca.pem", data_dir / "tls-ca.key"
    if ca_cert_file.exists() and ca_key_file.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_cert_file.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError("tls-ca.key is not an EC key")
        ca_key = loaded
        new_ca = False
    else:
        ca_key, ca_cert = _make_ca(now)
        write_private(ca_key_file, _pem_key(ca_key))
        _write_public(ca_cert_file, ca_cert.public_bytes(serialization.Encoding.PEM))
        new_ca = True

    cert_file, leaf_key_file = data_dir / "tls.pem", data_dir / "tls.key"
    leaf: x509.Certificate | None = None
    if not new_ca and cert_file.exists() and leaf_key_file.exists():
        presented = x509.load_pem_x509_certificates(cert_file.read_bytes())
        leaf = presented[0]
        if leaf.not_valid_after_utc - now < _LEAF_RENEW_BEFORE:
            leaf = None
        elif len(presented) > 1:  # written by an earlier release with the CA after it
            _write_public(cert_file, leaf.public_bytes(serialization.Encoding.PEM))
    if leaf is None:
        # A renewed certificate keeps the leaf key: the pin is over the key, so clients
        # holding the current descriptor keep connecting across the renewal.
        old_key: ec.EllipticCurvePrivateKey | None = None
        if not new_ca and leaf_key_file.exists():
            loaded_leaf = serialization.load_pem_private_key(
                leaf_key_file.read_bytes(), password=None
            )
            if isinstance(loaded_leaf, ec.EllipticCurvePrivateKey):
                old_key = loaded_leaf
        leaf_key, leaf = _make_leaf(ca_key, ca_cert, hosts, now, old_key)
        write_private(leaf_key_file, _pem_key(leaf_key))
        _write_public(cert_file, leaf.public_bytes(serialization.Encoding.PEM))

    return ServerIdentity(
        signing_key=signing_key,
        ca_der=ca_cert.public_bytes(serialization.Encoding.DER),
        cert_path=cert_file,
        key_path=leaf_key_file,
        tls_pin=spki_pin(leaf),
        rotations=tuple(_load_rotations(data_dir, signing_key.public_bytes)),
    )
