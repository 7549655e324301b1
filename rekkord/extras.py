"""The optional parts of rekkord and how to install them (for error messages).

Each hint gives both commands, the one that works from the package index and
the one that works in a clone of the source, since a user may have either."""

from __future__ import annotations

#: extra -> what it adds.  ``monitor`` comes with ``rekkord monitor``.
EXTRAS = {"mount": "FUSE mounts (rekkord mount): the mfusepy package",
          "monitor": "the monitoring service (rekkord monitor)",
          "parity": "Reed-Solomon parity over data blobs (init --parity): the zfec package"}


def install_hint(extra: str) -> str:
    """``pip install 'rekkord[EXTRA]'`` (from the package index), or
    ``pip install '.[EXTRA]'`` in a clone of the source."""
    return f"pip install 'rekkord[{extra}]' (in a clone of the source: pip install '.[{extra}]')"
