"""Cost per video: ``hyca-batch report RUN_URI... --out DIR`` reads runs' outputs and writes what they cost.

``costs`` turns an output into a bill and its breakdown, ``plots`` draws it, ``page`` writes the one-file
HTML report beside ``summary.csv`` and ``summary.parquet``.
"""

from hyca_batch.report.costs import CATEGORIES, SUMMARY_SCHEMA, RunCosts, load_run, summary_table
from hyca_batch.report.page import Report, build_report
from hyca_batch.report.prices import DEFAULT_PRICES, PriceError, PriceTable

__all__ = [
    "CATEGORIES",
    "DEFAULT_PRICES",
    "SUMMARY_SCHEMA",
    "PriceError",
    "PriceTable",
    "Report",
    "RunCosts",
    "build_report",
    "load_run",
    "summary_table",
]
