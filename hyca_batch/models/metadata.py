"""``hyca_batch.json``: what a diffusers model directory says about itself beyond diffusers' files.

A directory passed by path should run at sizes it was built for (a 64x64 tiny model must not get
HunyuanVideo's 720p defaults), and the job driver decides sizes before any weights are loaded, so the
defaults live in a small JSON file next to model_index.json rather than in the weights.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from hyca_batch.types import GenerationDefaults

MODEL_METADATA_FILENAME = "hyca_batch.json"
METADATA_FORMAT_VERSION = 1


def write_model_metadata(directory: str | Path, defaults: GenerationDefaults, **extra: Any) -> Path:
    """Write ``hyca_batch.json`` (generation defaults plus any JSON-able ``extra``) into ``directory``."""
    path = Path(directory) / MODEL_METADATA_FILENAME
    payload = {"format": METADATA_FORMAT_VERSION, "defaults": dataclasses.asdict(defaults), **extra}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_model_defaults(directory: str | Path) -> GenerationDefaults | None:
    """The generation defaults from ``directory``'s ``hyca_batch.json``; None when there is no such file.

    A file that exists but is unreadable or incomplete is an error, not a silent fallback: running a
    model at the wrong size wastes a whole batch.
    """
    path = Path(directory) / MODEL_METADATA_FILENAME
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read model metadata: {exc}") from exc
    raw = payload.get("defaults") if isinstance(payload, dict) else None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object with a 'defaults' object")
    fields = {f.name: f.type for f in dataclasses.fields(GenerationDefaults)}
    missing = sorted(set(fields) - set(raw))
    unknown = sorted(set(raw) - set(fields))
    if missing or unknown:
        raise ValueError(f"{path}: 'defaults' has missing fields {missing} / unknown fields {unknown}")
    values: dict[str, Any] = {}
    for name in fields:
        value = raw[name]
        want_float = name == "guidance_scale"
        ok = isinstance(value, (int, float)) if want_float else isinstance(value, int)
        if isinstance(value, bool) or not ok:
            kind = "a number" if want_float else "an integer"
            raise ValueError(f"{path}: defaults.{name} must be {kind}, got {value!r}")
        values[name] = float(value) if want_float else value
    return GenerationDefaults(**values)
