"""Manifest validation: each bad input gives its error naming file, row and field; good rows survive."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hyca_batch.manifest import ManifestError, default_id, default_seed, expand_inputs, read_manifest
from hyca_batch.types import GenerationDefaults

DEFAULTS = GenerationDefaults(height=64, width=64, num_frames=9, num_inference_steps=4, guidance_scale=6.0, fps=8)


def write(path, columns: dict, schema: pa.Schema | None = None) -> str:
    pq.write_table(pa.table(columns, schema=schema), path)
    return str(path)


def errors_by_row(manifest):
    return {(os.path.basename(e.file), e.row): (e.field, e.message) for e in manifest.rejected}


def test_defaults_ids_and_extra_columns(tmp_path):
    path = write(
        tmp_path / "m.parquet",
        {
            "prompt": ["a red circle", "a blue square"],
            "height": pa.array([None, 128], type=pa.int64()),
            "shard": ["s0", "s1"],
            "score": [0.5, 0.25],
        },
    )
    m = read_manifest([path], DEFAULTS)
    assert m.rejected == []
    rows = m.requests.to_pylist()
    assert [r["height"] for r in rows] == [64, 128]
    assert rows[0]["num_frames"] == 9 and rows[0]["fps"] == 8
    assert rows[0]["id"] != rows[1]["id"]
    assert rows[0]["seed"] == default_seed(rows[0]["id"])
    # Carried unchanged, with their types.
    assert [r["shard"] for r in rows] == ["s0", "s1"]
    assert m.extra_schema.field("score").type == pa.float64()
    # Stable: the same file read again gives the same ids and seeds.
    again = read_manifest([path], DEFAULTS).requests.to_pylist()
    assert [(r["id"], r["seed"]) for r in again] == [(r["id"], r["seed"]) for r in rows]


def test_id_depends_on_generation_parameters():
    base = {
        "prompt": "p",
        "seed": None,
        "height": 64,
        "width": 64,
        "num_frames": 9,
        "num_inference_steps": 4,
        "guidance_scale": 6.0,
        "fps": 8,
    }
    assert default_id(base, False) == default_id(dict(base), False)
    assert default_id(base, False) != default_id({**base, "height": 128}, False)
    assert default_id({**base, "seed": 1}, True) != default_id({**base, "seed": 2}, True)


def test_bad_rows_become_row_errors_and_good_rows_remain(tmp_path):
    path = write(
        tmp_path / "bad.parquet",
        {
            "prompt": [
                "ok one",
                "",
                None,
                "x" * 5000,
                "ok two",
                "bad size",
                "bad frames",
                "neg seed",
                "frac seed",
                "bad id",
                "ok three",
                "bad steps",
            ],
            "seed": pa.array([1, 2, 3, 4, 5, 6, 7, -1, 1.5, 10, 11, 12], type=pa.float64()),
            "height": pa.array([None, None, None, None, None, 60, None, None, None, None, None, None], type=pa.int64()),
            "num_frames": pa.array([None] * 6 + [8] + [None] * 5, type=pa.int64()),
            "num_inference_steps": pa.array([None] * 11 + [0], type=pa.int64()),
            "id": [None, None, None, None, None, None, None, None, None, "../escape", None, None],
        },
    )
    m = read_manifest([path], DEFAULTS)
    assert [r["prompt"] for r in m.requests.to_pylist()] == ["ok one", "ok two", "ok three"]
    errs = errors_by_row(m)
    assert errs[("bad.parquet", 1)][0] == "prompt" and "empty" in errs[("bad.parquet", 1)][1]
    assert errs[("bad.parquet", 2)] == ("prompt", "is null")
    assert errs[("bad.parquet", 3)][0] == "prompt" and "5000 characters" in errs[("bad.parquet", 3)][1]
    assert errs[("bad.parquet", 5)][0] == "height" and "multiple of 16" in errs[("bad.parquet", 5)][1]
    assert errs[("bad.parquet", 6)][0] == "num_frames" and "4k+1" in errs[("bad.parquet", 6)][1]
    assert errs[("bad.parquet", 7)][0] == "seed"
    assert errs[("bad.parquet", 8)][0] == "seed" and "integer" in errs[("bad.parquet", 8)][1]
    assert errs[("bad.parquet", 9)][0] == "id"
    assert errs[("bad.parquet", 11)][0] == "num_inference_steps"
    assert len(m.rejected) == 9
    # The message a user sees names file, row and field.
    text = str(next(e for e in m.rejected if e.row == 5))
    assert text.startswith(path) and "row 5" in text and "height" in text
    # Float-typed integer columns (pandas writes them when there are nulls) are accepted when integral.
    assert [r["seed"] for r in m.requests.to_pylist()] == [1, 5, 11]


def test_non_utf8_binary_prompt_is_a_row_error(tmp_path):
    path = write(tmp_path / "b.parquet", {"prompt": pa.array([b"fine", b"\xff\xfe bad"], type=pa.binary())})
    m = read_manifest([path], DEFAULTS)
    assert [r["prompt"] for r in m.requests.to_pylist()] == ["fine"]
    assert m.rejected[0].row == 1 and "UTF-8" in m.rejected[0].message


def test_conflicting_duplicate_ids_are_rejected_everywhere_identical_rows_merge(tmp_path):
    a = write(tmp_path / "a.parquet", {"prompt": ["one", "two", "same"], "id": ["x", "y", None]})
    b = write(tmp_path / "b.parquet", {"prompt": ["other", "three", "same"], "id": ["x", "z", None]})
    m = read_manifest([a, b], DEFAULTS)
    rows = m.requests.to_pylist()
    assert [(r["id"], r["prompt"]) for r in rows if r["id"] in ("y", "z")] == [("y", "two"), ("z", "three")]
    assert [r["prompt"] for r in rows].count("same") == 1 and m.merged_duplicates == 1
    assert len(rows) == 3
    dup = [e for e in m.rejected if e.key == "x"]
    assert len(dup) == 2 and all("a.parquet row 0" in e.message and "b.parquet row 0" in e.message for e in dup)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: write(d / "np.parquet", {"text": ["hi"]}), "field 'prompt': required column is missing"),
        (lambda d: write(d / "ty.parquet", {"prompt": ["hi"], "height": ["64"]}), "field 'height': column type string"),
        (lambda d: write(d / "pt.parquet", {"prompt": [1, 2]}), "field 'prompt': column type int64"),
        (
            lambda d: write(d / "rs.parquet", {"prompt": ["hi"], "status": ["x"]}),
            "field 'status': the name is reserved",
        ),
        (
            lambda d: (d / "junk.parquet").write_bytes(b"this is not parquet") and str(d / "junk.parquet"),
            "not a readable Parquet file",
        ),
        (lambda d: str(d / "missing.parquet"), "no such file or directory"),
        (lambda d: str(d / "*.nothing"), "matches no file"),
    ],
)
def test_file_level_problems_raise_before_any_work(tmp_path, make, expected):
    good = write(tmp_path / "good.parquet", {"prompt": ["fine"]})
    bad = make(tmp_path)
    with pytest.raises(ManifestError) as info:
        read_manifest([good, bad], DEFAULTS)
    assert expected in str(info.value)
    assert os.path.basename(bad).split("*")[0] in str(info.value)


def test_every_file_level_problem_is_reported_at_once(tmp_path):
    a = write(tmp_path / "a.parquet", {"text": ["hi"]})
    b = write(tmp_path / "b.parquet", {"prompt": ["hi"], "fps": ["fast"]})
    with pytest.raises(ManifestError) as info:
        read_manifest([a, b], DEFAULTS)
    assert len(info.value.problems) == 2


def test_extra_column_type_conflict_across_files(tmp_path):
    a = write(tmp_path / "a.parquet", {"prompt": ["hi"], "tag": ["x"]})
    b = write(tmp_path / "b.parquet", {"prompt": ["ho"], "tag": [3]})
    with pytest.raises(ManifestError, match="field 'tag': type int64 differs from string"):
        read_manifest([a, b], DEFAULTS)


def test_inputs_file_list_directory_and_glob(tmp_path):
    d = tmp_path / "parts"
    (d / "sub").mkdir(parents=True)
    write(d / "p0.parquet", {"prompt": ["a"]})
    write(d / "sub" / "p1.parquet", {"prompt": ["b"]})
    (d / "notes.txt").write_text("ignored")
    assert len(expand_inputs([str(d)])) == 2
    assert len(expand_inputs([str(d / "*.parquet")])) == 1
    # A file named twice is read once.
    assert len(expand_inputs([str(d), str(d / "p0.parquet")])) == 2
    m = read_manifest([str(d)], DEFAULTS)
    assert sorted(r["prompt"] for r in m.requests.to_pylist()) == ["a", "b"]


def test_nan_too_large_case_colliding_and_newline_ids_are_rejected(tmp_path):
    """A NaN is no default, a size past --max-tokens is refused, ids equal but for case are one file on
    case-insensitive storage, and an id must match its pattern in full ("ok\\n" is no id)."""
    path = write(
        tmp_path / "m.parquet",
        {
            "prompt": ["fine", "nan guidance", "too big", "one", "two", "newline", "three"],
            "id": [None, None, None, "Clip-1", "clip-1", "ok\n", "CLIP-1"],
            "guidance_scale": pa.array([None, float("nan"), None, None, None, None, None], type=pa.float64()),
            "height": pa.array([None, None, 720, None, None, None, None], type=pa.int64()),
            "width": pa.array([None, None, 1296, None, None, None, None], type=pa.int64()),
            "num_frames": pa.array([None, None, 129, None, None, None, None], type=pa.int64()),
        },
    )
    m = read_manifest([path], DEFAULTS, max_tokens=118_800)
    assert [r["prompt"] for r in m.requests.to_pylist()] == ["fine"]
    errs = errors_by_row(m)
    assert errs[("m.parquet", 1)] == ("guidance_scale", "is NaN, which is no number (leave it null for the default)")
    assert errs[("m.parquet", 2)] == (
        "size",
        "720x1296x129 (HxWxF) is 120285 latent tokens; the limit is 118800 (--max-tokens)",
    )
    for row in (3, 4, 6):
        field, message = errs[("m.parquet", row)]
        assert field == "id" and "differs only by case" in message and "m.parquet row 3, " in message
    assert {e.key for e in m.rejected if e.row in (3, 4, 6)} == {"clip-1"}  # one error record for the group
    assert errs[("m.parquet", 5)][0] == "id" and "must match" in errs[("m.parquet", 5)][1]
    # Without a limit, the large row is fine; a column may not take the job's own name.
    assert "too big" in [r["prompt"] for r in read_manifest([path], DEFAULTS).requests.to_pylist()]
    clash = write(tmp_path / "c.parquet", {"prompt": ["hi"], "ordinal": [3]})
    with pytest.raises(ManifestError, match="field 'ordinal': the name is reserved"):
        read_manifest([clash], DEFAULTS)
