"""Request bodies -> model-sized uint8 images, with every refusal a client can act on.

Accepted: a raw body (image/jpeg, image/png, image/webp), multipart/form-data files, or JSON
`{"images": ["<base64>", ...]}` (data: URLs allowed). Each image is checked before decoding: its format must be one
of the three, its header-declared pixel count must stay under `max_pixels` (checked from the header, before any
pixel is decoded), and it must decode completely (truncated files are refused, not padded).
JPEGs larger than the model input use Pillow's `draft` mode: libjpeg decodes at 1/2, 1/4 or 1/8 scale directly,
which is several times cheaper than a full decode followed by a resize.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
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


def image_size(data: bytes) -> tuple[int, int]:
    """(H, W) of an encoded image from its header (the image was already decoded once, so this cannot fail)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.height, image.width


def decode(data: bytes, size: tuple[int, int], limits: Limits, label: str = "image") -> np.ndarray:
    """Encoded bytes -> (H, W, 3) uint8 at `size` = (H, W); APIError for anything not a sound, small-enough image."""
    if not data:
        raise APIError(400, "empty_image", f"{label} is empty")
    try:
        # Pillow's own bomb check (a warning, then an error at 2x MAX_IMAGE_PIXELS) runs in open(); ours is lower.
        image = Image.open(io.BytesIO(data), formats=list(FORMATS))
        w, h = image.size
        if w * h > limits.max_pixels:
            raise APIError(
                413, "too_many_pixels", f"{label} is {w}x{h} = {w * h} pixels; the limit is {limits.max_pixels}"
            )
        if image.format == "JPEG":
            image.draft("RGB", (size[1], size[0]))  # decodes at the smallest 1/2^k scale still >= (W, H)
        image.load()
        return to_array(image, size)
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
        except (ValueError, UnicodeDecodeError) as e:
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


def decode_all(images: list[bytes], size: tuple[int, int], limits: Limits) -> np.ndarray:
    """Encoded images -> (n, H, W, 3) uint8."""
    return np.stack([decode(b, size, limits, f"image {i}") for i, b in enumerate(images)])
