"""``hyca-batch``: ``commands`` (run, calibrate, report, demo) and ``options`` (derived from the config)."""

from hyca_batch.cli.commands import app, main

__all__ = ["app", "main"]
