"""Server-side rendering of one frame: decode the stored pixels once, window, scale, encode, cache.

Runs inside Orthanc's Python callbacks, which hold the GIL (and so stall ingest while they run): the
per-request work is kept to numpy windowing of one frame, a Pillow resize and a JPEG encode (a few ms for
a 512² CT frame; see the report's figures). Decoded frames and encoded answers are kept in two LRU caches
bounded in bytes, so scrolling back and forth and re-requesting a window costs a dictionary lookup.

Decoding is pydicom's (uncompressed, RLE, and JPEG/JPEG 2000 through Pillow when it is installed):
rescale slope/intercept and MONOCHROME1 are applied by ``windowing``; colour (RGB, and YBR converted to
RGB by pydicom) is shown as stored, without a window.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.pixels import pixel_array

from securepacs.webapp import windowing

log = logging.getLogger(__name__)

FORMATS = {"jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp"), "png": ("PNG", "image/png")}
LOSSY = frozenset({"jpeg", "webp"})
# JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000 (lossy), HTJ2K (lossy)
LOSSY_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
                            "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"})
MAX_SIZE = 4096
DEFAULT_QUALITY = 85
FRAME_CACHE_BYTES = 256 * 1024 * 1024
IMAGE_CACHE_BYTES = 64 * 1024 * 1024


class RenderError(ValueError):
    """The request cannot be rendered (bad parameter, no such frame, undecodable pixels): 400/404."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class PixelStore(Protocol):
    def get_bytes(self, uri: str) -> bytes: ...


@dataclass(frozen=True)
class Frame:
    values: np.ndarray  # modality values (float32, rows x cols) or RGB uint8 (rows x cols x 3)
    color: bool
    invert: bool  # MONOCHROME1
    default: windowing.Window
    frames: int  # frames in the instance
    lossy_source: bool = False  # the stored pixels were lossy-compressed (Lossy Image Compression "01")

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)


@dataclass(frozen=True)
class Rendered:
    body: bytes
    content_type: str
    lossy: bool
    window: windowing.Window | None


class _Lru:
    def __init__(self, capacity: int, size_of: Callable[[Any], int]):
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._capacity = capacity
        self._size_of = size_of
        self._used = 0
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        size = self._size_of(value)
        if size > self._capacity:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._used -= self._size_of(old)
            self._items[key] = value
            self._used += size
            while self._used > self._capacity:
                _, evicted = self._items.popitem(last=False)
                self._used -= self._size_of(evicted)


def decode(data: bytes, frame: int) -> Frame:
    """One frame of a DICOM instance as modality values (or RGB), with the window the instance suggests."""
    ds = dcmread(io.BytesIO(data))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame < frames:
        raise RenderError(404, f"frame {frame} does not exist: the instance has {frames} frame(s)")
    if "PixelData" not in ds:
        raise RenderError(404, "the instance has no pixel data")
    try:
        pixels = pixel_array(ds, index=frame) if frames > 1 else ds.pixel_array
    except Exception as exc:  # pydicom raises many kinds for unsupported syntaxes/damaged data
        raise RenderError(415, f"pixel data cannot be decoded ({type(exc).__name__}): transfer syntax "
                               f"{ds.file_meta.get('TransferSyntaxUID', 'unknown')}") from exc
    if int(ds.get("SamplesPerPixel", 1) or 1) == 3:
        rgb = pixels if pixels.dtype == np.uint8 else np.clip(pixels >> max(0, int(ds.BitsStored) - 8), 0, 255)
        return Frame(np.ascontiguousarray(rgb, dtype=np.uint8), True, False, windowing.Window(127.5, 256.0), frames,
                     _lossy(ds))
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    values = windowing.modality_values(pixels, slope, intercept)
    center = windowing.first_value(ds.get("WindowCenter"))
    width = windowing.first_value(ds.get("WindowWidth"))
    default = (windowing.Window(center, max(width, windowing.MIN_WIDTH)) if center is not None and width
               else windowing.auto_window(values))
    invert = str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    return Frame(values, False, invert, default, frames, _lossy(ds))


def _lossy(ds: Any) -> bool:
    return str(ds.get("LossyImageCompression", "")).strip() == "01" or (
        str(ds.file_meta.get("TransferSyntaxUID", "")) in LOSSY_SYNTAXES)


def _number(get: dict[str, str], name: str, low: float, high: float) -> float | None:
    raw = get.get(name)
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise RenderError(400, f"parameter {name}={raw!r}: expected a number") from None
    if not (low <= value <= high):
        raise RenderError(400, f"parameter {name}={raw!r}: expected {low:g} to {high:g}")
    return value


class Renderer:
    def __init__(self, pixels: PixelStore, *, frame_cache_bytes: int = FRAME_CACHE_BYTES,
                 image_cache_bytes: int = IMAGE_CACHE_BYTES):
        self._pixels = pixels
        self._frames = _Lru(frame_cache_bytes, lambda f: f.nbytes)
        self._images = _Lru(image_cache_bytes, lambda r: len(r.body))

    def frame(self, instance_id: str, index: int) -> Frame:
        key = (instance_id, index)
        hit = self._frames.get(key)
        if hit is None:
            hit = decode(self._pixels.get_bytes(f"/instances/{instance_id}/file"), index)
            self._frames.put(key, hit)
        return hit

    def render(self, instance_id: str, index: int, get: dict[str, str]) -> Rendered:
        """Render with GET parameters ``wc``/``ww`` (window; default the instance's), ``size`` (longest side
        in pixels; never above the stored size), ``format`` (jpeg|webp|png) and ``quality`` (1-100)."""
        fmt = get.get("format", "jpeg")
        if fmt not in FORMATS:
            raise RenderError(400, f"parameter format={fmt!r}: expected one of {sorted(FORMATS)}")
        center = _number(get, "wc", -1e6, 1e6)
        width = _number(get, "ww", windowing.MIN_WIDTH, 2e6)
        size = _number(get, "size", 16, MAX_SIZE)
        quality = _number(get, "quality", 1, 100)
        key = (instance_id, index, center, width, size, fmt, quality)
        hit = self._images.get(key)
        if hit is not None:
            return hit
        frame = self.frame(instance_id, index)
        if frame.color:
            pixels, used = frame.values, None
        else:
            used = windowing.Window(center if center is not None else frame.default.center,
                                    width if width is not None else frame.default.width)
            pixels = windowing.window(frame.values, used.center, used.width, invert=frame.invert)
        image = Image.fromarray(pixels, "RGB" if frame.color else "L")
        if size is not None and max(image.size) > size:
            scale = size / max(image.size)
            target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
        out = io.BytesIO()
        encoder, content_type = FORMATS[fmt]
        if fmt == "png":
            image.save(out, encoder, compress_level=1)  # fast; PNG is for lossless reads, not for bytes
        else:
            image.save(out, encoder, quality=int(quality or DEFAULT_QUALITY))
        rendered = Rendered(out.getvalue(), content_type, fmt in LOSSY or frame.lossy_source, used)
        self._images.put(key, rendered)
        return rendered
