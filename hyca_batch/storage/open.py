"""A storage URI to its backend."""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlparse

from hyca_batch.storage.base import Storage, StorageError
from hyca_batch.storage.local import LocalStorage

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def open_storage(uri: str | os.PathLike[str], *, s3_endpoint_url: str | None = None, create: bool = True) -> Storage:
    """The backend for ``uri``: a local path (absolute or relative), ``file://`` URI, or ``s3://bucket/prefix``.

    S3 settings come from the standard AWS environment and config files; ``s3_endpoint_url`` overrides
    the endpoint (MinIO, Ceph RGW, R2, a local moto server). Opening an S3 URI checks the bucket, so a
    missing bucket or bad credentials fail here, before any model work. ``create=False`` (a dry run) leaves a
    missing local directory uncreated; it then reads as empty.
    """
    text = os.fspath(uri)
    if not text:
        raise StorageError("empty storage URI: give a directory, file:// URI or s3:// URI")
    if text.startswith("file:"):
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"unsupported file URI {text!r}: only local files (no remote host)")
        if not parsed.path:
            raise StorageError(f"file URI {text!r} has no path")
        return LocalStorage(unquote(parsed.path), create=create)
    match = _SCHEME.match(text)
    if match is None:
        return LocalStorage(text, create=create)
    scheme = match.group(1).lower()
    if scheme in ("s3", "s3a"):
        from hyca_batch.storage.s3 import S3Storage  # boto3 is imported only for S3 URIs

        return S3Storage(text, endpoint_url=s3_endpoint_url)
    raise StorageError(f"cannot open {text!r}: unsupported storage scheme {scheme!r}")
