"""Write the report: one self-contained HTML page (figures inlined), ``summary.csv`` and ``summary.parquet``."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import jinja2
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from hyca_batch import __version__
from hyca_batch.records import utcnow
from hyca_batch.report import plots
from hyca_batch.report.costs import CATEGORIES, RunCosts, hours_unit, load_run, summary_table
from hyca_batch.report.format import fmt
from hyca_batch.report.prices import PriceTable
from hyca_batch.storage import open_storage

#: The "at a glance" rows: summary field, label, format.
HEADLINE = [
    ("videos", "videos", "int"),
    ("failed", "failed", "int"),
    ("rejected", "rejected (bad input)", "int"),
    ("model", "model", "text"),
    ("device", "device", "text"),
    ("devices", "devices reserved", "num"),
    ("cache_mode", "cache", "text"),
    ("wall_s", "wall time", "duration"),
    ("device_hours", "device-hours", "hours"),
    ("usd_per_device_hour", "USD per device-hour", "num"),
    ("bill_usd", "bill", "usd"),
    ("cost_per_video_usd", "cost per video", "usd"),
    ("cost_per_video_second_usd", "cost per second of video", "usd"),
    ("videos_per_device_hour", "videos per device-hour", "num"),
    ("video_seconds", "seconds of video generated", "num"),
    ("mean_total_s", "mean seconds per video", "num"),
    ("mean_speedup_estimate", "mean speedup (estimated)", "x"),
    ("mean_measured_speedup", "mean speedup (measured against uncached)", "x"),
    ("mean_psnr", "mean PSNR against uncached", "db"),
    ("uncached_estimate_usd", "estimated bill uncached", "usd"),
    ("saved_usd", "saved by the cache", "usd"),
]

MAX_FAILURES = 50


@dataclass
class Report:
    runs: list[RunCosts]
    html: str
    out: str
    files: list[str]


def build_report(
    uris: list[str], out: str, prices: PriceTable | None = None, *, s3_endpoint_url: str | None = None
) -> Report:
    prices = prices or PriceTable.build()
    labels = _labels(uris)
    runs = [load_run(u, prices, label=label, s3_endpoint_url=s3_endpoint_url) for u, label in zip(uris, labels)]
    figures = {k: base64.b64encode(v).decode() for k, v in plots.all_figures(runs).items()}
    used = sorted({prices.lookup(inv.device_name) for r in runs for inv in r.invocations if inv.replicas})
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hyca_batch.report", "."), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters["fmt"] = fmt
    html = env.get_template("report.html.j2").render(
        runs=runs,
        figures=figures,
        headline=HEADLINE,
        categories=CATEGORIES,
        prices=used,
        overridden=prices.overridden,
        max_failures=MAX_FAILURES,
        version=__version__,
        unit=hours_unit(runs),
        generated_at=utcnow().strftime("%Y-%m-%d %H:%M UTC"),
    )
    storage = open_storage(out, s3_endpoint_url=s3_endpoint_url)
    table = summary_table(runs)
    csv, parquet = io.BytesIO(), io.BytesIO()
    pacsv.write_csv(table, csv)
    pq.write_table(table, parquet)
    files = [
        storage.put_bytes(key, body, overwrite=True)
        for key, body in (
            ("report.html", html.encode()),
            ("summary.csv", csv.getvalue()),
            ("summary.parquet", parquet.getvalue()),
        )
    ]
    return Report(runs, html, storage.uri, files)


def _labels(uris: list[str]) -> list[str]:
    """Each run's last path component; the whole URI where two would read the same."""
    names = [u.rstrip("/").rsplit("/", 1)[-1] or u for u in uris]
    return [n if names.count(n) == 1 else u for n, u in zip(names, uris)]
