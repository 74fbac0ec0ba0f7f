from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given
from hypothesis import strategies as st

from samizdat.errors import LocalError
from samizdat.protocol.descriptor import open_descriptor
from samizdat.protocol.links import decode_server_link
from samizdat.server.app import parse_listen
from samizdat.server.identity import endpoint_url, load_or_create_identity, spki_pin


def test_identity_is_created_private_and_reused(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path / "d", ["127.0.0.1"])
    for name in ("server.key", "tls.key", "tls-ca.key"):
        assert stat.S_IMODE((tmp_path / "d" / name).stat().st_mode) == 0o600
    second = load_or_create_identity(tmp_path / "d", ["127.0.0.1"])
    assert second.server_key == first.server_key
    assert (second.tls_pin, second.ca_der) == (first.tls_pin, first.ca_der)
    assert "secret" not in repr(first) and first.tls_pin.hex() not in repr(first)


def test_descriptor_and_certificates(tmp_path: Path) -> None:
    identity = load_or_create_identity(tmp_path, ["127.0.0.1", "example.test"])
    now = int(time.time() * 1000)
    signed = identity.descriptor([endpoint_url("127.0.0.1", 4433)], now)
    descriptor = open_descriptor(signed, now, expected_key=identity.server_key)
    assert descriptor.endpoints[0].url == "wss://127.0.0.1:4433/v1/ws"
    assert descriptor.expires_at - now == 30 * 24 * 3600 * 1000
    # The leaf alone: clients anchor on the descriptor's CA, so it is not sent.
    (leaf,) = x509.load_pem_x509_certificates(identity.cert_path.read_bytes())
    ca = x509.load_der_x509_certificate(identity.ca_der)
    assert ca.public_bytes(Encoding.PEM) == (tmp_path / "tls-ca.pem").read_bytes()
    assert spki_pin(leaf) == descriptor.tls_pin
    leaf.verify_directly_issued_by(ca)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "example.test" in sans.get_values_for_type(x509.DNSName)
    link = decode_server_link(identity.link(signed))
    assert link.descriptor == signed


def test_endpoint_url_brackets_ipv6() -> None:
    assert endpoint_url("::1", 1) == "wss://[::1]:1/v1/ws"
    assert endpoint_url("host.example", 2) == "wss://host.example:2/v1/ws"


@given(port=st.integers(0, 65535), host=st.sampled_from(["127.0.0.1", "localhost", "::1"]))
def test_parse_listen_round_trip(port: int, host: str) -> None:
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    assert parse_listen(text) == (host, port)


@pytest.mark.parametrize("text", ["", "8443", "host:", ":80", "h:99999", "h:-1", "h:x"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(LocalError):
        parse_listen(text)


def test_a_chain_from_an_earlier_release_is_cut_to_the_leaf(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path, ["127.0.0.1"])
    leaf_pem = first.cert_path.read_bytes()
    first.cert_path.write_bytes(leaf_pem + (tmp_path / "tls-ca.pem").read_bytes())
    second = load_or_create_identity(tmp_path, ["127.0.0.1"])
    assert second.cert_path.read_bytes() == leaf_pem
    assert second.tls_pin == first.tls_pin


def test_a_renewed_leaf_certificate_keeps_its_key_and_pin(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path, ["127.0.0.1"])
    (tmp_path / "tls.pem").unlink()  # as when the certificate is due for renewal
    second = load_or_create_identity(tmp_path, ["127.0.0.1"])
    assert second.tls_pin == first.tls_pin
