"""``records.parquet/``: the records in a few part files, kept at each run's end from the rows the replicas
handed back, never standing in for a record that changed, and rebuilt from ``records/`` when unreadable."""

from __future__ import annotations

import logging
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hyca_batch.records import MAX_SNAPSHOT_PARTS, SnapshotWriter, read_records, update_snapshot, write_record
from hyca_batch.storage import open_storage
from hyca_batch.storage.layout import LEGACY_SNAPSHOT_KEY, SNAPSHOT, record_key

TAG = pa.schema([("tag", pa.string())])


def _commit(storage, video_id: str, prompt: str = "p", tag: str = "t") -> pa.Table:
    table = write_record(storage, {"id": video_id, "prompt": prompt, "status": "done"}, TAG, {"tag": tag})
    assert table is not None
    return table


def _prompts(storage) -> dict[str, str]:
    table = read_records(storage)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "a record read twice"
    return dict(zip(ids, table.column("prompt").to_pylist()))


def _parts(storage) -> list[str]:
    return [k[len(SNAPSHOT) :] for k in storage.list(SNAPSHOT)]


def test_a_run_turns_the_rows_it_was_handed_into_one_part(tmp_path):
    storage = open_storage(str(tmp_path / "out"))
    writer = SnapshotWriter(storage, "r1", rows=4)
    for i in range(10):
        writer.add(_commit(storage, f"v{i}"))
    writer.flush()
    assert _parts(storage) == [f"staging-r1-0000{k}.parquet" for k in range(3)]
    _commit(storage, "late")  # committed by another job: no part has it, so it is read from its file
    assert update_snapshot(storage, "r1") == 11
    assert _parts(storage) == ["part-r1.parquet"]
    assert pq.read_table(str(tmp_path / "out" / "records.parquet")).num_rows == 11  # one dataset for any reader
    assert _prompts(storage) == {**{f"v{i}": "p" for i in range(10)}, "late": "p"}


def test_a_part_row_stands_only_for_the_record_file_it_was_taken_from(tmp_path):
    out = tmp_path / "out"
    storage = open_storage(str(out))
    for i in range(3):
        _commit(storage, f"v{i}", prompt="first")
    update_snapshot(storage, "r1")
    # The same file, rewritten behind the snapshot's back but with its time kept: the part's row is read.
    path = out / record_key("v0")
    stat = path.stat()
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.schema.get_field_index("prompt"), "prompt", pa.array(["edited"])), path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _prompts(storage)["v0"] == "first"
    # Deleted and generated again: a new file, and the stale row never shadows it.
    path.unlink()
    _commit(storage, "v0", prompt="regenerated")
    assert _prompts(storage) == {"v0": "regenerated", "v1": "first", "v2": "first"}
    update_snapshot(storage, "r2")
    assert _parts(storage) == ["part-r1.parquet", "part-r2.parquet"]
    assert _prompts(storage) == {"v0": "regenerated", "v1": "first", "v2": "first"}
    # Deleted for good: gone, whatever the parts hold.
    (out / record_key("v1")).unlink()
    assert _prompts(storage) == {"v0": "regenerated", "v2": "first"}


def test_many_parts_are_merged_into_one(tmp_path):
    storage = open_storage(str(tmp_path / "out"))
    for run in range(MAX_SNAPSHOT_PARTS + 1):
        _commit(storage, f"v{run}")
        update_snapshot(storage, f"r{run:02d}")
    assert _parts(storage) == [f"part-r{MAX_SNAPSHOT_PARTS:02d}.parquet"]
    assert set(_prompts(storage)) == {f"v{run}" for run in range(MAX_SNAPSHOT_PARTS + 1)}


def test_a_corrupt_part_is_rebuilt_from_the_records_with_a_warning(tmp_path, caplog):
    out = tmp_path / "out"
    storage = open_storage(str(out))
    for i in range(4):
        _commit(storage, f"v{i}")
    update_snapshot(storage, "r1")
    (out / "records.parquet" / "part-r1.parquet").write_bytes(b"PAR1 not really")
    with caplog.at_level(logging.WARNING, logger="hyca_batch.records"):
        assert set(_prompts(storage)) == {f"v{i}" for i in range(4)}
    assert "records/ is read instead" in caplog.text
    _commit(storage, "v4")
    assert update_snapshot(storage, "r2") == 5  # rebuilt: every record, in one new part
    assert _parts(storage) == ["part-r2.parquet"]
    assert set(_prompts(storage)) == {f"v{i}" for i in range(5)}


def test_an_extra_column_whose_type_changed_is_read_as_text(tmp_path, caplog):
    storage = open_storage(str(tmp_path / "out"))
    _commit(storage, "a", tag="x")
    update_snapshot(storage, "r1")
    write_record(storage, {"id": "b", "status": "done"}, pa.schema([("tag", pa.int64())]), {"tag": 7})
    with caplog.at_level(logging.WARNING, logger="hyca_batch.records"):
        table = read_records(storage)
        update_snapshot(storage, "r2")
    assert dict(zip(table.column("id").to_pylist(), table.column("tag").to_pylist())) == {"a": "x", "b": "7"}
    assert "read as text" in caplog.text
    assert set(_prompts(storage)) == {"a", "b"}


def test_an_earlier_versions_single_file_is_replaced(tmp_path):
    out = tmp_path / "out"
    storage = open_storage(str(out))
    for i in range(2):
        _commit(storage, f"v{i}")
    pq.write_table(read_records(storage), out / LEGACY_SNAPSHOT_KEY)  # as version 1 wrote it
    assert set(_prompts(storage)) == {"v0", "v1"}
    update_snapshot(storage, "r1")
    assert (out / "records.parquet").is_dir() and _parts(storage) == ["part-r1.parquet"]
    assert set(_prompts(storage)) == {"v0", "v1"}


@pytest.mark.parametrize("rows", [0, 1])
def test_an_empty_output_has_no_snapshot(tmp_path, rows):
    storage = open_storage(str(tmp_path / "out"))
    for i in range(rows):
        _commit(storage, f"v{i}")
    assert update_snapshot(storage, "r1") == rows
    assert _parts(storage) == (["part-r1.parquet"] if rows else [])
    assert read_records(storage).num_rows == rows
