"""Where a job's outputs go: a small key/value interface that the local-directory and S3 backends implement.

Keys are the same '/'-separated relative paths on every backend (``videos/<id>.mp4``; ``layout`` names
them all), so no caller builds paths itself. The two promises the job relies on for safe resume and retries:

- a reader never sees a half-written object under its final key (atomic publish), and
- ``overwrite=False`` is exclusive: of several writers racing on one key exactly one wins, so
  nothing already written is ever silently replaced.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.fs as pafs

#: Requests in flight for the bulk calls (``read_many``, ``put_many``): on S3 each object is a round trip.
BULK_WORKERS = 32

#: What ``listing`` returns: every key under a prefix with its last-modified time (seconds since the epoch).
LISTING_SCHEMA = pa.schema([("key", pa.string()), ("modified", pa.float64())])

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
    def delete(self, key: str) -> None:
        """Remove the object under ``key``; a missing one is not an error."""

    @abstractmethod
    def listing(self, prefix: str = "") -> pa.Table:
        """Every key starting with ``prefix`` (a plain string prefix, as on S3), recursively, sorted, with its
        last-modified time (``LISTING_SCHEMA``): one listing, however many objects, held as Arrow."""

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with ``prefix``."""
        return self.listing(prefix).column("key").to_pylist()

    def read_many(self, keys: Iterable[str]) -> list[bytes | None]:
        """The bytes of many objects (None where there is none), fetched concurrently."""

        def read(key: str) -> bytes | None:
            try:
                return self.read_bytes(key)
            except FileNotFoundError:
                return None

        with ThreadPoolExecutor(max_workers=BULK_WORKERS) as pool:
            return list(pool.map(read, keys))

    def put_many(self, items: Iterable[tuple[str, bytes]], *, overwrite: bool = False) -> list[str]:
        """``put_bytes`` of many objects, concurrently; the first failure is raised once all have ended."""
        with ThreadPoolExecutor(max_workers=BULK_WORKERS) as pool:
            futures = [pool.submit(self.put_bytes, key, data, overwrite=overwrite) for key, data in items]
        return [f.result() for f in futures]

    @abstractmethod
    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        """(filesystem, base path) so pyarrow.dataset can read many objects in one go."""

    def uri_for(self, key: str) -> str:
        """The full URI of ``key`` (whether or not it exists)."""
        return f"{self.uri.rstrip('/')}/{validate_key(key)}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"
