"""The results written down: the dated markdown table (printed, and appended to RESULTS.md under its header) and
the JSON, rewritten atomically after every configuration so that a run cut short keeps what it measured. A
HunyuanVideo 1.5 table says so in its title, and counts passes (two per step under classifier-free guidance)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from benchmarks.lib.gpu_speed.device import GIB
from benchmarks.lib.gpu_speed.model import FAMILY_NAMES, HUNYUANVIDEO
from benchmarks.lib.gpu_speed.schedule import size_name
from benchmarks.lib.tables import fmt

RESULTS_MD_HEADER = """# GPU benchmark results

What `benchmarks/gpu_speed.py` measured on real hardware: HunyuanVideo's transformer in its real
configuration (12.8 B parameters, random bf16 weights, so speed and memory are real and the videos are not),
per full and per forecast transformer pass for the cache modes `none`, `taylorseer` (N=5) and `hyca` (N=6),
the 50-step denoise loop's speedup over uncached, peak GPU memory, and the VAE's tiled decode, at 544x960 and
720x1280 with 129 frames. Each run appends one dated table, headed with the GPU's name, the torch version and
the attention kernel; the JSON of the last run is `benchmarks/results/gpu_speed.json`. The 50-step loop is
"measured" when every step ran and "derived" when the first steps of the same schedule were timed and the
rest computed from them (see the script's docstring). Produce a table with `bash benchmarks/gpu_speed.sh` on
a GPU machine (outputs under `$OUT`), or `python benchmarks/gpu_speed.py --help`. `--scaled-down` runs print
their table but do not append here unless `--results-md` is given.
"""


def params_text(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def gib_text(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def markdown(result: dict) -> str:
    env = result["environment"]
    attn = result.get("attention") or {}
    maps = "; ".join(f"{g}: {c['how']}" for g, c in (result.get("calibration") or {}).items()) or "-"
    family = result.get("family", HUNYUANVIDEO)
    title = f"## {result['date']} - {env['device']}"
    if family != HUNYUANVIDEO:
        title += f" - {FAMILY_NAMES[family]} ({family})"
    if result["scaled_down"]:
        tiny = "tiny" if family == HUNYUANVIDEO else result["model"].get("configuration", "tiny")
        title += f" (scaled-down smoke run on the {tiny} config, not a benchmark)"
    steps = result["steps"]
    text = f"text {result['text_tokens']} tokens ({result['text_valid']} unmasked)"
    passes = f"({steps} steps)"
    unit = "step"
    if family != HUNYUANVIDEO:
        per_step = sorted({r["passes_per_step"] for r in result["rows"] if "passes_per_step" in r}) or ["?"]
        per_step_text = "/".join(map(str, per_step))
        text = (
            f"text: Qwen {result['text_tokens']} tokens ({result['text_valid']} unmasked), ByT5 256 (masked), 729 "
            f"image positions (masked, text-to-video), {result.get('block_text_tokens')} in all per block; "
            f"classifier-free guidance 6.0, {per_step_text} transformer passes per step"
        )
        passes = f"({steps} steps x {per_step_text} passes)"
        unit = "pass"
    lines = [
        title,
        "",
        f"torch {env['torch']} (CUDA {env['cuda']}), diffusers {env['diffusers']}, flash-attn "
        f"{env['flash_attn'] or 'not installed'}; attention: SDPA {attn.get('sdpa_kernel', '?')} kernel, mask "
        f"{attn.get('mask')}; transformer {params_text(result['model']['parameters'])} parameters, "
        f"{result['dtype']}, random weights; {text}; "
        f"{steps} steps. "
        f"HyCa map: {maps}.",
        "",
        f"| size | cache | N | granularity | status | full {unit} s | skipped {unit} s | forecast share of skipped "
        f"| full / skipped passes {passes} | loop s | loop | speedup | peak GiB | cache GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        ok = r["status"] == "ok"
        loop_s = (r["loop_s_measured"] or r["loop_s_derived"]) if ok else None
        speed = (r.get("speedup_measured") or r.get("speedup_derived")) if ok else None
        cache = r["cache_bytes"] if ok else r.get("predicted_cache_bytes")
        cache_text = gib_text(cache) + ("" if ok or not cache else " needed")
        lines.append(
            f"| {size_name(r['size'])} | {r['mode']} | {r['interval'] or '-'} | {r.get('granularity') or '-'} "
            f"| {r['status']} | {fmt(r.get('full_step_s'))} | {fmt(r.get('skipped_step_s'))} "
            f"| {_share(r.get('forecast_share'))} | {r['schedule_full_passes']} / {r['schedule_skipped_passes']} "
            f"| {fmt(loop_s, '.4g')} | {r['loop'] if ok else '-'} | {_ratio(speed)} "
            f"| {gib_text(r['peak_memory_bytes'])} | {cache_text} |"
        )
    if result.get("vae"):
        lines += ["", "| size | VAE tiled decode s | status | peak GiB |", "| --- | --- | --- | --- |"]
        for v in result["vae"]:
            lines.append(
                f"| {size_name(v['size'])} | {fmt(v.get('decode_s'))} | {v['status']} "
                f"| {gib_text(v['peak_memory_bytes'])} |"
            )
    if result.get("sp"):
        lines += [
            "",
            "| sp | ulysses x ring | size | cache | status | full step s | vs sp 1 | skipped step s "
            "| attention calls in skipped passes | peak GiB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in result["sp"]:
            if "size" not in r:
                lines.append(f"| {r['sp']} | - | - | - | {r['status']}: {r.get('error', '')} | - | - | - | - | - |")
                continue
            lines.append(
                f"| {r['sp']} | {r.get('ulysses', '-')} x {r.get('ring', '-')} | {size_name(r['size'])} | {r['mode']} "
                f"| {r['status']} | {fmt(r.get('full_step_s'))} | {_ratio(r.get('scaling'))} "
                f"| {fmt(r.get('skipped_step_s'))} | {r.get('attention_calls_in_skipped_passes', '-')} "
                f"| {gib_text(r.get('peak_memory_bytes'))} |"
            )
    if result.get("skipped"):
        lines += ["", "Not run: " + "; ".join(f"{s['what']} ({s['reason']})" for s in result["skipped"]) + "."]
    return "\n".join(lines) + "\n"


def append_markdown(path: Path, table: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else RESULTS_MD_HEADER
    path.write_text(text.rstrip("\n") + "\n\n" + table)


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    os.replace(tmp, path)
