"""A local S3 endpoint for development and tests: moto's server mode, a real HTTP S3 API on 127.0.0.1.

    python infra/local_s3.py [--port 9000] [--bucket hyca-demo ...]

It prints the endpoint and the environment to use, then serves until interrupted. Point the job at it
exactly as at AWS: ``--out s3://hyca-demo/run1 --s3-endpoint-url http://127.0.0.1:9000`` (or
``AWS_ENDPOINT_URL_S3``) with any access key. State lives in memory and is gone when it stops.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0: any free port")
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket (repeatable)")
    args = parser.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer

    port = args.port or free_port()
    server = ThreadedMotoServer(ip_address=args.host, port=port, verbose=False)
    server.start()
    endpoint = f"http://{args.host}:{port}"
    for var, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(var, value)
    client = boto3.client("s3", endpoint_url=endpoint)
    for bucket in args.bucket:
        client.create_bucket(Bucket=bucket)
    print(f"endpoint {endpoint}", flush=True)
    print(
        f"  export AWS_ENDPOINT_URL_S3={endpoint} AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "
        f"AWS_DEFAULT_REGION=us-east-1",
        flush=True,
    )
    if args.bucket:
        print(f"  buckets: {', '.join(args.bucket)}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    server.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
