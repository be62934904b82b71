"""Where a job's outputs go: a small key/value interface that the local-directory and S3 backends implement.

Keys are the same '/'-separated relative paths on every backend (``videos/<id>.mp4``; ``layout`` names
them all), so no caller builds paths itself. The two promises the job relies on for safe resume and retries:

- a reader never sees a half-written object under its final key (atomic publish), and
- ``overwrite=False`` is exclusive: of several writers racing on one key exactly one wins, so
  nothing already written is ever silently replaced.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import pyarrow.fs as pafs

# Leading '.' also keeps pyarrow.dataset from reading temp files (its default ignore_prefixes).
TMP_PREFIX = ".tmp-"


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
