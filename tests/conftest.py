"""Shared fixtures: one embedded Ray per test module, kept small for a 2-core machine."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(
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
