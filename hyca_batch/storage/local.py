"""A directory on a local or mounted filesystem as a ``Storage``: atomic publish by rename, exclusivity by link."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from hyca_batch.storage.base import LISTING_SCHEMA, TMP_PREFIX, AlreadyExists, Storage, StorageError, validate_key


class LocalStorage(Storage):
    """A directory on a local or mounted filesystem; ``uri`` is its absolute path."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self.uri = os.path.abspath(os.fspath(root))
        if not create:  # a reader (a dry run) leaves no directory behind; a missing one lists as empty
            return
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

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StorageError(f"cannot delete {self.uri_for(key)}: {e}") from e

    def listing(self, prefix: str = "") -> pa.Table:
        if prefix:
            # Validate the prefix as if it were a key, tolerating the trailing '/' of a "folder".
            validate_key(prefix.rstrip("/") or "/")
        # Walk only the deepest directory the prefix pins down; filter the rest by string prefix.
        start = Path(self.uri, *prefix.split("/")[:-1])
        keys, modified = [], []
        stack = [str(start)] if start.is_dir() else []
        while stack:
            for entry in os.scandir(stack.pop()):
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                    continue
                if entry.name.startswith(TMP_PREFIX):
                    continue
                key = Path(entry.path).relative_to(self.uri).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
                    modified.append(entry.stat().st_mtime)  # scandir has it from the directory read
        table = pa.table({"key": pa.array(keys, pa.string()), "modified": pa.array(modified, pa.float64())})
        return table.sort_by("key").cast(LISTING_SCHEMA)

    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        return pafs.LocalFileSystem(), self.uri


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
