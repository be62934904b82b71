"""Shared fixtures: one embedded Ray per test module, kept small for a 2-core machine; one local S3 endpoint."""

from __future__ import annotations

import http.client
import http.server
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(
        address="local",  # a new cluster, even where `ray start` runs one (tests/test_ray_submit.py)
        num_cpus=2,
        object_store_memory=96 * 1024 * 1024,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def write_manifest(tmp_path):
    def write(name: str = "manifest.parquet", **columns) -> str:
        path = tmp_path / name
        pq.write_table(pa.table(columns), path)
        return str(path)

    return write


@pytest.fixture
def write_image(tmp_path):
    """``write_image(name, width, height, fmt="PNG", color=...)``: a real image file written by Pillow under
    ``tmp_path`` (subdirectories created); returns its path."""
    from PIL import Image

    def write(name: str, width: int = 64, height: int = 48, fmt: str = "PNG", color=(200, 40, 10)) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (width, height), color).save(path, fmt)
        return path

    return write


ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LocalS3:
    endpoint: str

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def new_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """infra/local_s3.py on a free port, reached only through its endpoint URL, as AWS would be.

    Credentials go into this process's environment (any value works for moto), so the Ray workers that the
    test modules start afterwards inherit them, as workers on a real cluster get them from theirs.
    """
    for var, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ[var] = value
    log = open(tmp_path_factory.mktemp("s3") / "moto.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "infra" / "local_s3.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("endpoint "), f"local S3 did not start: {line!r}"
    yield LocalS3(line.split()[1])
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@dataclass
class FlakyProxy:
    """An HTTP proxy in front of the S3 endpoint that answers 503 SlowDown while ``failing()`` says so.

    ``fail_for(seconds, after=...)`` arms an outage that starts at the first request whose path contains
    ``after`` and lasts ``seconds``: the endpoint "failing for a while" in the middle of a job. With
    ``ignore_conditions`` it drops ``If-None-Match``, as a store that ignores conditional writes would.
    """

    target: str
    endpoint: str = ""
    ignore_conditions: bool = False
    failed: int = 0
    forwarded: int = 0
    _window: tuple[float, str, float | None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_for(self, seconds: float, after: str = "") -> None:
        self._window = (seconds, after, None)

    def failing(self, path: str) -> bool:
        with self._lock:
            if self._window is None:
                return False
            seconds, after, start = self._window
            if start is None:
                if after not in path:
                    return False
                start = time.monotonic()
                self._window = (seconds, after, start)
            if time.monotonic() - start < seconds:
                self.failed += 1
                return True
            self._window = None
            return False


def _proxy_handler(proxy: FlakyProxy):
    host = proxy.target.split("//", 1)[1]

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if proxy.failing(self.path):
                payload = b"<Error><Code>SlowDown</Code><Message>injected outage</Message></Error>"
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                return
            conn = http.client.HTTPConnection(host, timeout=60)
            # Headers as sent (the Host the client signed for included): moto routes by path.
            headers = {
                k: v for k, v in self.headers.items() if not (proxy.ignore_conditions and k.lower() == "if-none-match")
            }
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            self.send_response(response.status)
            for k, v in response.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            # A HEAD answer has no body but the object's length.
            length = response.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()
            proxy.forwarded += 1

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    return Handler


@pytest.fixture
def flaky_s3(s3):
    proxy = FlakyProxy(target=s3.endpoint)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(proxy))
    proxy.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield proxy
    server.shutdown()


def _race_exclusive_puts(store, key: str, writers: int) -> None:
    """``writers`` threads put different bytes under ``key`` at once, exclusively: exactly one must win."""
    from hyca_batch.storage import AlreadyExists

    barrier, lock = threading.Barrier(writers), threading.Lock()
    won: list[bytes] = []
    lost: list[Exception] = []

    def put(i: int) -> None:
        payload = f"writer-{i}".encode() * 10_000
        barrier.wait()
        try:
            store.put_bytes(key, payload)
            with lock:
                won.append(payload)
        except AlreadyExists as e:
            with lock:
                lost.append(e)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == writers - 1
    assert store.read_bytes(key) == won[0]  # whole, and the winner's


@pytest.fixture
def race_exclusive_puts():
    return _race_exclusive_puts
