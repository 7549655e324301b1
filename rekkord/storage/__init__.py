"""Storage backends and the URL parser that picks one.

Heavy SDKs (boto3, paramiko) are imported only when their URL is used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..errors import ConfigError
from .base import Storage, retry

__all__ = ["Storage", "retry", "open_storage"]


def open_storage(url: str, options: Mapping[str, str] | None = None) -> Storage:
    """Open the backend named by ``url``.

    ``options`` carries backend settings from the config file or environment
    (already merged by the caller): e.g. ``endpoint_url``, ``region``,
    ``sftp_key_file``, ``sftp_password``, ``sftp_fingerprint``, ``connections``.
    """
    options = dict(options or {})
    if url.startswith("s3://"):
        from .s3 import S3Storage

        return S3Storage.from_url(url, options)
    if url.startswith("sftp://"):
        from .sftp import SFTPStorage

        return SFTPStorage.from_url(url, options)
    if url.startswith("memory://"):
        from .memory import MemoryStorage

        return MemoryStorage(url)
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" in url:
        raise ConfigError(f"unknown repository URL scheme in {url!r} (use a path, s3:// or sftp://)")
    from .local import LocalStorage

    return LocalStorage(os.path.expanduser(url))
