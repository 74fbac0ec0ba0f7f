"""The encrypted local store: nothing in clear on disk, wrong passphrase refused, the lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from samizdat.client.store import STORE_FILE, Store
from samizdat.crypto.at_rest import KdfParams
from samizdat.errors import DecryptionError, LocalError, NotFound, WrongPassphrase

FAST = KdfParams(memory_kib=1024, iterations=1, lanes=1)
MARKERS = ["ZEBRA-contact-name", "QUARTZ-message-text", "samizdat:server/LINK-MARKER"]


def _all_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(home.iterdir()) if p.is_file())


def test_nothing_in_clear_on_disk(tmp_path: Path) -> None:
    store = Store.create(tmp_path, "pass phrase", FAST)
    with store.locked():
        store.put("name", MARKERS[0], MARKERS[0].encode())
        store.put("identity", "", MARKERS[2].encode() + bytes(range(32)))
    store.append("history", b"cid", MARKERS[1].encode())
    store.append("history", b"cid", b"second")
    assert store.get("name", MARKERS[0]) == MARKERS[0].encode()
    assert store.read_log("history", b"cid") == [MARKERS[1].encode(), b"second"]
    assert store.values("name") == [MARKERS[0].encode()]
    store.close()
    data = _all_bytes(tmp_path)
    assert (tmp_path / STORE_FILE).exists()
    for marker in MARKERS:
        assert marker.encode() not in data
        assert marker.encode("utf-16-le") not in data
    assert bytes(range(32)) not in data


def test_reopen_with_right_and_wrong_passphrase(tmp_path: Path) -> None:
    store = Store.create(tmp_path, "right", FAST)
    store.put("contact", b"k", b"value")
    store.close()
    with pytest.raises(WrongPassphrase):
        Store.open(tmp_path, "wrong")
    again = Store.open(tmp_path, "right")
    assert again.get("contact", b"k") == b"value"
    assert again.get("contact", b"missing") is None
    again.delete("contact", b"k")
    assert again.get("contact", b"k") is None
    again.close()
    with pytest.raises(LocalError):
        Store.create(tmp_path, "right", FAST)
    with pytest.raises(NotFound):
        Store.open(tmp_path / "elsewhere", "right")


def test_a_record_moved_to_another_row_does_not_open(tmp_path: Path) -> None:
    store = Store.create(tmp_path, "pw", FAST)
    store.put("contact", b"a", b"alice")
    store.put("contact", b"b", b"bob")
    conn = store._conn  # noqa: SLF001 - simulating an attacker with the file
    rows = conn.execute("SELECT lookup, value FROM records WHERE kind='contact'").fetchall()
    conn.execute("UPDATE records SET value=? WHERE lookup=?", (rows[0][1], rows[1][0]))
    with pytest.raises(DecryptionError):
        store.values("contact")
    store.close()


def test_lock_is_reentrant_and_rolls_back_on_error(tmp_path: Path) -> None:
    store = Store.create(tmp_path, "pw", FAST)
    with store.locked(), store.locked():
        store.put("cursor", "", b"1")
    with pytest.raises(RuntimeError), store.locked():
        store.put("cursor", "", b"2")
        raise RuntimeError("boom")
    assert store.get("cursor", "") == b"1"
    other = Store.open(tmp_path, "pw")
    other.put("cursor", "", b"3")  # another process sees committed state
    assert store.get("cursor", "") == b"3"
    other.close()
    store.close()


def test_repr_shows_nothing(tmp_path: Path) -> None:
    store = Store.create(tmp_path, "pw", FAST)
    assert repr(store) == "Store(<encrypted>)"
    assert store.pickle_key.hex() not in repr(store) + str(store)
    store.close()
