"""Hypothesis strategies for every wire structure of src/samizdat/protocol.

Structures whose body is signed are built from real keys, so that a round-tripped value
also verifies. Keys are drawn from a small pool: Ed25519 key generation is the slow part.
"""

from __future__ import annotations

import msgspec
from hypothesis import strategies as st

from samizdat.crypto.signing import SigningKey
from samizdat.errors import ErrorCode
from samizdat.protocol import frames, limits
from samizdat.protocol.descriptor import Descriptor, Endpoint, SignedDescriptor, sign_descriptor
from samizdat.protocol.envelope import Payload, PayloadKind, Sealed, SealedBox
from samizdat.protocol.keys import (
    DEVICE_LIST_CONTEXT,
    ONE_TIME_KEY_CONTEXT,
    DeviceKeys,
    DeviceList,
    SignedDeviceList,
    SignedKey,
    device_id_for,
    one_time_key_message,
)
from samizdat.protocol.links import ContactCard, Invite, ServerLink

__all__ = [
    "KEYS",
    "key32",
    "sig64",
    "ids16",
    "tokens",
    "texts",
    "millis",
    "seqs",
    "rids",
    "device_keys",
    "device_lists",
    "signed_device_lists",
    "signed_keys",
    "descriptors",
    "signed_descriptors",
    "contact_cards",
    "invites",
    "server_links",
    "sealed_boxes",
    "sealeds",
    "payloads",
    "client_frames",
    "server_frames",
]

KEYS: tuple[SigningKey, ...] = tuple(SigningKey.generate() for _ in range(4))

key32 = st.binary(min_size=32, max_size=32)
sig64 = st.binary(min_size=64, max_size=64)
ids16 = st.binary(min_size=16, max_size=16)
tokens = st.binary(min_size=32, max_size=32)
millis = st.integers(min_value=0, max_value=2**53)
seqs = st.integers(min_value=0, max_value=2**63 - 1)
rids = st.integers(min_value=0, max_value=2**31 - 1)


def texts(max_bytes: int = limits.MAX_TEXT) -> st.SearchStrategy[str]:
    # msgspec's max_length counts characters; keep to the stricter byte bound of §8.
    return st.text(max_size=max_bytes).filter(lambda s: len(s.encode()) <= max_bytes)


signing_keys = st.sampled_from(KEYS)


@st.composite
def device_keys(draw: st.DrawFn) -> DeviceKeys:
    signing = draw(signing_keys).public_bytes
    return DeviceKeys(
        device_id=device_id_for(signing),
        signing_key=signing,
        identity_key=draw(key32),
        sealing_key=draw(key32),
    )


@st.composite
def device_lists(draw: st.DrawFn, user: SigningKey | None = None) -> DeviceList:
    user_key = user if user is not None else draw(signing_keys)
    return DeviceList(
        user_key=user_key.public_bytes,
        devices=draw(st.lists(device_keys(), min_size=1, max_size=limits.MAX_DEVICES)),
        version=draw(st.integers(min_value=0, max_value=2**63 - 1)),
        issued_at=draw(millis),
        display_name=draw(texts()),
    )


def sign_device_list(device_list: DeviceList, user: SigningKey) -> SignedDeviceList:
    body = msgspec.msgpack.encode(device_list)
    return SignedDeviceList(body=body, signature=user.sign(DEVICE_LIST_CONTEXT, body))


@st.composite
def signed_device_lists(draw: st.DrawFn) -> SignedDeviceList:
    user = draw(signing_keys)
    return sign_device_list(draw(device_lists(user)), user)


def sign_key(device: SigningKey, key_id: str, key: bytes, fallback: bool) -> SignedKey:
    message = one_time_key_message(key_id, key, fallback)
    return SignedKey(
        key_id=key_id,
        key=key,
        signature=device.sign(ONE_TIME_KEY_CONTEXT, message),
        fallback=fallback,
    )


key_ids = st.text(min_size=1, max_size=64)


@st.composite
def signed_keys(draw: st.DrawFn, device: SigningKey | None = None) -> SignedKey:
    signer = device if device is not None else draw(signing_keys)
    return sign_key(signer, draw(key_ids), draw(key32), draw(st.booleans()))


endpoints = st.builds(
    Endpoint,
    url=texts(limits.MAX_URL),
    transport=st.sampled_from(["wss", "https", "tls"]),
)


@st.composite
def descriptors(draw: st.DrawFn, server: SigningKey | None = None) -> Descriptor:
    key = server if server is not None else draw(signing_keys)
    issued = draw(st.integers(min_value=0, max_value=2**52))
    return Descriptor(
        server_key=key.public_bytes,
        seq=draw(st.integers(min_value=0, max_value=2**63 - 1)),
        endpoints=draw(st.lists(endpoints, min_size=1, max_size=4)),
        tls_ca=draw(st.binary(max_size=512)),
        tls_pin=draw(key32),
        issued_at=issued,
        expires_at=draw(st.integers(min_value=issued + 1, max_value=2**53)),
    )


@st.composite
def signed_descriptors(draw: st.DrawFn) -> SignedDescriptor:
    key = draw(signing_keys)
    return sign_descriptor(draw(descriptors(key)), key)


contact_cards = st.builds(
    ContactCard,
    devices=signed_device_lists(),
    server=signed_descriptors(),
    token=tokens,
    name=texts(),
)
invites = st.builds(Invite, version=st.integers(min_value=1, max_value=2**16), card=contact_cards)
server_links = st.builds(
    ServerLink, version=st.integers(min_value=1, max_value=2**16), descriptor=signed_descriptors()
)

bodies = st.binary(max_size=2048)

sealed_boxes = st.builds(
    SealedBox,
    version=st.integers(min_value=0, max_value=255),
    ephemeral_key=key32,
    ciphertext=bodies,
)
sealeds = st.builds(
    Sealed, sender_identity_key=key32, olm_type=st.integers(min_value=0, max_value=1), olm=bodies
)
payloads = st.builds(
    Payload,
    msg_id=ids16,
    sent_at=millis,
    kind=st.sampled_from(PayloadKind),
    text=st.text(max_size=200),
    card=st.none() | contact_cards,
)

# -- frames --------------------------------------------------------------------------

envelopes = st.builds(frames.Envelope, device_id=ids16, msg_id=ids16, body=bodies)
entries = st.builds(frames.Entry, seq=seqs, msg_id=ids16, body=bodies, received_at=millis)
versions = st.lists(st.integers(min_value=0, max_value=65535), min_size=1, max_size=16)

client_frames: st.SearchStrategy[frames.ClientFrame] = st.one_of(
    st.builds(frames.Hello, versions=versions, client=texts()),
    st.builds(
        frames.Register,
        rid=rids,
        device=device_keys(),
        devices=signed_device_lists(),
        proof=sig64,
    ),
    st.builds(frames.Auth, rid=rids, device_id=ids16, proof=sig64),
    st.builds(
        frames.UploadKeys,
        rid=rids,
        one_time_keys=st.lists(signed_keys(), max_size=4),
        fallback_key=st.none() | signed_keys(),
    ),
    st.builds(frames.ClaimKeys, rid=rids, token=tokens, device_id=ids16),
    st.builds(frames.AddToken, rid=rids, token=tokens),
    st.builds(frames.RevokeToken, rid=rids, token=tokens),
    st.builds(
        frames.Deposit,
        rid=rids,
        token=tokens,
        envelopes=st.lists(envelopes, min_size=1, max_size=8),
    ),
    st.builds(
        frames.Fanout,
        rid=rids,
        msg_id=ids16,
        body=st.binary(max_size=64),
        targets=st.lists(
            st.builds(
                frames.FanoutTarget, token=tokens, devices=st.lists(ids16, min_size=1, max_size=3)
            ),
            min_size=1,
            max_size=3,
        ),
    ),
    st.builds(frames.Subscribe, rid=rids, after=seqs),
    st.builds(frames.Ack, rid=rids, up_to=seqs),
)

limit_values = st.builds(
    frames.Limits,
    max_frame=st.integers(min_value=1, max_value=limits.MAX_FRAME),
    max_envelope_body=st.integers(min_value=1, max_value=limits.MAX_ENVELOPE_BODY),
    max_envelopes_per_deposit=st.integers(min_value=1, max_value=limits.MAX_ENVELOPES_PER_DEPOSIT),
    max_mailbox_entries=st.integers(min_value=1, max_value=limits.MAX_MAILBOX_ENTRIES),
    max_keys_per_upload=st.integers(min_value=1, max_value=limits.MAX_KEYS_PER_UPLOAD),
)

server_frames: st.SearchStrategy[frames.ServerFrame] = st.one_of(
    st.builds(
        frames.Welcome,
        version=st.sampled_from(frames.PROTOCOL_VERSIONS),
        nonce=key32,
        descriptor=signed_descriptors(),
        server_time=millis,
        limits=limit_values,
    ),
    st.builds(
        frames.AuthOk,
        rid=rids,
        device_id=ids16,
        one_time_keys=st.integers(min_value=0, max_value=limits.MAX_STORED_ONE_TIME_KEYS),
        has_fallback_key=st.booleans(),
    ),
    st.builds(
        frames.KeyBundle,
        rid=rids,
        devices=signed_device_lists(),
        device_id=ids16,
        key=signed_keys(),
    ),
    st.builds(
        frames.DepositOk,
        rid=rids,
        stored=st.integers(min_value=0, max_value=64),
        duplicates=st.integers(min_value=0, max_value=64),
    ),
    st.builds(
        frames.Deliver,
        entries=st.lists(entries, max_size=limits.MAX_ENTRIES_PER_DELIVER),
    ),
    st.builds(frames.Ok, rid=rids),
    st.builds(
        frames.Error,
        rid=st.none() | rids,
        code=st.sampled_from([c.value for c in ErrorCode]),
        message=texts(),
    ),
    st.builds(frames.DescriptorUpdate, descriptor=signed_descriptors()),
)
