"""Blob frames and the attachment reference: round trips and size limits (§5.3.11, §12)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samizdat.errors import ProtocolError
from samizdat.protocol import blobs as b
from samizdat.protocol import frames, limits
from samizdat.protocol.descriptor import SignedDescriptor

ids = st.binary(min_size=16, max_size=16)
k32 = st.binary(min_size=32, max_size=32)
sizes = st.integers(min_value=0, max_value=limits.MAX_BLOB_SIZE)


@settings(max_examples=50, deadline=None)
@given(
    st.one_of(
        st.builds(b.BlobOpen, rid=st.integers(0, 2**31 - 1), blob_id=ids, size=sizes,
                  read_hash=k32, ttl_ms=st.none() | st.integers(1, 2**40)),
        st.builds(b.BlobWrite, rid=st.integers(0, 9), blob_id=ids, offset=sizes,
                  data=st.binary(max_size=2000)),
        st.builds(b.BlobRead, rid=st.integers(0, 9), blob_id=ids, secret=k32, offset=sizes),
        st.builds(b.BlobDelete, rid=st.integers(0, 9), blob_id=ids),
    )
)  # fmt: skip
def test_client_frames_round_trip(frame: frames.ClientFrame) -> None:
    assert frames.decode_client_frame(frames.encode(frame)) == frame


@settings(max_examples=30, deadline=None)
@given(
    st.one_of(
        st.builds(b.BlobStatus, rid=st.integers(0, 9), size=sizes, received=sizes,
                  expires_at=st.integers(0, 2**50)),
        st.builds(b.BlobData, rid=st.integers(0, 9), offset=sizes, size=sizes,
                  data=st.binary(max_size=2000)),
    )
)  # fmt: skip
def test_server_frames_round_trip(frame: frames.ServerFrame) -> None:
    assert frames.decode_server_frame(frames.encode(frame)) == frame


def test_a_full_chunk_fits_a_frame_and_one_byte_more_is_refused() -> None:
    full = b.BlobWrite(rid=1, blob_id=bytes(16), offset=0, data=bytes(limits.MAX_BLOB_CHUNK))
    assert frames.decode_client_frame(frames.encode(full)) == full
    over = msgspec.msgpack.encode(
        {"t": "blob_write", "rid": 1, "blob_id": bytes(16), "offset": 0,
         "data": bytes(limits.MAX_BLOB_CHUNK + 1)}
    )  # fmt: skip
    with pytest.raises(ProtocolError):
        frames.decode_client_frame(over)
    too_big = msgspec.msgpack.encode(
        {"t": "blob_open", "rid": 1, "blob_id": bytes(16), "size": limits.MAX_BLOB_SIZE + 1,
         "read_hash": bytes(32)}
    )  # fmt: skip
    with pytest.raises(ProtocolError):
        frames.decode_client_frame(too_big)


def test_attachment_round_trip_and_repr_hides_secrets() -> None:
    att = b.Attachment(
        blob_id=b"\x01" * 16, secret=b"\x02" * 32, key=b"\x03" * 32, sha256=b"\x04" * 32,
        size=123, server=SignedDescriptor(body=b"d", signature=b"\x05" * 64),
        media_type="image/png", name="cat.png", expires_at=5,
    )  # fmt: skip
    assert b.decode_attachment(b.encode_attachment(att)) == att
    assert "0202" not in repr(att) and "cat" not in repr(att)
    too_long = msgspec.structs.replace(att, name="n" * (limits.MAX_TEXT + 1))
    with pytest.raises(msgspec.ValidationError):
        b.decode_attachment(msgspec.msgpack.encode(too_long))


def test_attachment_padding_length() -> None:
    att = b.Attachment(
        blob_id=b"\x01" * 16, secret=b"\x02" * 32, key=b"\x03" * 32, sha256=b"\x04" * 32,
        size=1000, server=SignedDescriptor(body=b"d", signature=b"\x05" * 64), padded=1024,
    )  # fmt: skip
    assert b.decode_attachment(b.encode_attachment(att)).blob_plaintext == 1024
    fields = msgspec.msgpack.decode(b.encode_attachment(att))
    # A reference from a sender before padding has no field: its blob is the file alone.
    older = {k: v for k, v in fields.items() if k != "padded"}
    assert b.decode_attachment(msgspec.msgpack.encode(older)).blob_plaintext == 1000
    # Padding cannot be shorter than the file (the download would cut the file).
    with pytest.raises(msgspec.ValidationError):
        b.decode_attachment(msgspec.msgpack.encode(fields | {"padded": 999}))
