"""Every size limit of protocol version 1 (docs/protocol.md §8).

A server may announce lower values in ``Welcome.limits``; it never accepts more.
"""

from __future__ import annotations

from typing import Final

#: Largest WebSocket message either side accepts, in bytes. One envelope at the largest
#: padding bucket plus its recipient fields must fit with room for framing.
MAX_FRAME: Final = 256 * 1024
#: Largest opaque envelope body a deposit may carry.
MAX_ENVELOPE_BODY: Final = 96 * 1024
#: Most envelopes one ``Deposit`` frame may carry.
MAX_ENVELOPES_PER_DEPOSIT: Final = 64
#: Most recipient devices one ``Fanout`` frame may name (server-side fan-out, §5.3.10).
MAX_FANOUT_DEVICES: Final = 1024
#: Most entries a mailbox holds before deposits answer ``quota``.
MAX_MAILBOX_ENTRIES: Final = 10_000
#: Most one-time keys one ``UploadKeys`` may carry, and most stored per device.
MAX_KEYS_PER_UPLOAD: Final = 100
MAX_STORED_ONE_TIME_KEYS: Final = 200
#: Most live delivery tokens per user.
MAX_TOKENS_PER_USER: Final = 1_000
#: Most devices in a signed device list.
MAX_DEVICES: Final = 16
#: Most entries one ``Deliver`` frame carries.
MAX_ENTRIES_PER_DELIVER: Final = 32
#: Longest free-text field (names, client ids, error messages), in bytes of UTF-8.
MAX_TEXT: Final = 256
#: Longest URL in a descriptor.
MAX_URL: Final = 512
#: Most endpoints in a descriptor.
MAX_ENDPOINTS: Final = 32
#: Largest DER certificate carried in a descriptor.
MAX_CERT: Final = 4096
#: Largest attachment plaintext a client sends, in bytes (100 MiB).
MAX_ATTACHMENT: Final = 100 * 1024 * 1024
#: Largest blob ciphertext: ``MAX_ATTACHMENT`` sealed in chunks, 16 tag bytes per chunk.
MAX_BLOB_SIZE: Final = MAX_ATTACHMENT + (MAX_ATTACHMENT // (128 * 1024)) * 16
#: Bytes of one sealed attachment chunk: every ``blob_write`` but a blob's last is this long.
MAX_BLOB_CHUNK: Final = 128 * 1024 + 16
