"""Choosing snapshots the way restic's ``--tag``, ``--host``, ``--path`` and
``--latest`` do, for ``snapshots``, ``stats`` and friends.

* tags: each spec is a comma-separated list that must all be present; specs
  are ORed (``--tag a,b --tag c``: a and b, or c); ``""`` matches snapshots
  without tags.
* paths: a snapshot matches when every given path is one of its saved paths.
  Paths are in the record's private part, sealed with the data key: they
  need a read, full or admin key (an audit key is refused, with a message
  saying so).
* latest N: the N newest snapshots of each channel (restic: of each host and
  path set; paths are secret here, and a channel is what one backup job
  writes).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .errors import IntegrityError, PermissionDenied
from .repository import Repository, Snapshot


def parse_tags(specs: Iterable[str]) -> list[list[str]]:
    return [[t.strip() for t in spec.split(",")] for spec in specs]


def has_tags(snap: Snapshot, groups: list[list[str]]) -> bool:
    tags = set(snap.tags if isinstance(snap.tags, list) else [])
    for group in groups:
        wanted = [t for t in group if t]
        if not wanted and not tags:
            return True
        if wanted and all(t in tags for t in wanted):
            return True
    return False


def saved_paths(repo: Repository, snap: Snapshot) -> list[str] | None:
    """The paths a snapshot saved, or None when the record's private part is
    missing or damaged.  Needs a key holding the data key."""
    if not repo.key.can("read"):
        raise PermissionDenied(f"{repo.key.role} keys cannot read saved paths (they are sealed with the data key; "
                               "use a read, full or admin key)")
    try:
        private = repo.private(snap)
    except (IntegrityError, ValueError, TypeError):
        return None
    paths = private.get("paths") if isinstance(private, dict) else None
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        return None
    if isinstance(private.get("stdin"), str):
        return ["/" + private["stdin"]] if not paths else paths
    return paths


def latest_per_channel(snaps: list[Snapshot], n: int) -> list[Snapshot]:
    """The ``n`` newest of each channel, in the input's (time) order."""
    by_channel: dict[str, list[Snapshot]] = {}
    for s in snaps:
        by_channel.setdefault(s.channel, []).append(s)
    keep = {id(s) for group in by_channel.values() for s in sorted(group, key=lambda x: (x.time_ns, x.id))[-n:]}
    return [s for s in snaps if id(s) in keep]


def select(repo: Repository, snaps: list[Snapshot], *, channels=(), hosts=(), tags=(), paths=(),
           latest: int | None = None, paths_of: dict | None = None) -> list[Snapshot]:
    """Filter ``snaps`` (oldest first).  ``paths_of`` (id -> paths) is filled
    for the snapshots whose paths were read."""
    out = list(snaps)
    if channels:
        out = [s for s in out if s.channel in channels]
    if hosts:
        out = [s for s in out if s.host in hosts]
    if tags:
        groups = parse_tags(tags)
        out = [s for s in out if has_tags(s, groups)]
    if paths:
        want = [os.path.normpath(p) for p in paths]
        kept = []
        for s in out:
            have = saved_paths(repo, s)
            if paths_of is not None:
                paths_of[s.id] = have
            if have is not None and all(p in have for p in want):
                kept.append(s)
        out = kept
    if latest is not None:
        out = latest_per_channel(out, latest)
    return out
