"""S3-compatible storage behind the ``Storage`` interface (AWS S3, MinIO, Ceph RGW, R2), through boto3.

Everything a user already configures for the AWS CLI applies: credentials, region, endpoint
(``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``) and addressing style come from the standard environment
variables and ``~/.aws/config``; ``--s3-endpoint-url`` overrides the endpoint.

The storage promises hold on S3 as they do on disk: an object appears whole or not at all (S3 puts are
atomic), and an exclusive put is a conditional write (``If-None-Match: *``), so of racing writers exactly
one wins and a 412 means "already there". Large objects go up in parts with the condition on the
completion. Throttling, 5xx and dropped connections are retried with backoff (botocore's standard mode).
"""

from __future__ import annotations

import os
import time
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from hyca_batch.storage.base import LISTING_SCHEMA, AlreadyExists, Storage, StorageError, validate_key

#: Attempts per request (botocore standard retry mode: exponential backoff with jitter, at most 20 s
#: apart), unless AWS_MAX_ATTEMPTS says otherwise. Ten ride out an endpoint that fails for a minute.
DEFAULT_MAX_ATTEMPTS = 10
PART_SIZE = 16 * 1024 * 1024


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _status(exc: Exception) -> int:
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class S3Storage(Storage):
    """``s3://bucket/prefix``: keys live under ``prefix/`` in ``bucket``."""

    multipart_threshold = 64 * 1024 * 1024  # bytes; larger objects go up in PART_SIZE parts

    def __init__(self, uri: str, *, endpoint_url: str | None = None, check: bool = True):
        import boto3
        from botocore.config import Config

        parsed = urlparse(uri)
        if not parsed.netloc:
            raise StorageError(f"{uri!r} names no bucket: use s3://bucket/prefix")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.endpoint_url = endpoint_url
        retries = {"mode": os.environ.get("AWS_RETRY_MODE", "standard")}
        if "AWS_MAX_ATTEMPTS" not in os.environ:
            retries["max_attempts"] = DEFAULT_MAX_ATTEMPTS
        self.session = boto3.session.Session()
        self.client = self.session.client("s3", endpoint_url=endpoint_url, config=Config(retries=retries))
        if check:
            self.check()

    # -- helpers ----------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self) -> str:
        return f" at {self.client.meta.endpoint_url}"

    def _error(self, action: str, uri: str, exc: Exception) -> StorageError:
        return StorageError(f"cannot {action} {uri}{self._where()}: {exc}")

    def check(self) -> None:
        """Fail now, with the fix in the message, if the bucket cannot be used."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError as exc:
            raise StorageError(
                f"no AWS credentials for {self.uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                "AWS_PROFILE, or run on a machine with an instance role"
            ) from exc
        except ClientError as exc:
            status = _status(exc)
            if status == 404 or _code(exc) in ("NoSuchBucket", "404"):
                raise StorageError(
                    f"bucket {self.bucket!r} does not exist{self._where()}: create it, or fix the URI {self.uri}"
                ) from exc
            if status in (401, 403):
                raise StorageError(
                    f"access to bucket {self.bucket!r} denied{self._where()} ({_code(exc) or status}): "
                    "check the credentials (AWS_ACCESS_KEY_ID/AWS_PROFILE) and the bucket's policy"
                ) from exc
            raise self._error("use", self.uri, exc) from exc
        except BotoCoreError as exc:  # endpoint unreachable, bad endpoint URL, ...
            raise self._error("reach", self.uri, exc) from exc

    # -- Storage ----------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, *, overwrite: bool = False) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        uri, s3_key = self.uri_for(key), self._key(key)
        condition = {} if overwrite else {"IfNoneMatch": "*"}
        for attempt in range(5):
            try:
                if len(data) > self.multipart_threshold:
                    self._put_multipart(s3_key, data, condition)
                else:
                    self.client.put_object(Bucket=self.bucket, Key=s3_key, Body=data, **condition)
                return uri
            except ClientError as exc:
                if _status(exc) == 412 or _code(exc) == "PreconditionFailed":
                    raise AlreadyExists(f"{uri} already exists (pass overwrite=True to replace it)") from exc
                if _status(exc) == 409 and attempt < 4:  # a concurrent conditional write: ask again
                    time.sleep(0.5 * (attempt + 1))
                    continue
                raise self._error("write", uri, exc) from exc
            except BotoCoreError as exc:
                raise self._error("write", uri, exc) from exc
        raise StorageError(f"cannot write {uri}: conflicting concurrent writes")

    def _put_multipart(self, s3_key: str, data: bytes, condition: dict) -> None:
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=s3_key)["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, len(data), PART_SIZE), start=1):
                part = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=s3_key,
                    UploadId=upload,
                    PartNumber=number,
                    Body=data[start : start + PART_SIZE],
                )
                parts.append({"ETag": part["ETag"], "PartNumber": number})
            # The condition is checked when the object would appear: at completion.
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=s3_key, UploadId=upload, MultipartUpload={"Parts": parts}, **condition
            )
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=s3_key, UploadId=upload)
            except Exception:
                pass  # an unfinished upload is invisible; a bucket lifecycle rule reaps it
            raise

    def read_bytes(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        uri = self.uri_for(key)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            if _status(exc) == 404 or _code(exc) in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"no object at {uri}") from exc
            raise self._error("read", uri, exc) from exc
        except BotoCoreError as exc:
            raise self._error("read", uri, exc) from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if _status(exc) == 404:
                return False
            raise self._error("check", self.uri_for(key), exc) from exc
        except BotoCoreError as exc:
            raise self._error("check", self.uri_for(key), exc) from exc

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))  # a missing key is not an error
        except (ClientError, BotoCoreError) as exc:
            raise self._error("delete", self.uri_for(key), exc) from exc

    def listing(self, prefix: str = "") -> pa.Table:
        from botocore.exceptions import BotoCoreError, ClientError

        if prefix:
            validate_key(prefix.rstrip("/") or "/")
        root = f"{self.prefix}/" if self.prefix else ""
        pages = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root + prefix):
                items = page.get("Contents", [])  # at most 1000 a page: the page, not the listing, is Python
                keys = pa.array([item["Key"] for item in items], pa.string())
                pages.append(
                    pa.table(
                        {
                            "key": pc.utf8_slice_codeunits(keys, len(root)) if root else keys,
                            "modified": pa.array([item["LastModified"].timestamp() for item in items], pa.float64()),
                        },
                        schema=LISTING_SCHEMA,
                    )
                )
        except (ClientError, BotoCoreError) as exc:
            raise self._error("list", self.uri_for(prefix) if prefix else self.uri, exc) from exc
        return pa.concat_tables(pages).sort_by("key") if pages else LISTING_SCHEMA.empty_table()

    def arrow_filesystem(self) -> tuple[pafs.FileSystem, str]:
        """pyarrow's S3 filesystem with boto3's resolved endpoint, region and credentials."""
        credentials = self.session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
        endpoint = urlparse(self.client.meta.endpoint_url)
        custom = self.endpoint_url is not None or not endpoint.netloc.endswith("amazonaws.com")
        fs = pafs.S3FileSystem(
            access_key=frozen.access_key if frozen else None,
            secret_key=frozen.secret_key if frozen else None,
            session_token=frozen.token if frozen else None,
            region=self.client.meta.region_name,
            endpoint_override=endpoint.netloc if custom else None,
            scheme=endpoint.scheme or "https",
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=DEFAULT_MAX_ATTEMPTS),
        )
        return fs, f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
