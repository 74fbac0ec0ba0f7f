"""The relay handshake and links, in memory (protocol §11): hypothesis round trips, and
parsers that fail only with ProtocolError on anything."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from samizdat.errors import ProtocolError
from samizdat.protocol.descriptor import Descriptor, Endpoint
from samizdat.protocol.links import decode_relay_link, encode_relay_link
from samizdat.protocol.relay import (
    MAX_HEAD,
    WINDOW_MS,
    Proof,
    RelayLink,
    ReplayCache,
    check_proof,
    decode_proof,
    encode_proof,
    find_proof,
    link_secret,
    make_proof,
    parse_request_head,
    proof_request,
)
from samizdat.relay.decoy import decoy_response
from samizdat.transport import TransportOptions, candidates

b8 = st.binary(min_size=8, max_size=8)
b16 = st.binary(min_size=16, max_size=16)
b32 = st.binary(min_size=32, max_size=32)
millis = st.integers(min_value=0, max_value=2**63 - 1)
tokens = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    min_size=1,
    max_size=20,
)
values = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)
targets = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60
)

links = st.builds(
    RelayLink,
    version=st.integers(min_value=1, max_value=3),
    addresses=st.lists(
        st.sampled_from(["127.0.0.9:443", "[::1]:8443", "relay.example:443"]),
        min_size=1,
        max_size=3,
    ),
    tls_ca=st.binary(max_size=64),
    tls_pin=st.sampled_from([b"", b"\x01" * 32]),
    sni=st.sampled_from(["", "relay.example"]),
    link_id=b8,
    secret=b32,
    servers=st.lists(b32, max_size=3),
    path=st.sampled_from(["/", "/static/app.js"]),
)


@given(b8, millis, b16, b32, b32)
def test_proof_round_trip(link_id: bytes, ms: int, nonce: bytes, key: bytes, mac: bytes) -> None:
    proof = Proof(link_id, ms, nonce, key, mac)
    assert decode_proof(encode_proof(proof)) == proof


@given(st.text(max_size=200))
def test_decode_proof_fails_only_with_protocol_error(text: str) -> None:
    try:
        decode_proof(text)
    except ProtocolError:
        pass


@given(links, b32, millis, b16)
def test_proof_checks(link: RelayLink, key: bytes, ms: int, nonce: bytes) -> None:
    proof = make_proof(link, key, ms, nonce)
    assert check_proof(proof, link.secret, ms)
    assert check_proof(proof, link.secret, ms + WINDOW_MS)
    assert not check_proof(proof, link.secret, ms + WINDOW_MS + 1)
    assert not check_proof(proof, bytes(32) if link.secret != bytes(32) else b"\x01" * 32, ms)
    tampered = msgspec.structs.replace(proof, server_key=bytes(b ^ 1 for b in key))
    assert not check_proof(tampered, link.secret, ms)


@given(links, b32, millis, b16)
def test_handshake_request_is_http_and_carries_the_proof(
    link: RelayLink, key: bytes, ms: int, nonce: bytes
) -> None:
    proof = make_proof(link, key, ms, nonce)
    head = parse_request_head(proof_request(link, proof, "relay.example"))
    assert (head.method, head.target, head.version) == ("GET", link.path, "HTTP/1.1")
    assert find_proof(head) == proof


@given(st.binary(max_size=MAX_HEAD + 16))
def test_parse_head_fails_only_with_protocol_error(data: bytes) -> None:
    try:
        parse_request_head(data)
    except ProtocolError:
        pass


@given(tokens, targets, st.lists(st.tuples(tokens, values), max_size=10))
def test_parse_head_round_trip(method: str, target: str, headers: list[tuple[str, str]]) -> None:
    raw = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    head = parse_request_head((raw + "\r\n").encode())
    assert (head.method, head.target) == (method, target)
    assert head.headers == tuple((k.lower(), v) for k, v in headers)


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\n\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/2\r\n\r\n",
        b"GET / HTTP/1.1\r\nfolded: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
        b"GET / HTTP/1.1\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"a: b\r\n" * 65 + b"\r\n",
        b"GET /" + b"a" * MAX_HEAD + b" HTTP/1.1\r\n\r\n",
    ],
)
def test_parse_head_rejects(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_request_head(raw)


def test_find_proof_ignores_ordinary_requests() -> None:
    bearer = "Bearer " + "A" * 128
    for raw in (
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        f"POST / HTTP/1.1\r\nAuthorization: {bearer}\r\n\r\n",
        "GET / HTTP/1.1\r\nAuthorization: Basic Zm9vOmJhcg==\r\n\r\n",
        "GET / HTTP/1.1\r\nAuthorization: Bearer short\r\n\r\n",
    ):
        assert find_proof(parse_request_head(raw.encode())) is None
    head = parse_request_head(f"GET / HTTP/1.1\r\nAuthorization: {bearer}\r\n\r\n".encode())
    assert find_proof(head) is not None


def test_replay_cache() -> None:
    cache = ReplayCache(window_ms=1000, max_entries=2)
    assert cache.fresh(b"a", 0) and not cache.fresh(b"a", 10)
    assert cache.fresh(b"b", 10) and not cache.fresh(b"c", 20)  # full: fail closed
    assert cache.fresh(b"a", 2001) and len(cache) == 2  # the old a expired, b not yet
    assert cache.fresh(b"c", 2011) and len(cache) == 2  # b expired
    assert not cache.fresh(b"a", 2002)


def test_link_secrets_are_per_link() -> None:
    master = bytes(32)
    assert link_secret(master, b"1" * 8) != link_secret(master, b"2" * 8)
    assert link_secret(master, b"1" * 8) != link_secret(b"\x01" * 32, b"1" * 8)


@given(links)
def test_relay_link_round_trip(link: RelayLink) -> None:
    text = encode_relay_link(link)
    assert text.startswith("samizdat:relay/")
    assert decode_relay_link(text) == link
    assert link.secret.hex() not in repr(link)


def test_relay_link_garbage() -> None:
    for text in (
        "samizdat:relay/",
        "samizdat:relay/!!",
        "samizdat:server/AAAA",
        "samizdat:relay/gqJ2ZXJzaW9uAQ",
    ):
        with pytest.raises(ProtocolError):
            decode_relay_link(text)


def _descriptor(**extra: object) -> Descriptor:
    return Descriptor(
        server_key=b"\x07" * 32, seq=1, endpoints=[Endpoint("wss://127.0.0.7:9/v1/ws")],
        tls_ca=b"ca", tls_pin=b"\x00" * 32, issued_at=0, expires_at=10, **extra,  # type: ignore[arg-type]
    )  # fmt: skip


def test_old_descriptors_decode_and_relays_come_last() -> None:
    class Old(msgspec.Struct):  # the version 1 layout, before relays
        server_key: bytes
        seq: int
        endpoints: list[Endpoint]
        tls_ca: bytes
        tls_pin: bytes
        issued_at: int
        expires_at: int

    old = msgspec.msgpack.encode(
        Old(b"\x07" * 32, 1, [Endpoint("wss://h:1/v1/ws")], b"", b"\x00" * 32, 0, 1)
    )
    assert msgspec.msgpack.decode(old, type=Descriptor).relays == []

    mine = RelayLink(1, ["127.0.0.9:1"], b"", b"", "", b"m" * 8, b"s" * 32)
    listed = RelayLink(1, ["127.0.0.9:2"], b"", b"", "", b"d" * 8, b"s" * 32, [b"\x07" * 32])
    other = RelayLink(1, ["127.0.0.9:3"], b"", b"", "", b"o" * 8, b"s" * 32, [b"\x08" * 32])
    descriptor = _descriptor(relays=[listed])
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(descriptor), type=Descriptor) == descriptor
    out = candidates(descriptor, TransportOptions(relays=(mine, other)))
    kinds = [c.route.kind for c in out]
    assert kinds == ["direct", "direct", "relay", "relay", "relay", "relay"]
    assert {c.route.relay.link_id for c in out if c.route.relay} == {b"m" * 8, b"d" * 8}
    assert "s" * 32 not in repr(out)


def test_decoy_answers() -> None:
    def status(raw: str) -> bytes:
        head = parse_request_head(raw.encode())
        return decoy_response(head, b"page", close=True).split(b"\r\n", 1)[0]

    assert status("GET / HTTP/1.1\r\n\r\n") == b"HTTP/1.1 200 OK"
    assert status("HEAD /index.html?x=1 HTTP/1.1\r\n\r\n") == b"HTTP/1.1 200 OK"
    assert status("GET /.env HTTP/1.1\r\n\r\n") == b"HTTP/1.1 404 Not Found"
    assert status("DELETE / HTTP/1.1\r\n\r\n") == b"HTTP/1.1 405 Not Allowed"
