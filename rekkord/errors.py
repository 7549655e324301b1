"""The one exception tree of rekkord.

Every error the library raises on purpose derives from :class:`RekkordError`.
Each class carries an ``exit_code``; the CLI maps an error to its code and
prints ``str(error)`` as one line.  The table lives in ``docs/exit-codes.md``.
"""

from __future__ import annotations


class ExitCode:
    OK = 0
    ERROR = 1  # generic failure
    USAGE = 2  # bad command line (click's own code)
    WARNINGS = 3  # save completed, but some files were unreadable or changed
    DAMAGED = 4  # check found damage; restore could not restore every file
    KEY = 5  # wrong key, wrong passphrase, key of the wrong role
    NOT_FOUND = 6  # unknown snapshot, path not in snapshot, missing repository
    STORAGE = 7  # storage unreachable or refused the operation
    NO_SPACE = 8  # disk or quota full
    EXISTS = 9  # refusing to overwrite (key file, repository)
    STALE = 10  # channels --stale: a channel's latest snapshot is too old
    INTERRUPTED = 130


class RekkordError(Exception):
    """Base of every error rekkord reports to the user."""

    exit_code = ExitCode.ERROR


class UsageError(RekkordError):
    exit_code = ExitCode.USAGE


class ConfigError(RekkordError):
    exit_code = ExitCode.USAGE


# --- keys -----------------------------------------------------------------


class KeyError_(RekkordError):
    """Problems with a key file or its use (named with a trailing underscore
    so it never shadows the builtin)."""

    exit_code = ExitCode.KEY


class WrongPassphrase(KeyError_):
    pass


class WrongKey(KeyError_):
    """The key does not belong to this repository, or was forged."""


class PermissionDenied(KeyError_):
    """The key's role does not allow the operation."""


class KeyFileExists(RekkordError):
    exit_code = ExitCode.EXISTS


# --- repository / snapshots ------------------------------------------------


class NotFound(RekkordError):
    exit_code = ExitCode.NOT_FOUND


class RepositoryNotFound(NotFound):
    pass


class RepositoryExists(RekkordError):
    exit_code = ExitCode.EXISTS


class SnapshotNotFound(NotFound):
    pass


class PathNotFound(NotFound):
    pass


class IntegrityError(RekkordError):
    """Stored data is damaged, forged, missing or out of place."""

    exit_code = ExitCode.DAMAGED


class ConfigMismatch(WrongKey, IntegrityError):
    """The key was made for this repository id, yet the config disagrees with
    it: the config was forged or replaced (or the key file was)."""

    exit_code = ExitCode.DAMAGED


class UnsupportedFormat(RekkordError):
    exit_code = ExitCode.ERROR


class PartialFailure(RekkordError):
    """The operation finished but some items failed (listed in ``problems``)."""

    exit_code = ExitCode.DAMAGED

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or []


# --- storage ---------------------------------------------------------------


class StorageError(RekkordError):
    """A storage operation failed for good (after retries when transient)."""

    exit_code = ExitCode.STORAGE


class ObjectNotFound(StorageError):
    exit_code = ExitCode.NOT_FOUND


class ObjectExists(StorageError):
    """An exclusive write found the name taken."""


class StoragePermissionDenied(StorageError):
    pass


class NoSpace(StorageError):
    exit_code = ExitCode.NO_SPACE


class TransientStorageError(StorageError):
    """Worth retrying: timeouts, dropped connections, 5xx answers."""


class Interrupted(RekkordError):
    exit_code = ExitCode.INTERRUPTED
