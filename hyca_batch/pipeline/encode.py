"""Frames -> mp4 bytes (H.264, yuv420p) and back, entirely in memory with PyAV.

H.264 in yuv420p inside mp4 is the one combination every browser and player decodes, so that is
the only output format. Encoding to a BytesIO keeps the storage layer in charge of where the bytes
land (and of writing them atomically).
"""

from __future__ import annotations

import io
import numbers
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc, Interpolation

__all__ = ["DecodedVideo", "encode_mp4", "decode_mp4"]

CODEC = "libx264"
PIX_FMT = "yuv420p"
_AVIO_FLAG_READ = 1  # libavformat's AVIO_FLAG_READ
# swscale's default RGB<->YUV path rounds so that a smooth gradient comes back ~1.2 levels darker in
# every channel; accurate rounding with full-resolution chroma input/output removes that bias.
_SWS_FLAGS = (
    Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT | Interpolation.FULL_CHR_H_INP
)
# Where swscale puts chroma when downsampling an untagged frame. Signalling it in the H.264 VUI lets
# decoders (ours included) upsample from the same place; the H.264 default ("left") would shift
# chroma by half a sample, measured as a ~0.8-level bias in red on a horizontal gradient.
_CHROMA_LOCATION = "center"


@dataclass(frozen=True)
class DecodedVideo:
    """A decoded video plus the stream facts that tests and fidelity checks compare against."""

    frames: np.ndarray  # (F, H, W, 3) uint8 RGB
    fps: float
    codec: str
    pix_fmt: str


def _as_uint8_rgb(frames: np.ndarray) -> np.ndarray:
    """Validate the frame array; floats are taken as [0, 1] (what VAE decoders emit) and clipped."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (F, H, W, 3) RGB, got {frames.shape}")
    n, h, w, _ = frames.shape
    if n == 0:
        raise ValueError("frames is empty: a video needs at least one frame")
    if h == 0 or w == 0 or h % 2 or w % 2:
        # yuv420p stores chroma at half resolution in both directions.
        raise ValueError(f"frame height and width must be even and non-zero for {PIX_FMT}, got {h}x{w}")
    if frames.dtype == np.uint8:
        return np.ascontiguousarray(frames)
    if np.issubdtype(frames.dtype, np.floating):
        if not np.isfinite(frames).all():
            raise ValueError("float frames contain NaN or infinity")
        return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)
    raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {frames.dtype}")


class _ReadView:
    """A second, independent read position over the BytesIO being written.

    ``+faststart`` makes the mp4 muxer re-open its output for reading at the end to shift the media
    data behind the moov atom. With a path it opens the file again; with custom I/O it asks
    ``io_open``, which must hand back a reader that does not move the writer's position (like a
    second file descriptor would).
    """

    def __init__(self, buf: io.BytesIO) -> None:
        self._buf, self._pos = buf, 0

    def read(self, n: int = -1) -> bytes:
        writer_pos = self._buf.tell()
        try:
            self._buf.seek(self._pos)
            data = self._buf.read(n)
        finally:
            self._buf.seek(writer_pos)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._buf.getbuffer().nbytes}
        self._pos = base[whence] + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        pass


def encode_mp4(frames: np.ndarray, fps: int, *, crf: int = 18) -> bytes:
    """Encode (F, H, W, 3) RGB frames as an H.264/yuv420p mp4 and return the file's bytes.

    The time base is exactly 1/fps with pts = frame index, so duration and frame count are exact
    (no rounding drift from a 1/90000-style clock). ``+faststart`` moves the moov atom ahead of the
    media data so a browser can start playing a video served from S3 before it has all of it.
    crf 18 is libx264's "visually lossless" point; lower is bigger and closer.
    """
    if isinstance(fps, bool) or not isinstance(fps, numbers.Integral):
        raise ValueError(f"fps must be a positive integer, got {fps!r}")
    if fps <= 0:
        raise ValueError(f"fps must be a positive integer, got {fps}")
    if isinstance(crf, bool) or not isinstance(crf, numbers.Integral) or not 0 <= crf <= 51:
        raise ValueError(f"crf must be an integer in [0, 51], got {crf!r}")
    rgb = _as_uint8_rgb(frames)
    _, height, width, _ = rgb.shape
    fps = int(fps)

    buf = io.BytesIO()

    def reopen_for_reading(url: str, flags: int, options: dict) -> _ReadView:
        if flags != _AVIO_FLAG_READ:
            raise ValueError(f"mp4 muxer asked to open {url!r} with flags {flags}; only reading works")
        return _ReadView(buf)

    with av.open(
        buf, mode="w", format="mp4", options={"movflags": "+faststart"}, io_open=reopen_for_reading
    ) as container:
        stream = container.add_stream(CODEC, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, PIX_FMT
        stream.options = {"crf": str(int(crf)), "chroma_sample_location": _CHROMA_LOCATION}
        ctx = stream.codec_context
        ctx.time_base = Fraction(1, fps)  # pts = frame index
        # Say which RGB->YUV matrix was used: untagged video is read as BT.601 by some players and
        # BT.709 by others, which shifts colours. BT.709 primaries are sRGB's, so RGB maps 1:1.
        ctx.colorspace, ctx.color_range = Colorspace.ITU709, ColorRange.MPEG
        ctx.color_primaries, ctx.color_trc = ColorPrimaries.BT709, ColorTrc.BT709
        for i, image in enumerate(rgb):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(
                format=PIX_FMT,
                dst_colorspace=Colorspace.ITU709,
                dst_color_range=ColorRange.MPEG,
                interpolation=_SWS_FLAGS,
            )
            frame.pts = i
            container.mux(stream.encode(frame))
        # x264 holds frames back for lookahead and B-frames; without the flush the tail is lost.
        container.mux(stream.encode(None))
    return buf.getvalue()


def decode_mp4(data: bytes) -> DecodedVideo:
    """Decode every frame of the first video stream back to RGB (for tests and fidelity metrics)."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ValueError("no video stream in the given data")
            stream = container.streams.video[0]
            # Matrix, range and chroma siting come from each frame's tags (what encode_mp4 wrote).
            frames = [
                f.reformat(format="rgb24", interpolation=_SWS_FLAGS).to_ndarray() for f in container.decode(stream)
            ]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            codec, pix_fmt = stream.codec_context.name, stream.codec_context.pix_fmt
    except av.FFmpegError as e:
        raise ValueError(f"cannot decode video data ({len(data)} bytes): {e}") from e
    if not frames:
        raise ValueError("the video stream contains no decodable frames")
    return DecodedVideo(
        frames=np.stack(frames),
        fps=float(rate) if rate else 0.0,
        codec=codec,
        pix_fmt=pix_fmt or "",
    )
