"""Making repository objects by hand in tests, the way a save would, for
either format version (v1: named by the keyed plaintext id; v2: by the hash
of the stored bytes, data blobs convergent)."""

from __future__ import annotations

from rekkord import format as fmt
from rekkord.errors import ObjectExists
from rekkord.index import Extent


def store(repo, btype: int, data: bytes, *, overwrite: bool = False) -> tuple[bytes, int, bytes]:
    """Store a blob of ``data``: (ref, stored size, extent key)."""
    codec = repo.codec
    pid = codec.plain_id(btype, data)
    ref, raw = codec.seal_for_store(btype, data, pid)
    try:
        repo.storage.write(fmt.blob_name(ref), raw, exclusive=not overwrite)
    except ObjectExists:
        pass
    return ref, len(raw), (pid if codec.convergent and btype == fmt.T_DATA else b"")


def data_extent(repo, data: bytes, offset: int = 0, length: int | None = None) -> Extent:
    ref, _, key = store(repo, fmt.T_DATA, data)
    return Extent(ref, offset, len(data) - offset if length is None else length, key)


#: How check and restore word a blob whose bytes were changed (v1: its MAC
#: fails; v2: it no longer hashes to its name).
TAMPERED = ("MAC mismatch", "do not hash to its name")


def tampered(message: str) -> bool:
    return any(t in message for t in TAMPERED)
