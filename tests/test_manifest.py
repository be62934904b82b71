"""Manifest validation: each bad input gives its error naming file, row and field; good rows survive."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hyca_batch.images import ImageChanged, ImageError, attach_image
from hyca_batch.manifest import ManifestError, default_id, default_seed, expand_inputs, read_manifest
from hyca_batch.models import resolve_model
from hyca_batch.types import GENERATION_FIELDS, REQUEST_SCHEMA, GenerationDefaults, Request

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


# Image-to-video rows: a real image per row, read and decoded at validation.

I2V = dataclasses.replace(resolve_model("tiny"), i2v_target_size=64)  # sizing only: it cannot run image-to-video


def read_i2v(paths, **kw):
    return read_manifest(paths, DEFAULTS, image_video_size=I2V.image_video_size, model_name=I2V.name, **kw)


def test_image_rows_are_validated_one_by_one(tmp_path, write_image):
    good = write_image("imgs/good.png", width=90, height=50)
    jpeg = write_image("elsewhere/photo.jpg", width=40, height=80, fmt="JPEG")
    write_image("imgs/tiny.png", width=4, height=4)
    (tmp_path / "imgs" / "notes.png").write_text("not an image at all")
    data = good.read_bytes()
    (tmp_path / "imgs" / "cut.png").write_bytes(data[: len(data) // 2])
    bucket = I2V.image_video_size(50, 90)  # (H, W)
    assert bucket == (48, 80)
    path = write(
        tmp_path / "m.parquet",
        {
            "prompt": ["good", "missing", "not an image", "truncated", "too small", "conflict", "text", "jpeg"],
            "image": [
                "imgs/good.png",  # relative: to the manifest's directory, not the working directory
                "imgs/missing.png",
                "imgs/notes.png",
                "imgs/cut.png",
                "imgs/tiny.png",
                "imgs/good.png",
                None,
                str(jpeg),
            ],
            "height": pa.array([None, None, None, None, None, 128, None, 80], type=pa.int64()),
        },
    )
    m = read_i2v([path])
    rows = {r["prompt"]: r for r in m.requests.to_pylist()}
    assert sorted(rows) == ["good", "jpeg", "text"]
    assert (rows["good"]["height"], rows["good"]["width"]) == bucket  # the image's bucket, not the defaults
    assert rows["good"]["image"] == str(good) and rows["good"]["image_bytes"] is None
    assert rows["good"]["image_sha256"] == hashlib.sha256(data).hexdigest()
    assert (rows["jpeg"]["height"], rows["jpeg"]["width"]) == I2V.image_video_size(80, 40) == (80, 48)
    assert rows["text"]["image"] is None and rows["text"]["image_sha256"] is None
    assert (rows["text"]["height"], rows["text"]["width"]) == (64, 64)

    errs = errors_by_row(m)
    assert len(m.rejected) == 5
    assert errs[("m.parquet", 1)] == ("image", f"cannot be read: no such file {tmp_path / 'imgs' / 'missing.png'}")
    assert errs[("m.parquet", 2)] == ("image", "is not an image (no format Pillow reads)")
    assert errs[("m.parquet", 3)][0] == "image" and "cannot be decoded as an image" in errs[("m.parquet", 3)][1]
    assert errs[("m.parquet", 4)] == ("image", "is 4x4 pixels (WxH); an image must be at least 16x16")
    assert errs[("m.parquet", 5)] == (
        "height",
        "is 128, but the size of an image row follows its image: its 50x90 (HxW) image makes a 48x80 (HxW) video; "
        "leave height and width null",
    )
    text = str(next(e for e in m.rejected if e.row == 1))
    assert text.startswith(path) and "row 1: image: cannot be read" in text
    assert next(e for e in m.rejected if e.row == 1).image == "imgs/missing.png"  # as the row gives it

    # The same rows for a model without image-to-video: every image row is rejected, the text row runs.
    m = read_manifest([path], DEFAULTS, model_name="tiny")
    assert [r["prompt"] for r in m.requests.to_pylist()] == ["text"]
    errs = errors_by_row(m)
    assert {errs[("m.parquet", row)] for row in (0, 1, 2, 3, 4, 7)} == {
        ("image", "model 'tiny' has no image-to-video pipeline")
    }


def test_inline_image_bytes_and_identity(tmp_path, write_image):
    red = write_image("red.png", width=64, height=64).read_bytes()
    blue = write_image("blue.png", width=64, height=64, color=(0, 0, 255)).read_bytes()
    path = write(
        tmp_path / "inline.parquet",
        {
            "prompt": ["p", "p", "p", "p"],
            "image": pa.array([red, blue, None, b"\x89PNG\r\n\x1a\n broken"], type=pa.binary()),
        },
    )
    m = read_i2v([path])
    rows = m.requests.to_pylist()
    assert [r["image_bytes"] for r in rows] == [red, blue, None]
    assert [r["image"] for r in rows] == [None, None, None]
    assert rows[0]["image_sha256"] == hashlib.sha256(red).hexdigest()
    assert [(r["height"], r["width"]) for r in rows] == [(64, 64)] * 3
    assert len({r["id"] for r in rows}) == 3  # the image is part of the id
    assert errors_by_row(m)[("inline.parquet", 3)][0] == "image"
    # The column ids equal the one-row reference, with the image's hash; a text row's id is as it always was.
    for r in rows:
        params = {k: r[k] for k in ("prompt", "seed", *GENERATION_FIELDS)}
        assert r["id"] == default_id({**params, "image_sha256": r["image_sha256"]}, False)
    text_only = read_manifest([write(tmp_path / "t.parquet", {"prompt": ["p"]})], DEFAULTS).requests
    assert text_only.column("id")[0].as_py() == rows[2]["id"]
    no_images = write(tmp_path / "n.parquet", {"prompt": ["p"], "image": pa.array([None], pa.string())})
    assert read_i2v([no_images]).requests.column("id").to_pylist() == [rows[2]["id"]]

    # One image under two paths, same row otherwise: one video; another image under an explicit id: a conflict.
    (tmp_path / "copy.png").write_bytes(red)
    dup = write(
        tmp_path / "dup.parquet",
        {
            "prompt": ["p", "p", "q", "q"],
            "image": ["red.png", "copy.png", "red.png", "blue.png"],
            "id": [None, None, "x", "x"],
        },
    )
    m = read_i2v([dup])
    assert m.merged_duplicates == 1 and m.requests.num_rows == 1
    assert {(e.row, e.field) for e in m.rejected} == {(2, "id"), (3, "id")}


def test_the_replica_gets_the_validated_image_or_a_clear_error(tmp_path, write_image):
    image = write_image("a.png")
    path = write(tmp_path / "m.parquet", {"prompt": ["by path", "text"], "image": ["a.png", None]})
    by_path, text = Request.from_table(read_i2v([path]).requests)
    assert by_path.image_bytes is None  # the driver does not carry a path's bytes
    attached = attach_image(by_path)
    assert attached.image_bytes == image.read_bytes() and attached.image == str(image)
    assert attach_image(text) is text
    # A record's row (no image_bytes) turns back into the same request.
    row = {k: getattr(by_path, k) for k in REQUEST_SCHEMA.names if k != "image_bytes"}
    assert attach_image(Request.from_row({**row, "model": "tiny"})).image_bytes == image.read_bytes()

    write_image("a.png", color=(1, 2, 3))  # replaced after validation
    with pytest.raises(ImageChanged, match="changed since the job validated it"):
        attach_image(by_path)
    image.unlink()
    with pytest.raises(ImageError, match="no such file"):
        attach_image(by_path)


def test_images_on_s3(tmp_path, s3, write_image):
    bucket = s3.new_bucket()
    client = s3.client()
    data = write_image("a.png").read_bytes()
    client.put_object(Bucket=bucket, Key="dir/imgs/a.png", Body=data)
    local = write(
        tmp_path / "m.parquet",
        {"prompt": ["s3", "missing"], "image": [f"s3://{bucket}/dir/imgs/a.png", f"s3://{bucket}/dir/nope.png"]},
    )
    m = read_i2v([local], s3_endpoint_url=s3.endpoint)
    (row,) = m.requests.to_pylist()
    assert row["image"] == f"s3://{bucket}/dir/imgs/a.png" and row["image_sha256"] == hashlib.sha256(data).hexdigest()
    assert errors_by_row(m)[("m.parquet", 1)] == ("image", f"cannot be read: no object at s3://{bucket}/dir/nope.png")
    (request,) = Request.from_table(m.requests)
    assert attach_image(request, s3_endpoint_url=s3.endpoint).image_bytes == data

    # A manifest on S3: a relative image path is relative to its prefix.
    pq.write_table(pa.table({"prompt": ["rel"], "image": ["imgs/a.png"]}), tmp_path / "rel.parquet")
    client.put_object(Bucket=bucket, Key="dir/m.parquet", Body=(tmp_path / "rel.parquet").read_bytes())
    (row,) = read_i2v([f"s3://{bucket}/dir/m.parquet"], s3_endpoint_url=s3.endpoint).requests.to_pylist()
    assert row["image"] == f"s3://{bucket}/dir/imgs/a.png"


def test_image_column_of_another_type_is_a_file_error(tmp_path):
    path = write(tmp_path / "ty.parquet", {"prompt": ["hi"], "image": [3]})
    with pytest.raises(ManifestError, match="ty.parquet: field 'image': column type int64 cannot hold it"):
        read_i2v([path])
    reserved = write(tmp_path / "rs.parquet", {"prompt": ["hi"], "image_sha256": ["ab"]})
    with pytest.raises(ManifestError, match="field 'image_sha256': the name is reserved"):
        read_i2v([reserved])
