"""The configuration: one default per knob, options flattened and read back, the command line derived from it."""

from __future__ import annotations

import click
import pytest
import typer

from hyca_batch.cli import app
from hyca_batch.config import CacheConfig, JobConfig, ParallelConfig
from hyca_batch.types import GENERATION_FIELDS


def _run_command() -> click.Command:
    group = typer.main.get_command(app)
    return group.commands["run"]


def test_options_round_trip_and_name_every_setting():
    config = JobConfig.from_options(
        manifests=["a.parquet"],
        out="out",
        cache="hyca",
        interval=3,
        sp=2,
        sp_timeout_s=60.0,
        replicas=2,
        num_inference_steps=4,
        clusters=3,
    )
    assert config.cache == CacheConfig(mode="hyca", interval=3)
    assert config.parallel == ParallelConfig(sp=2, timeout_s=60.0)
    assert config.resources.replicas == 2 and config.calibration.clusters == 3
    assert config.generation == {"num_inference_steps": 4}
    options = config.options()
    assert set(GENERATION_FIELDS) <= set(options) and options["cache"] == "hyca" and options["sp"] == 2
    assert JobConfig.from_options(**options) == config
    with pytest.raises(TypeError, match="unknown job options.*intervall"):
        JobConfig.from_options(manifests=["a"], out="o", intervall=3)
    with pytest.raises(ValueError, match="--cache 'magic'"):
        JobConfig.from_options(manifests=["a"], out="o", cache="magic")


def test_every_job_option_is_a_run_flag_with_the_config_default():
    """The command line is derived from the config: the same names, and the defaults written once."""
    params = {p.name: p for p in _run_command().params}
    defaults = JobConfig(manifests=("a",), out="o").options()
    for name, default in defaults.items():
        assert name in params, f"{name} is a job option but not a `run` flag"
        if name not in ("manifests", "out"):
            assert params[name].default == default, name
    # The ones about the invocation, not the job.
    assert set(params) - set(defaults) == {"force", "strict", "dry", "plan_json"}
    assert "--steps" in params["num_inference_steps"].opts and "--sp-timeout" in params["sp_timeout_s"].opts
