"""mp4 encoding: exact frame count and timing, stream format, fidelity, faststart, input checks."""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import av
import numpy as np
import pytest

from hyca_batch.pipeline.encode import DecodedVideo, decode_mp4, encode_mp4


def gradient_video(frames: int, height: int, width: int) -> np.ndarray:
    """Smooth float video in [0, 1]: R ramps along x, G along y, B mostly with time.

    Each channel differs from the others and B brightens every frame (by >= 5 levels), so an R/B
    swap, a transposed frame or dropped/reordered frames all show up.
    """
    t = np.arange(frames)[:, None, None] / max(frames - 1, 1)
    y = np.arange(height)[None, :, None] / (height - 1)
    x = np.arange(width)[None, None, :] / (width - 1)
    r, g, b = np.broadcast_arrays(0.1 + 0.8 * x, 0.1 + 0.8 * y, 0.05 + 0.1 * (x + y) + 0.7 * t)
    return np.stack([r, g, b], axis=-1)


def to_uint8(video: np.ndarray) -> np.ndarray:
    return np.rint(video * 255).astype(np.uint8)


def top_level_boxes(data: bytes) -> list[str]:
    """Types of the mp4's top-level boxes in file order (handles 64-bit and to-end sizes)."""
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            (size,) = struct.unpack(">Q", data[pos + 8 : pos + 16])
        elif size == 0:
            size = len(data) - pos
        assert size >= 8, f"corrupt box size {size} at offset {pos}"
        boxes.append(kind.decode("latin-1"))
        pos += size
    assert pos == len(data), "boxes do not tile the file"
    return boxes


# Frame counts around x264's B-frame/lookahead delay; sizes square, wide and tall.
@pytest.mark.parametrize(
    ("frames", "height", "width", "fps"),
    [(1, 32, 32, 24), (2, 32, 48, 30), (9, 64, 96, 8), (33, 48, 32, 24), (33, 120, 160, 15)],
)
def test_round_trip(frames: int, height: int, width: int, fps: int) -> None:
    video = to_uint8(gradient_video(frames, height, width))
    decoded = decode_mp4(encode_mp4(video, fps))

    assert isinstance(decoded, DecodedVideo)
    assert decoded.frames.shape == (frames, height, width, 3)
    assert decoded.frames.dtype == np.uint8
    assert decoded.fps == fps
    assert decoded.codec == "h264"
    assert decoded.pix_fmt == "yuv420p"
    # Bound: 8-bit limited-range YUV 4:2:0 alone costs ~0.35 levels of mean error on this gradient
    # (see the crf 0 test) and crf 18 measured 0.8-1.8 here (worst on the smallest frames, where
    # every block holds a steep ramp); 2.5 leaves headroom for other x264 builds while a channel
    # swap (~60 levels), wrong frame order or a wrong colour matrix (~10) still fail.
    error = np.abs(decoded.frames.astype(np.int16) - video)
    assert error.mean() < 2.5
    # Frame order survives: blue brightens from each frame to the next.
    assert (np.diff(decoded.frames[..., 2].mean(axis=(1, 2))) > 2).all()


def test_colour_conversion_is_unbiased() -> None:
    """At crf 0 x264 is lossless, so what is left is the RGB <-> YUV 4:2:0 conversion itself.

    Plain swscale settings return this gradient ~1.2 levels darker per channel and an H.264 chroma
    siting mismatch shifts red by ~0.8; both would fail the bias bound.
    """
    video = to_uint8(gradient_video(3, 64, 96))
    error = decode_mp4(encode_mp4(video, 24, crf=0)).frames.astype(np.int16) - video
    assert np.abs(error).mean() < 0.6  # 8-bit limited-range quantization: ~0.35 measured
    assert np.abs(error.mean(axis=(0, 1, 2))).max() < 0.3  # per-channel bias: ~0.02 measured
    lossy = decode_mp4(encode_mp4(video, 24, crf=40)).frames.astype(np.int16) - video
    assert np.abs(lossy).mean() > np.abs(error).mean()  # crf really reaches the encoder


def test_float_frames_are_scaled_and_clipped() -> None:
    video = gradient_video(3, 64, 64)
    video[:, :16] = 1.7  # out of range: must clip to white, not wrap around (to ~177)
    video[:, -16:] = -0.5  # must clip to black, not wrap around (to ~128)
    expected = to_uint8(np.clip(video, 0, 1))
    for frames in (video, video.astype(np.float32)):
        decoded = decode_mp4(encode_mp4(frames, 12)).frames
        assert np.abs(decoded.astype(np.int16) - expected).mean() < 2.0
        assert decoded[:, 2:12].min() > 235  # band interiors, away from the edges' ringing
        assert decoded[:, -12:-2].max() < 20


def test_mp4_layout_is_faststart() -> None:
    data = encode_mp4(to_uint8(gradient_video(9, 32, 32)), 24)
    assert data[4:8] == b"ftyp"
    boxes = top_level_boxes(data)
    assert boxes[0] == "ftyp"
    assert "moov" in boxes and "mdat" in boxes
    assert boxes.index("moov") < boxes.index("mdat")


def test_timestamps_are_exact() -> None:
    data = encode_mp4(to_uint8(gradient_video(33, 32, 32)), 24)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        pts = [frame.pts * frame.time_base for frame in container.decode(stream)]
    assert pts == [Fraction(i, 24) for i in range(33)]  # exact, no clock rounding


@pytest.mark.parametrize(
    ("frames", "fps", "match"),
    [
        (np.zeros((2, 15, 16, 3), np.uint8), 24, "even"),
        (np.zeros((2, 16, 15, 3), np.uint8), 24, "even"),
        (np.zeros((2, 16, 16), np.uint8), 24, "shape"),
        (np.zeros((2, 16, 16, 4), np.uint8), 24, "shape"),
        (np.zeros((16, 16, 3), np.uint8), 24, "shape"),
        (np.zeros((0, 16, 16, 3), np.uint8), 24, "empty"),
        (np.zeros((2, 16, 16, 3), np.int32), 24, "dtype"),
        (np.full((2, 16, 16, 3), np.nan, np.float32), 24, "NaN"),
        (np.zeros((2, 16, 16, 3), np.uint8), 0, "fps"),
        (np.zeros((2, 16, 16, 3), np.uint8), -5, "fps"),
        (np.zeros((2, 16, 16, 3), np.uint8), 23.976, "fps"),
    ],
)
def test_bad_input_raises(frames: np.ndarray, fps: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_mp4(frames, fps)


def test_bad_crf_and_bad_data_raise() -> None:
    with pytest.raises(ValueError, match="crf"):
        encode_mp4(np.zeros((1, 16, 16, 3), np.uint8), 24, crf=99)
    with pytest.raises(ValueError, match="cannot decode"):
        decode_mp4(b"not an mp4 at all" * 8)
