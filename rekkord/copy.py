"""Copying snapshots between repositories (``rekkord copy``): 3-2-1 backups,
and the way a format v1 repository becomes a v2 one.

The source is opened with a key that reads (read, full, master), the
destination with one that saves (a write key suffices).  Each snapshot is
copied by :meth:`rekkord.save.Saver.copy_snapshot`: its blobs are read and
verified in the source, stored again under the destination's keys and format
(deduplicated against what the destination has, as a save would), its index
rewritten and its record written with the same channel, host, user, time and
tags, and ``copy_of`` naming the original.

Resuming: a snapshot already copied is skipped -- known from the records when
the destination key can read them (``copy_of``), else from the destination
cache's memory of what it copied (a write key cannot list snapshots; without
that memory a snapshot is copied again, its data deduplicated).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import RekkordError, SnapshotNotFound
from .repository import Repository, Snapshot


@dataclass
class CopyReport:
    copied: list[tuple[str, str]] = field(default_factory=list)  # (source id, destination id)
    skipped: list[str] = field(default_factory=list)  # already copied
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source id, why)
    untrusted: list[str] = field(default_factory=list)  # not copied: their signature or key is not trusted
    warnings: int = 0
    bytes_new: int = 0
    bytes_total: int = 0

    def to_json(self) -> dict:
        return {"copied": [{"source": a, "snapshot": b} for a, b in self.copied], "skipped": self.skipped,
                "failed": [{"source": a, "error": b} for a, b in self.failed], "untrusted": self.untrusted,
                "warnings": self.warnings, "bytes_new": self.bytes_new, "bytes_total": self.bytes_total}


def select(source: Repository, specs: list[str]) -> list[Snapshot]:
    """The snapshots to copy: every trusted one, or those named (ids,
    unique prefixes, channels: all of a channel's), oldest first."""
    snaps = source.snapshots()
    if not specs:
        return snaps
    out: dict[str, Snapshot] = {}
    ids = {s.id: s for s in snaps}
    for spec in specs:
        if spec in ids:
            out[spec] = ids[spec]
            continue
        by_prefix = [s for s in snaps if len(spec) >= 4 and s.id.startswith(spec)]
        in_channel = [s for s in snaps if s.channel == spec]
        if len(by_prefix) == 1:
            out[by_prefix[0].id] = by_prefix[0]
        elif in_channel:
            out.update({s.id: s for s in in_channel})
        else:
            raise SnapshotNotFound(f"no snapshot or channel named {spec!r} in the source repository")
    return sorted(out.values(), key=lambda s: (s.time_ns, s.id))


def already_copied(dest: Repository, cache, source_id: str) -> set[str]:
    """Source snapshot ids the destination holds copies of (see the module docstring)."""
    key = f"copied:{source_id}"
    known = set(filter(None, (cache.get_meta(key) or "").split(",")))
    if dest.key.can("list"):
        for s in dest.snapshots():
            origin = s.record.get("copy_of")
            if isinstance(origin, str) and origin.startswith(source_id + ":"):
                known.add(origin.split(":", 1)[1])
    return known


def copy(source: Repository, dest: Repository, cache, snaps: list[Snapshot], *, threads: int | None = None,
         progress: Callable | None = None, warn: Callable[[str, str], None] | None = None,
         on_copied: Callable[[Snapshot, object], None] | None = None) -> CopyReport:
    from .save import SaveOptions, Saver

    source.key.require("read", "read the snapshots to copy")
    dest.key.require("save", "save copies")
    report = CopyReport()
    done = already_copied(dest, cache, source.id)
    for snap in snaps:
        if not snap.signature_ok:
            report.untrusted.append(snap.id)
            if warn:
                warn(f"snapshot {snap.id}", "not trusted (" + "; ".join(snap.problems) + "); not copied")
            continue
        if snap.id in done:
            report.skipped.append(snap.id)
            continue
        saver = Saver(dest, cache, SaveOptions(threads=threads), progress=progress, warn=warn)
        try:
            res = saver.copy_snapshot(source, snap)
        except RekkordError as e:
            report.failed.append((snap.id, str(e)))
            if warn:
                warn(f"snapshot {snap.id}", f"not copied: {e}")
            continue
        done.add(snap.id)
        cache.set_meta(f"copied:{source.id}", ",".join(sorted(done)))
        cache.commit()
        report.copied.append((snap.id, res.snapshot_id))
        report.warnings += len(res.warnings)
        report.bytes_new += res.stats.bytes_stored
        report.bytes_total += res.stats.bytes_total
        if on_copied:
            on_copied(snap, res)
    return report
