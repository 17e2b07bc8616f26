"""Request bodies -> model-sized uint8 images, with every refusal a client can act on.

Accepted: a raw body (image/jpeg, image/png, image/webp), multipart/form-data files, or JSON
`{"images": ["<base64>", ...]}` (data: URLs allowed). Each image is checked before decoding: its format must be one
of the three, its header-declared pixel count must stay under `max_pixels` (checked from the header, before any
pixel is decoded), and it must decode completely (truncated files are refused, not padded).
JPEGs larger than the model input use Pillow's `draft` mode: libjpeg decodes at 1/2, 1/4 or 1/8 scale directly,
which is several times cheaper than a full decode followed by a resize (PNG and WebP have no reduced decode).

A small file can decode huge (a 7000x7000 solid PNG is ~150 KB on the wire and 147 MB decoded), so decoded pixels
in flight are bounded per process by a `PixelBudget`: a decode waits until its pixels fit, and gets 503 when they do
not fit within the request timeout. `decode(data, size, limits, label, budget)` is the one safe decoder to reuse
wherever untrusted image bytes are read.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ctypes
import ctypes.util
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from encoder.preprocess import to_array

FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
IMAGE_TYPES = set(FORMATS.values())


class APIError(Exception):
    """An error answered as `{"error": {"code", "message"}}` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclass
class Limits:
    max_images: int
    max_pixels: int


UHD_PIXELS = 3840 * 2160  # the smallest default max_pixels: any camera frame up to 4K is accepted


def max_pixels(cfg, size: tuple[int, int]) -> int:
    """`cfg.max_pixels`, or when 0, `cfg.max_pixels_factor` x the model input's pixels (at least a 4K frame's)."""
    return cfg.max_pixels or max(cfg.max_pixels_factor * size[0] * size[1], UHD_PIXELS)


class PixelBudget:
    """A counting semaphore in pixels: at most `total` decoded pixels in flight in this process.

    Args:
        total: pixel budget (at least the largest image allowed, or that image could never be decoded).
        timeout_s: longest a decode waits for room before the request gets 503.
    """

    def __init__(self, total: int, timeout_s: float = 30.0):
        self.total, self.timeout_s = total, timeout_s
        self.used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.total)
        with self._cond:
            if not self._cond.wait_for(lambda: self.used + pixels <= self.total, self.timeout_s):
                raise APIError(503, "decoder_busy", "too many pixels being decoded; retry later", {"Retry-After": "1"})
            self.used += pixels
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


def unmap_large_frees() -> bool:
    """Make glibc return a freed decoded image to the OS instead of keeping it in the thread's malloc arena.

    glibc raises its mmap threshold each time an mmapped block is freed, so after the first large image, image-sized
    blocks come from per-thread arenas and stay resident: every request thread ends up holding its own largest
    decode (the probe's worker stayed at 5.9 GB). A fixed threshold (which also turns the dynamic one off) keeps
    blocks of 1 MiB and more in their own mappings. Returns False where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(-3, 1 << 20))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError, TypeError):
        return False


def decode(
    data: bytes, size: tuple[int, int], limits: Limits, label: str = "image", budget: PixelBudget | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Encoded bytes -> ((H, W, 3) uint8 at `size` = (H, W), the image's own (height, width)); APIError for anything
    not a sound, small-enough image. Answers in image coordinates (boxes) need the own size.

    With `budget`, the decode waits until its pixels fit in the budget (503 `decoder_busy` if they never do)."""
    if not data:
        raise APIError(400, "empty_image", f"{label} is empty")
    try:
        # Pillow's own bomb check (a warning, then an error at 2x MAX_IMAGE_PIXELS) runs in open(); ours is lower.
        image = Image.open(io.BytesIO(data), formats=list(FORMATS))
        w, h = image.size
        own = (h, w)
        if w * h > limits.max_pixels:
            raise APIError(
                413, "too_many_pixels", f"{label} is {w}x{h} = {w * h} pixels; the limit is {limits.max_pixels}"
            )
        if image.format == "JPEG":
            image.draft("RGB", (size[1], size[0]))  # decodes at the smallest 1/2^k scale still >= (W, H)
        w, h = image.size  # after draft: what will really be decoded
        with budget.hold(w * h) if budget is not None else contextlib.nullcontext():
            image.load()
            return to_array(image, size), own
    except APIError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        kind = "not a JPEG, PNG or WebP image" if isinstance(e, UnidentifiedImageError) else "too many pixels"
        status, code = (415, "unsupported_image") if isinstance(e, UnidentifiedImageError) else (413, "too_many_pixels")
        raise APIError(status, code, f"{label}: {kind}") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated or corrupt data inside a valid header
        raise APIError(400, "corrupt_image", f"{label} could not be decoded (corrupt or truncated): {e}") from e


def _b64(item: object, i: int) -> bytes:
    if not isinstance(item, str):
        raise APIError(422, "invalid_json", f"images[{i}] must be a base64 string, got {type(item).__name__}")
    if item.startswith("data:"):
        item = item.split(",", 1)[-1]
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError) as e:
        raise APIError(422, "invalid_base64", f"images[{i}] is not valid base64: {e}") from e


def read_images(content_type: str, body: bytes, files: list[tuple[str, bytes]] | None, limits: Limits) -> list[bytes]:
    """The encoded images of a request, by content type; `files` are multipart parts (name, bytes)."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime in IMAGE_TYPES:
        images = [body]
    elif mime == "multipart/form-data":
        images = [data for _, data in files or []]
        if not images:
            raise APIError(400, "no_images", "multipart request holds no files")
    elif mime == "application/json":
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nesting deeper than the stack
            raise APIError(400, "bad_json", f"body is not valid JSON: {e}") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
            raise APIError(422, "invalid_json", 'expected a JSON object {"images": ["<base64>", ...]}')
        if len(doc["images"]) > limits.max_images:
            raise APIError(413, "too_many_images", f"{len(doc['images'])} images; the limit is {limits.max_images}")
        images = [_b64(item, i) for i, item in enumerate(doc["images"])]
        if not images:
            raise APIError(422, "no_images", '"images" is empty')
    else:
        raise APIError(
            415,
            "unsupported_media_type",
            f"Content-Type {mime or '(none)'!r} is not accepted; send image/jpeg, image/png, image/webp, "
            "multipart/form-data or application/json",
        )
    if len(images) > limits.max_images:
        raise APIError(413, "too_many_images", f"{len(images)} images; the limit is {limits.max_images}")
    return images


def decode_all(
    images: list[bytes], size: tuple[int, int], limits: Limits, budget: PixelBudget | None = None
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Encoded images -> ((n, H, W, 3) uint8, each image's own (height, width)), decoded one at a time."""
    decoded = [decode(b, size, limits, f"image {i}", budget) for i, b in enumerate(images)]
    return np.stack([a for a, _ in decoded]), [hw for _, hw in decoded]
