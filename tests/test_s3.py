"""S3 storage against a real HTTP S3 endpoint (moto's server, infra/local_s3.py), through boto3 and its URL."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from hyca_batch.storage import AlreadyExists, StorageError, open_storage
from hyca_batch.storage.s3 import S3Storage


@pytest.fixture
def store(s3) -> S3Storage:
    return open_storage(f"s3://{s3.new_bucket()}/runs/demo", s3_endpoint_url=s3.endpoint)


def test_put_read_exists_list_uri(store, s3):
    assert isinstance(store, S3Storage) and store.uri.endswith("/runs/demo")
    uri = store.put_bytes("videos/abc.mp4", b"video")
    assert uri == f"{store.uri}/videos/abc.mp4"
    store.put_bytes("records/abc.parquet", b"rec")
    store.put_bytes("run.json", b"{}")
    assert store.read_bytes("videos/abc.mp4") == b"video"
    assert store.exists("videos/abc.mp4") and not store.exists("videos/missing.mp4") and not store.exists("videos")
    assert store.list() == ["records/abc.parquet", "run.json", "videos/abc.mp4"]
    assert store.list("videos/") == ["videos/abc.mp4"] and store.list("errors/") == []
    # The objects are where any S3 client would look for them.
    listed = s3.client().list_objects_v2(Bucket=store.bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == [
        "runs/demo/records/abc.parquet",
        "runs/demo/run.json",
        "runs/demo/videos/abc.mp4",
    ]
    with pytest.raises(FileNotFoundError, match="errors/x.json"):
        store.read_bytes("errors/x.json")
    with pytest.raises(ValueError, match="key"):
        store.put_bytes("../escape", b"x")


def test_exclusive_put_is_a_conditional_write(store):
    store.put_bytes("records/a.parquet", b"first")
    with pytest.raises(AlreadyExists, match=r"records/a\.parquet"):
        store.put_bytes("records/a.parquet", b"second")
    assert store.read_bytes("records/a.parquet") == b"first"
    store.put_bytes("records/a.parquet", b"third", overwrite=True)
    assert store.read_bytes("records/a.parquet") == b"third"


def test_concurrent_exclusive_puts_have_one_winner(store, race_exclusive_puts):
    race_exclusive_puts(store, "records/race.parquet", writers=6)


def test_large_objects_go_up_in_parts_with_the_condition_on_completion(store, monkeypatch):
    monkeypatch.setattr(S3Storage, "multipart_threshold", 1024)
    monkeypatch.setattr("hyca_batch.storage.s3.PART_SIZE", 5 * 1024 * 1024)  # S3's minimum part size
    data = bytes(range(256)) * (6 * 1024 * 1024 // 256 + 7)  # two parts
    store.put_bytes("videos/big.mp4", data)
    assert store.read_bytes("videos/big.mp4") == data
    head = store.client.head_object(Bucket=store.bucket, Key="runs/demo/videos/big.mp4")
    assert head["ETag"].strip('"').endswith("-2")  # a multipart object
    with pytest.raises(AlreadyExists):
        store.put_bytes("videos/big.mp4", data[::-1])
    assert store.read_bytes("videos/big.mp4") == data
    assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []  # aborted


def test_a_missing_bucket_is_a_clear_error(s3):
    with pytest.raises(StorageError, match=r"bucket 'no-such-bucket-here' does not exist at http://127\.0\.0\.1"):
        open_storage("s3://no-such-bucket-here/run", s3_endpoint_url=s3.endpoint)


def test_no_credentials_is_a_clear_error(s3, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError, match="no AWS credentials"):
        open_storage(f"s3://{s3.new_bucket()}/run", s3_endpoint_url=s3.endpoint)


def test_an_unreachable_endpoint_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageError, match=r"cannot reach s3://b/run at http://127\.0\.0\.1:9"):
        open_storage("s3://b/run", s3_endpoint_url="http://127.0.0.1:9")


def test_the_endpoint_comes_from_the_environment_too(s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)
    store = open_storage(f"s3://{s3.new_bucket()}")
    store.put_bytes("a.txt", b"a")
    assert store.client.meta.endpoint_url == s3.endpoint and store.list() == ["a.txt"]


def test_arrow_reads_parquet_written_through_put(store):
    for i in range(3):
        buf = pa.BufferOutputStream()
        pq.write_table(pa.table({"i": [i]}), buf)
        store.put_bytes(f"records/{i}.parquet", buf.getvalue().to_pybytes())
    fs, base = store.arrow_filesystem()
    table = ds.dataset(f"{base}/records", filesystem=fs, format="parquet").to_table()
    assert sorted(table.column("i").to_pylist()) == [0, 1, 2]


def test_throttling_and_5xx_are_retried(s3, flaky_s3):
    bucket = s3.new_bucket()
    store = open_storage(f"s3://{bucket}/run", s3_endpoint_url=flaky_s3.endpoint)
    flaky_s3.fail_for(2.0, after="/videos/")
    store.put_bytes("videos/a.mp4", b"a")  # 503s for two seconds, then through
    assert flaky_s3.failed >= 1
    assert store.read_bytes("videos/a.mp4") == b"a"
