"""Local storage: keys, atomic and exclusive publishing, cleanup, listing, URIs, pyarrow access."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from hyca_batch.storage import AlreadyExists, LocalStorage, StorageError, open_storage
from hyca_batch.storage import base as storage_mod


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "out" / "demo")


def all_files(root: str) -> list[str]:
    """Every file on disk under root, temp files included (unlike Storage.list)."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


def test_root_is_created_absolute(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    assert store.uri == str(tmp_path / "a" / "b")
    assert os.path.isabs(store.uri)


def test_put_read_exists_list_uri(store: LocalStorage) -> None:
    uri = store.put_bytes("videos/abc.mp4", b"video")
    assert uri == store.uri_for("videos/abc.mp4") == f"{store.uri}/videos/abc.mp4"
    assert Path(uri).read_bytes() == b"video"
    store.put_bytes("records/abc.parquet", b"rec")
    store.put_bytes("run.json", b"{}")
    store.put_bytes("videos/sub/deep.mp4", b"deep")

    assert store.read_bytes("videos/abc.mp4") == b"video"
    assert store.exists("videos/abc.mp4")
    assert not store.exists("videos/missing.mp4")
    assert not store.exists("videos")  # a prefix is not an object
    assert store.list() == ["records/abc.parquet", "run.json", "videos/abc.mp4", "videos/sub/deep.mp4"]
    assert store.list("videos/") == ["videos/abc.mp4", "videos/sub/deep.mp4"]
    assert store.list("videos") == ["videos/abc.mp4", "videos/sub/deep.mp4"]
    assert store.list("videos/a") == ["videos/abc.mp4"]
    assert store.list("r") == ["records/abc.parquet", "run.json"]
    assert store.list("errors/") == []


def test_put_accepts_bytes_like(store: LocalStorage) -> None:
    store.put_bytes("a.bin", bytearray(b"xy"))
    store.put_bytes("b.bin", memoryview(b"zw"))
    store.put_bytes("empty.bin", b"")
    assert [store.read_bytes(k) for k in ("a.bin", "b.bin", "empty.bin")] == [b"xy", b"zw", b""]


def test_read_missing_names_the_uri(store: LocalStorage) -> None:
    with pytest.raises(FileNotFoundError, match="errors/x.json"):
        store.read_bytes("errors/x.json")


def test_exclusive_put_keeps_the_original(store: LocalStorage) -> None:
    store.put_bytes("videos/a.mp4", b"first")
    with pytest.raises(AlreadyExists, match=r"videos/a\.mp4"):
        store.put_bytes("videos/a.mp4", b"second")
    assert store.read_bytes("videos/a.mp4") == b"first"
    assert all_files(store.uri) == ["videos/a.mp4"]  # the loser's temp file is gone


def test_overwrite_replaces(store: LocalStorage) -> None:
    store.put_bytes("run.json", b"old")
    store.put_bytes("run.json", b"new", overwrite=True)
    assert store.read_bytes("run.json") == b"new"
    store.put_bytes("fresh.json", b"x", overwrite=True)  # overwrite also creates
    assert all_files(store.uri) == ["fresh.json", "run.json"]


@pytest.mark.parametrize(("overwrite", "publish"), [(False, "link"), (True, "replace")])
def test_failed_publish_leaves_no_temp_and_no_object(
    store: LocalStorage, monkeypatch: pytest.MonkeyPatch, overwrite: bool, publish: str
) -> None:
    store.put_bytes("videos/keep.mp4", b"keep")

    def broken(src: str, dst: str) -> None:
        assert os.path.basename(src).startswith(storage_mod.TMP_PREFIX)
        assert Path(src).read_bytes() == b"payload"  # fully written before publishing
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, publish, broken)
    with pytest.raises(StorageError, match=r"videos/new\.mp4.*No space left"):
        store.put_bytes("videos/new.mp4", b"payload", overwrite=overwrite)
    assert all_files(store.uri) == ["videos/keep.mp4"]


def test_failed_write_leaves_no_temp(store: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StorageError, match="Input/output error"):
        store.put_bytes("records/r.parquet", b"data")
    assert all_files(store.uri) == []


def test_list_ignores_temp_files(store: LocalStorage) -> None:
    store.put_bytes("videos/a.mp4", b"a")
    Path(store.uri, "videos", f"{storage_mod.TMP_PREFIX}crashed-writer").write_bytes(b"half")
    Path(store.uri, f"{storage_mod.TMP_PREFIX}other").write_bytes(b"half")
    assert store.list() == ["videos/a.mp4"]
    assert store.list("videos/") == ["videos/a.mp4"]


def test_concurrent_exclusive_puts_have_one_winner(store: LocalStorage, race_exclusive_puts) -> None:
    race_exclusive_puts(store, "videos/race.mp4", writers=8)
    assert all_files(store.uri) == ["videos/race.mp4"]  # no loser's temp file left


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs/x.mp4",
        "../escape",
        "videos/../../x",
        "a\\b",
        "videos//x",
        "videos/",
        "./x",
        "a/./b",
        ".tmp-x",
        "videos/.tmp-1",
    ],
)
def test_bad_keys_are_rejected(store: LocalStorage, key: str) -> None:
    for op in (
        lambda: store.put_bytes(key, b"x"),
        lambda: store.read_bytes(key),
        lambda: store.exists(key),
        lambda: store.uri_for(key),
    ):
        with pytest.raises(ValueError, match="key"):
            op()
    assert all_files(store.uri) == []


@pytest.mark.parametrize("prefix", ["/", "/abs", "../", "a\\b", "a/../b"])
def test_bad_list_prefixes_are_rejected(store: LocalStorage, prefix: str) -> None:
    with pytest.raises(ValueError):
        store.list(prefix)


def test_open_storage_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_storage("outputs/run1")
    assert isinstance(store, LocalStorage)
    assert store.uri == str(tmp_path / "outputs" / "run1")
    store.put_bytes("run.json", b"{}")
    assert (tmp_path / "outputs" / "run1" / "run.json").read_bytes() == b"{}"


def test_open_storage_file_uri(tmp_path: Path) -> None:
    target = tmp_path / "with space"
    store = open_storage(target.as_uri())  # file:///.../with%20space
    assert store.uri == str(target)
    assert target.is_dir()
    assert open_storage(f"file://localhost{target}").uri == str(target)


def test_open_storage_rejects_other_schemes() -> None:
    with pytest.raises(StorageError, match="gs"):
        open_storage("gs://bucket/prefix")
    with pytest.raises(StorageError, match="remote host"):
        open_storage("file://otherhost/data")
    with pytest.raises(StorageError, match="empty"):
        open_storage("")


def test_root_that_is_a_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(StorageError, match=str(tmp_path / "f")):
        LocalStorage(tmp_path / "f")


def test_arrow_filesystem_reads_parquet_written_through_put(store: LocalStorage) -> None:
    for i in range(3):
        table = pa.table({"id": [f"v{i}"], "seconds": [float(i)]})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        store.put_bytes(f"records/v{i}.parquet", sink.getvalue().to_pybytes())
    # A crashed writer's leftover must not be read as data (pyarrow skips '.'-prefixed files).
    Path(store.uri, "records", f"{storage_mod.TMP_PREFIX}dead").write_bytes(b"not parquet")

    fs, base = store.arrow_filesystem()
    dataset = ds.dataset(f"{base}/records", filesystem=fs, format="parquet")
    table = dataset.to_table().sort_by("id")
    assert table.column("id").to_pylist() == ["v0", "v1", "v2"]
    assert table.column("seconds").to_pylist() == [0.0, 1.0, 2.0]
