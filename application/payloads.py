"""Payload sealing: how an event's data becomes the bytes stored in the log, and back - a
pipeline in the manner of eventsourcing's mapper (transcode, compress, encrypt on the way in;
decrypt, decompress, decode on the way out).

The stages today (docs/adr/0004; the bytes on disk are exactly these):

* **transcode** - the caller's: the session is handed payloads as bytes, already encoded (the
  file system's ``encode_struct``/``decode_struct``, and raw file pages), and hands bytes back;
* **compress** - none. This is the seam for it: a compression stage would go between the two
  steps below, and would need a marker in the stored bytes (or the event's metadata) so that
  data written before it still reads;
* **encrypt** - AES-256-GCM under the object key with the chain id and the hash of the event's
  metadata as associated data, so data cannot be moved to another event, object or chain
  unnoticed. A chain without keys stores the payload as it is, and an encrypted chain refuses
  data stored without encryption.
"""

from __future__ import annotations

from application.keys import ObjectKey
from application.ports import Crypto, CryptoError
from application.session_errors import ChainIntegrityError
from domain.hashing import sha256_of


class PayloadMapper:
    """Seals payloads for the log and opens them again, for one chain."""

    def __init__(self, crypto: Crypto, chain_id: bytes, encrypted: bool) -> None:
        self.crypto = crypto
        self.chain_id = chain_id
        self.encrypted = encrypted

    def to_stored(self, payload: bytes, okey: ObjectKey | None, meta_bytes: bytes) -> bytes:
        """The bytes to store for ``payload`` of the event whose metadata is ``meta_bytes``
        (sealed under ``okey``; as they are without one)."""
        if okey is None:
            return payload
        return self.crypto.seal(okey.key, payload, self.chain_id + sha256_of(meta_bytes))

    def from_stored(
        self, raw: bytes, offset: int, meta_hash: bytes, okey: ObjectKey | None
    ) -> bytes:
        """The payload of stored bytes ``raw`` (at log ``offset``, for messages) of the event
        whose metadata hashes to ``meta_hash``; ``ChainIntegrityError`` when they do not
        authenticate."""
        if okey is None:
            if self.encrypted:
                raise ChainIntegrityError("unencrypted data in an encrypted chain")
            return raw
        try:
            return self.crypto.open(okey.key, raw, self.chain_id + meta_hash)
        except CryptoError:
            raise ChainIntegrityError(
                f"data at offset {offset} fails authentication (altered or misplaced)"
            ) from None
