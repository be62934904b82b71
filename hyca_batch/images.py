"""The images of image-to-video rows: where a reference points, reading it, checking it decodes at a usable size,
and, on the replica, getting a request's image back as the bytes the job validated.

An image is given by a manifest row either inline (its bytes) or by reference: a local path (a relative one is
taken relative to the manifest, wherever that is) or an ``s3://bucket/key`` URI, read through the project's S3
storage with the job's endpoint. Validation (``manifest``) reads every image once, up front, and keeps its sha256;
the replica reads it again (``attach_image``) and refuses bytes that differ, since the video's id and the drift
check of re-runs rest on that hash. A local path must therefore be readable on the replicas too (a shared disk).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import posixpath
import re
import threading
from dataclasses import dataclass

from hyca_batch.storage import Storage, StorageError, open_storage
from hyca_batch.types import Request

#: The smallest and largest image side accepted, in pixels. Below 16 px no bucket has anything to resize from;
#: above 8192 px (67 M pixels) one decode takes over 256 MB (RGBA), too much for validation to hold several of at
#: once; both are far outside what an image-to-video pipeline is trained on (480p/720p buckets).
MIN_IMAGE_SIDE = 16
MAX_IMAGE_SIDE = 8192

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class ImageError(ValueError):
    """An image that cannot be used. ``kind`` says how: ``read`` (no such file or object, no access),
    ``decode`` (not an image Pillow decodes), ``small`` or ``large`` (a side outside the limits); ``changed``
    (:class:`ImageChanged`)."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


class ImageChanged(ImageError):
    """The image's bytes are not the ones the job validated: the file or object was replaced meanwhile."""

    def __init__(self, message: str):
        super().__init__("changed", message)


@dataclass(frozen=True)
class ImageInfo:
    """What validation keeps of an image: the hash of its bytes and its size in pixels."""

    sha256: str
    height: int
    width: int


def resolve_reference(ref: str, base: str) -> str:
    """``ref`` as every process reads it: an ``s3://`` URI or an absolute path as it is (normalized), a relative
    path joined to ``base``, the directory of the manifest that names it (a local directory or an ``s3://``
    prefix). ImageError (``read``) for another scheme or a relative key that leaves its bucket."""
    match = _SCHEME.match(ref)
    if match is not None:
        if match.group(1) != "s3":
            raise ImageError("read", f"{ref!r}: unsupported scheme {match.group(1)!r} (give a path or an s3:// URI)")
        bucket, _, key = ref[len("s3://") :].partition("/")
        if not bucket or not key:
            raise ImageError("read", f"{ref!r} names no object (use s3://bucket/key)")
        return ref
    if os.path.isabs(ref):
        return os.path.normpath(ref)
    if base.startswith("s3://"):
        bucket, _, prefix = base[len("s3://") :].partition("/")
        key = posixpath.normpath(posixpath.join(prefix, ref))
        if key == ".." or key.startswith("../"):
            raise ImageError("read", f"{ref!r} leads out of bucket {bucket!r} (relative to {base})")
        return f"s3://{bucket}/{key}"
    return os.path.normpath(os.path.join(base, ref))


_bucket_lock = threading.Lock()


@functools.lru_cache(maxsize=16)
def _bucket(bucket: str, endpoint_url: str | None) -> Storage:
    return open_storage(f"s3://{bucket}", s3_endpoint_url=endpoint_url)  # checks the bucket, once


def _bucket_storage(bucket: str, endpoint_url: str | None) -> Storage:
    with _bucket_lock:  # one client per bucket, however many threads read at once
        return _bucket(bucket, endpoint_url)


def read_image(ref: str, *, s3_endpoint_url: str | None = None) -> bytes:
    """The bytes of a resolved reference (``resolve_reference``): a local file or an S3 object. ImageError
    (``read``) naming it when it cannot be read."""
    if ref.startswith("s3://"):
        bucket, _, key = ref[len("s3://") :].partition("/")
        try:
            return _bucket_storage(bucket, s3_endpoint_url).read_bytes(key)
        except FileNotFoundError as exc:
            raise ImageError("read", f"no object at {ref}") from exc
        except (StorageError, ValueError) as exc:  # bucket missing or denied, endpoint down, a key storage refuses
            raise ImageError("read", str(exc)) from exc
    try:
        with open(ref, "rb") as f:
            return f.read()
    except FileNotFoundError as exc:
        raise ImageError("read", f"no such file {ref}") from exc
    except IsADirectoryError as exc:
        raise ImageError("read", f"{ref} is a directory") from exc
    except OSError as exc:
        raise ImageError("read", f"{ref}: {exc.strerror or exc}") from exc


def inspect_image(data: bytes) -> ImageInfo:
    """The hash and size of an image, decoded in full once (a truncated or corrupt file fails here, not on a GPU).
    ImageError (``decode``, ``small``, ``large``) when it cannot be used."""
    from PIL import Image, UnidentifiedImageError

    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if min(width, height) < MIN_IMAGE_SIDE:
                raise ImageError(
                    "small",
                    f"is {width}x{height} pixels (WxH); an image must be at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}",
                )
            if max(width, height) > MAX_IMAGE_SIDE:
                raise ImageError(
                    "large",
                    f"is {width}x{height} pixels (WxH); an image may be at most {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}",
                )
            image.load()
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError("decode", "is not an image (no format Pillow reads)") from exc
    except Exception as exc:  # noqa: BLE001 - a decoder may raise anything on corrupt input
        raise ImageError("decode", f"cannot be decoded as an image ({type(exc).__name__}: {exc})") from exc
    return ImageInfo(digest, height, width)


def error_fields(image: str | None, image_sha256: str | None) -> dict[str, str | None]:
    """What an image row's error record says of its image; nothing for a text row, whose records stay as they were."""
    return {} if image_sha256 is None else {"image": image, "image_sha256": image_sha256}


def attach_image(request: Request, *, s3_endpoint_url: str | None = None) -> Request:
    """The request with its image's bytes in ``image_bytes``, on the replica, before it generates: read from its
    path or S3 object unless the manifest held them inline. A text-to-video request comes back as it is.

    Raises ImageError when the image cannot be read, and ImageChanged when its bytes are not the ones the job
    validated (their sha256 differs): the video would not be the one its id and record stand for.
    """
    if request.image_sha256 is None:
        return request
    if request.image_bytes is not None:
        data, where = request.image_bytes, "its inline image"
    elif request.image:
        data, where = read_image(request.image, s3_endpoint_url=s3_endpoint_url), request.image
    else:
        raise ImageError("read", f"request {request.id!r} has an image_sha256 but neither an image nor its bytes")
    digest = hashlib.sha256(data).hexdigest()
    if digest != request.image_sha256:
        raise ImageChanged(
            f"{where} changed since the job validated it (sha256 {request.image_sha256} then, {digest} now); "
            "put the validated image back, or run the job again so that it validates the new one"
        )
    return dataclasses.replace(request, image_bytes=data)
