"""Where a job's outputs go: a small key/value interface with local-directory and S3 backends.

Keys are the same '/'-separated relative paths on every backend (``videos/<id>.mp4``), so the
runner never builds paths itself. The two promises the runner relies on for safe resume and retries:

- a reader never sees a half-written object under its final key (atomic publish), and
- ``overwrite=False`` is exclusive: of several writers racing on one key exactly one wins, so
  nothing already written is ever silently replaced.
"""

from __future__ import annotations

import os
import re
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

__all__ = [
    "AlreadyExists",
    "LocalStorage",
    "Storage",
    "StorageError",
    "open_storage",
    "validate_key",
]

# Leading '.' also keeps pyarrow.dataset from reading temp files (its default ignore_prefixes).
TMP_PREFIX = ".tmp-"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class StorageError(Exception):
    """A storage operation failed; the message names the URI involved."""


class AlreadyExists(StorageError):
    """An exclusive put found the key already taken (by an earlier run or a concurrent writer)."""


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative '/'-separated key, else raise ValueError naming it.

    Rejected up front so that no key can escape the root (``..``, absolute paths), mean different
    things on different backends (backslashes, empty or '.' segments), or collide with temp files.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"storage key must be a non-empty string, got {key!r}")
    if "\\" in key or "\0" in key:
        raise ValueError(f"storage key {key!r} must not contain backslashes or NUL")
    if key.startswith("/"):
        raise ValueError(f"storage key {key!r} must be relative, not absolute")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"storage key {key!r} has an empty, '.' or '..' component")
        if part.startswith(TMP_PREFIX):
            raise ValueError(f"storage key {key!r} uses the reserved temp-file prefix {TMP_PREFIX!r}")
    return key


class Storage(ABC):
    """A root URI under which objects are written once (atomically) and read back by key."""

    uri: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, *, overwrite: bool = False) -> str:
        """Publish ``data`` under ``key`` atomically and return its URI.

        With ``overwrite=False`` raise AlreadyExists if the key exists, even under races.
        """

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError naming the URI if there is none."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object (not a mere prefix) is stored under ``key``."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with ``prefix`` (a plain string prefix, as on S3), recursively."""

    @abstractmethod
    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        """(filesystem, base path) so pyarrow.dataset can read many objects in one go."""

    def uri_for(self, key: str) -> str:
        """The full URI of ``key`` (whether or not it exists)."""
        return f"{self.uri.rstrip('/')}/{validate_key(key)}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class LocalStorage(Storage):
    """A directory on a local or mounted filesystem; ``uri`` is its absolute path."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.uri = os.path.abspath(os.fspath(root))
        try:
            os.makedirs(self.uri, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create storage root {self.uri}: {e}") from e

    def _path(self, key: str) -> str:
        return os.path.join(self.uri, *validate_key(key).split("/"))

    def put_bytes(self, key: str, data: bytes, *, overwrite: bool = False) -> str:
        """Write to a temp file beside the target, fsync, then publish it in one step.

        ``os.link`` fails if the target exists, which makes the exclusive case race-free (a
        check-then-rename would let two writers both "win"); ``os.replace`` is atomic either way.
        """
        final, uri = self._path(key), self.uri_for(key)
        parent = os.path.dirname(final)
        tmp = os.path.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            os.makedirs(parent, exist_ok=True)
            # O_EXCL: never write through a stale file or symlink; 0o666 lets the umask decide.
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                if overwrite:
                    os.replace(tmp, final)
                else:
                    os.link(tmp, final)
            except FileExistsError as e:
                raise AlreadyExists(f"{uri} already exists (pass overwrite=True to replace it)") from e
            _fsync_dir(parent)  # make the new directory entry itself durable
        except OSError as e:
            raise StorageError(f"cannot write {uri}: {e}") from e
        finally:
            try:
                os.unlink(tmp)  # after link: drop the temp name; after replace/failure: clean up
            except FileNotFoundError:
                pass
        return uri

    def read_bytes(self, key: str) -> bytes:
        uri = self.uri_for(key)
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError as e:
            raise FileNotFoundError(f"no object at {uri}") from e
        except OSError as e:
            raise StorageError(f"cannot read {uri}: {e}") from e

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def list(self, prefix: str = "") -> list[str]:
        if prefix:
            # Validate the prefix as if it were a key, tolerating the trailing '/' of a "folder".
            validate_key(prefix.rstrip("/") or "/")
        # Walk only the deepest directory the prefix pins down; filter the rest by string prefix.
        start = Path(self.uri, *prefix.split("/")[:-1])
        keys = []
        for dirpath, _, filenames in os.walk(start):
            rel = Path(dirpath).relative_to(self.uri).as_posix()
            for name in filenames:
                if name.startswith(TMP_PREFIX):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        return pafs.LocalFileSystem(), self.uri


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_storage(uri: str | os.PathLike[str], *, s3_endpoint_url: str | None = None) -> Storage:
    """The backend for ``uri``: a local path (absolute or relative), ``file://`` URI, or ``s3://bucket/prefix``.

    S3 settings come from the standard AWS environment and config files; ``s3_endpoint_url`` overrides
    the endpoint (MinIO, Ceph RGW, R2, a local moto server). Opening an S3 URI checks the bucket, so a
    missing bucket or bad credentials fail here, before any model work.
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
        return LocalStorage(unquote(parsed.path))
    match = _SCHEME.match(text)
    if match is None:
        return LocalStorage(text)
    scheme = match.group(1).lower()
    if scheme in ("s3", "s3a"):
        from hyca_batch.s3 import S3Storage

        return S3Storage(text, endpoint_url=s3_endpoint_url)
    raise StorageError(f"cannot open {text!r}: unsupported storage scheme {scheme!r}")
