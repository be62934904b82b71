"""The cost report over real job outputs: its numbers recomputed here from the records, failures, two runs
side by side, the terminal table, and the HTML rendered by headless Chromium."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from faults import replica_fault_env
from PIL import Image
from typer.testing import CliRunner

from hyca_batch.cli import app
from hyca_batch.config import JobConfig
from hyca_batch.job import run_job
from hyca_batch.records import read_records, write_record
from hyca_batch.report import CATEGORIES, PriceError, PriceTable, build_report
from hyca_batch.storage import open_storage
from hyca_batch.storage.layout import SNAPSHOT

PRICE = 0.5  # USD per CPU core-hour in these tests, so that the amounts are not all zeros


@pytest.fixture(scope="module")
def runs(ray_session, tmp_path_factory):
    """Two real runs: one uncached with a failing and a rejected row, one cached with measured baselines."""
    root = tmp_path_factory.mktemp("report")
    manifest = root / "plain.parquet"
    pq.write_table(
        pa.table(
            {
                "prompt": ["a red circle moving left", "FAIL: will fail", "bad size"],
                "id": ["r1", "blocked", "bad"],
                "height": pa.array([None, None, 72], type=pa.int64()),
            }
        ),
        manifest,
    )
    plain = root / "plain"
    faults = root / "faults"
    faults.mkdir()
    (faults / "fail").touch()  # the "FAIL" row raises in its replica (tests/faults.py)
    env = replica_fault_env(faults)
    os.environ.update(env)
    try:
        summary = run_job(
            JobConfig.from_options(
                manifests=[str(manifest)], out=str(plain), progress=False, num_inference_steps=3, max_attempts=1
            )
        )
    finally:
        for name in env:
            os.environ.pop(name)
    assert (summary.done, summary.failed, summary.rejected) == (1, 1, 1)

    manifest = root / "cached.parquet"
    pq.write_table(pa.table({"prompt": ["a blue circle", "a red square"]}), manifest)
    cached = root / "cached"
    summary = run_job(
        JobConfig.from_options(
            manifests=[str(manifest)],
            out=str(cached),
            progress=False,
            num_inference_steps=6,
            cache="taylorseer",
            interval=3,
            baseline_every=2,
        )
    )
    assert summary.done == 2
    return plain, cached


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def expected_costs(out: Path, price: float) -> dict:
    """The bill and its parts, worked out here from the files the job wrote."""
    docs = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    records = read_records(open_storage(str(out))).to_pylist()
    cores = {d["run_id"]: d["reservation"]["cpus_per_replica"] for d in docs if "reservation" in d}
    bill = sum(
        d["reservation"]["replicas"]
        * d["reservation"]["cpus_per_replica"]
        * price
        / 3600
        * (_time(d["finished_at"]) - _time(d["started_at"])).total_seconds()
        for d in docs
        if "reservation" in d
    )
    tries = [
        a
        for e in (out / "errors").glob("*.json")
        for a in [json.loads(e.read_text())] + json.loads(e.read_text())["history"]
        if a["status"] == "failed"
    ]
    replicas = [json.loads(p.read_text()) for p in (out / "runs").glob("*/replica-*.json")]
    saved = 0.0
    for r in records:
        if r["cache_mode"] != "none":
            uncached = (
                r["baseline_denoise_s"]
                if r["baseline_denoise_s"] is not None
                else r["speedup_estimate"] * r["denoise_s"]
            )
            saved += (uncached - r["denoise_s"]) * cores[r["run_id"]] * price / 3600
    return {
        "bill": bill,
        "videos": len(records),
        "video_seconds": sum(r["num_frames"] / r["fps"] for r in records),
        "hours_denoise": sum(r["denoise_s"] * cores[r["run_id"]] for r in records) / 3600,
        "hours_decode": sum(r["decode_s"] * cores[r["run_id"]] for r in records) / 3600,
        "hours_failed_tries": sum(a["elapsed_s"] * cores[a["run_id"]] for a in tries) / 3600,
        "hours_model_loading": sum(r["load_s"] * cores[r["run_id"]] for r in replicas) / 3600,
        "saved": saved,
        "speedups": [r["speedup_estimate"] for r in records if r["cache_mode"] != "none"],
        "measured": [r["measured_speedup"] for r in records if r["measured_speedup"] is not None],
    }


def test_the_report_numbers_are_the_records_numbers(runs, tmp_path):
    plain, cached = runs
    report = build_report(
        [str(plain), str(cached)], str(tmp_path / "rep"), PriceTable.build(overrides=[f"cpu={PRICE}"])
    )
    rows = {r["run"]: r for r in pq.read_table(tmp_path / "rep" / "summary.parquet").to_pylist()}
    assert list(rows) == ["plain", "cached"]  # two runs, side by side, in the order given

    for name, out in (("plain", plain), ("cached", cached)):
        row, want = rows[name], expected_costs(out, PRICE)
        assert row["bill_usd"] == pytest.approx(want["bill"], rel=1e-9) and row["bill_usd"] > 0
        # Everything is charged: cost per video x videos is the bill, and the parts add up to the device-hours.
        assert row["cost_per_video_usd"] * row["videos"] == pytest.approx(row["bill_usd"], rel=1e-9)
        assert sum(row[f"hours_{c}"] for c in CATEGORIES) == pytest.approx(row["device_hours"], rel=1e-9)
        assert row["device_hours"] * row["usd_per_device_hour"] == pytest.approx(row["bill_usd"], rel=1e-9)
        assert row["hours_idle_startup"] >= 0 and row["hours_model_loading"] > 0
        for key in ("hours_denoise", "hours_decode", "hours_failed_tries", "hours_model_loading"):
            assert row[key] == pytest.approx(want[key], rel=1e-9, abs=1e-15), (name, key)
        assert row["videos"] == want["videos"]
        assert row["cost_per_video_second_usd"] == pytest.approx(row["bill_usd"] / want["video_seconds"], rel=1e-9)
        assert row["saved_usd"] == pytest.approx(want["saved"], rel=1e-9, abs=1e-15)
        assert row["uncached_estimate_usd"] == pytest.approx(row["bill_usd"] + row["saved_usd"], rel=1e-9)
        assert (row["device"], row["device_unit"], row["usd_per_device_hour"]) == ("cpu", "CPU core", PRICE)

    # The run with failures: the failed id's try is charged; the rejected row costs nothing but is listed.
    assert (rows["plain"]["videos"], rows["plain"]["failed"], rows["plain"]["rejected"]) == (1, 1, 1)
    assert rows["plain"]["hours_failed_tries"] > 0 and rows["plain"]["saved_usd"] == 0
    failures = {f["id"]: f for f in report.runs[0].failures}
    assert failures["blocked"]["status"] == "failed" and failures["blocked"]["attempts"] == 1
    assert failures["bad"]["status"] == "rejected" and "height" in failures["bad"]["message"]

    # The cached run: speedups from its records, the money saved against uncached from its baselines.
    want = expected_costs(cached, PRICE)
    assert rows["cached"]["mean_speedup_estimate"] == pytest.approx(sum(want["speedups"]) / 2, rel=1e-9)
    assert rows["cached"]["mean_measured_speedup"] == pytest.approx(sum(want["measured"]) / len(want["measured"]))
    assert len(want["measured"]) == 1 and rows["cached"]["saved_usd"] != 0
    assert (rows["cached"]["cache_mode"], rows["cached"]["cache_interval"]) == ("taylorseer", 3)

    # summary.csv holds the same rows as summary.parquet.
    csv = pacsv.read_csv(tmp_path / "rep" / "summary.csv").to_pylist()
    for got, row in zip(csv, rows.values()):
        assert got["run"] == row["run"] and got["bill_usd"] == pytest.approx(row["bill_usd"], rel=1e-9)


def test_a_driver_killed_mid_run_is_charged_up_to_its_last_heartbeat(runs, tmp_path):
    plain, _ = runs
    copy = shutil.copytree(plain, tmp_path / "killed")
    doc_path = next((copy / "runs").glob("*.json"))
    doc = json.loads(doc_path.read_text())
    full = build_report([str(copy)], str(tmp_path / "r1"), PriceTable.build()).runs[0].summary["bill_usd"]
    # As a killed driver leaves it: no finished_at, the last progress update as updated_at, status running.
    started = _time(doc["started_at"])
    half = (_time(doc["finished_at"]) - started) / 2
    last_video = max(r["finished_at"] for r in read_records(open_storage(str(copy))).to_pylist())
    doc.update(status="running", updated_at=(started + half).isoformat())
    del doc["finished_at"]
    doc_path.write_text(json.dumps(doc))
    killed = build_report([str(copy)], str(tmp_path / "r2"), PriceTable.build()).runs[0]
    end = max(started + half, last_video)  # never before its last committed video
    finished = _time(json.loads((plain / "runs" / doc_path.name).read_text())["finished_at"])
    assert killed.invocations[0].ended_at == end < finished
    share = (end - started).total_seconds() / (finished - started).total_seconds()
    assert killed.summary["bill_usd"] == pytest.approx(full * share, rel=1e-9)


def test_the_command_prints_a_table_and_writes_a_page_with_the_plots(runs, tmp_path):
    plain, cached = runs
    result = CliRunner().invoke(
        app, ["report", str(plain), str(cached), "--out", str(tmp_path / "rep"), "--gpu-price", f"cpu={PRICE}"]
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"plain\s.*\s1\s.*\s1\s", result.output) and "cached" in result.output  # videos, failed
    assert "report.html" in result.output
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "blocked" in html and "rejected" in html and "taylorseer" in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 5  # cost per video, breakdown, savings, speedups, seconds per video
    for data in images:
        pixels = Image.open(io.BytesIO(base64.b64decode(data))).convert("L")
        assert pixels.size[0] > 400 and pixels.getextrema()[0] < 100  # drawn on, not a blank canvas

    bad = CliRunner().invoke(app, ["report", str(plain), "--out", str(tmp_path / "x"), "--gpu-price", "cpu=cheap"])
    assert bad.exit_code == 2 and "cpu=cheap" in bad.output
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "runs/" in missing.output


def test_chromium_renders_the_report_with_its_plots(runs, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip(
            "headless Chromium is not installed (Debian: apt-get install chromium; `make test` does this "
            "where it can), so the report was not rendered in a browser"
        )
    plain, cached = runs
    build_report([str(plain), str(cached)], str(tmp_path / "rep"), PriceTable.build())
    shot = tmp_path / "page.png"
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,2600",
            f"--screenshot={shot}",
            (tmp_path / "rep" / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), proc.stderr
    page = Image.open(shot).convert("RGB")
    assert page.size == (1200, 2600)
    # The plots' bars are drawn in matplotlib's tab10 blue and orange; a page whose images did not render
    # would hold only text and table lines.
    colors = page.getcolors(maxcolors=1 << 20)

    def near(rgb):
        return sum(n for n, c in colors if sum(abs(a - b) for a, b in zip(c, rgb)) < 30)

    assert near((31, 119, 180)) > 5000 and near((255, 127, 14)) > 5000


def test_a_snapshot_makes_records_fast_to_read_and_never_hides_one(runs, tmp_path):
    _, cached = runs
    copy = shutil.copytree(cached, tmp_path / "c")
    storage = open_storage(str(copy))
    assert [k.rsplit("/", 1)[-1][:5] for k in storage.list(SNAPSHOT)] == ["part-"]  # the job wrote it at its end
    before = read_records(storage)
    # A record committed after the snapshot (a concurrent or later job) is read from its own file.
    rec = dict(before.to_pylist()[0], id="later")
    write_record(storage, rec, pa.schema([]), {})
    # A record removed by hand is gone, even though the snapshot still has its row.
    (copy / "records" / f"{before.column('id')[1].as_py()}.parquet").unlink()
    after = read_records(storage)
    ids = after.column("id").to_pylist()
    assert sorted(ids) == sorted(set(before.column("id").to_pylist()) - {before.column("id")[1].as_py()} | {"later"})
    assert len(ids) == len(set(ids))


def test_prices_defaults_overrides_and_errors(tmp_path):
    table = PriceTable.build()
    assert table.lookup("NVIDIA H100 80GB HBM3") == ("H100", table.prices["H100"])
    assert table.lookup("NVIDIA H100 NVL")[0] == "H100 NVL"  # the longest matching name wins
    assert table.lookup("NVIDIA A100-SXM4-80GB")[0] == "A100"
    assert table.lookup("NVIDIA A100 80GB PCIe")[0] == "A100 80GB"
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"H100": 2.0, "RTX 6000 Ada": 1.1}))
    table = PriceTable.build(prices, ["h100=2.49"])
    assert table.lookup("NVIDIA RTX 6000 Ada Generation") == ("RTX 6000 Ada", 1.1)
    assert table.lookup("NVIDIA H100 80GB HBM3") == ("h100", 2.49)  # the command line beats the file, in any case
    with pytest.raises(PriceError, match="--gpu-price 'NVIDIA B40=USD_PER_HOUR'"):
        PriceTable.build().lookup("NVIDIA B40")
    with pytest.raises(PriceError, match="NAME=USD"):
        PriceTable.build(overrides=["H100"])
    with pytest.raises(PriceError, match=">= 0"):
        PriceTable.build(overrides=["H100=-1"])
    prices.write_text("[1, 2]")
    with pytest.raises(PriceError, match="JSON object"):
        PriceTable.build(prices)


def test_an_invocation_whose_replicas_never_started_is_still_charged(runs, tmp_path):
    plain, _ = runs
    copy = shutil.copytree(plain, tmp_path / "failed")
    doc = json.loads(next((copy / "runs").glob("*.json")).read_text())
    # As a run whose model failed to load leaves it: its reservation and times, no replica notes, no records.
    started = _time(doc["finished_at"]) + dt.timedelta(minutes=5)
    doc.update(
        run_id="20990101T000000Z-deadbeef",
        status="failed",
        error="the model could not be loaded",
        started_at=started.isoformat(),
        finished_at=(started + dt.timedelta(seconds=90)).isoformat(),
    )
    (copy / "runs" / f"{doc['run_id']}.json").write_text(json.dumps(doc))
    report = build_report([str(copy)], str(tmp_path / "rep"), PriceTable.build(overrides=[f"cpu={PRICE}"])).runs[0]
    failed = report.invocations[-1]
    assert failed.run_id == doc["run_id"] and failed.device_name == "cpu"  # priced as the output's other runs
    assert failed.bill_usd == pytest.approx(90 * PRICE / 3600) and failed.hours["idle_startup"] == failed.device_hours
    assert report.summary["bill_usd"] == pytest.approx(sum(i.bill_usd for i in report.invocations))
