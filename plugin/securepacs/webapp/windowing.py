"""Window/level math (PS3.3 C.11.2.1.2 linear VOI LUT) on modality values, as numpy, no I/O.

Stored values -> modality values (rescale slope/intercept, C.11.1) -> 8-bit display values through the
window, inverted for MONOCHROME1 (where low values are white). The browser tests compare rendered pixels
with :func:`window` itself, so this module is the one definition of what a preset looks like.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Window centre/width in Hounsfield units (radiology conventions; named as the viewer shows them).
CT_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "abdomen": (60.0, 400.0),
    "soft-tissue": (50.0, 350.0),
}
MIN_WIDTH = 1.0  # PS3.3: Window Width shall be >= 1


@dataclass(frozen=True)
class Window:
    center: float
    width: float


def modality_values(stored: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """Apply the modality LUT (Rescale Slope/Intercept) to stored values; float32 keeps a 512² frame at 1 MB."""
    values = stored.astype(np.float32, copy=slope != 1.0 or intercept != 0.0 or stored.dtype != np.float32)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def window(values: np.ndarray, center: float, width: float, *, invert: bool = False) -> np.ndarray:
    """8-bit display values of modality ``values`` through the linear window (PS3.3 C.11.2.1.2.1).

    x <= c - 0.5 - (w-1)/2 -> 0; x > c - 0.5 + (w-1)/2 -> 255; else ((x - (c - 0.5)) / (w-1) + 0.5) * 255.
    ``invert`` for MONOCHROME1. Results are rounded to the nearest integer.
    """
    width = max(float(width), MIN_WIDTH)
    if width == 1.0:
        # The standard's w = 1 is a threshold: below c - 0.5 black, above it white.
        out = np.where(values > center - 0.5, np.float32(255.0), np.float32(0.0))
    else:
        scale = np.float32(255.0 / (width - 1.0))
        out = (values - np.float32(center - 0.5)) * scale + np.float32(127.5)
        np.clip(out, 0.0, 255.0, out=out)
    display = np.rint(out).astype(np.uint8)
    if invert:
        np.subtract(255, display, out=display)
    return display


def auto_window(values: np.ndarray) -> Window:
    """A window from the data when the instance names none: the 0.5th to 99.5th percentile (robust to
    a few hot pixels and to the padding value outside a CT's field of view)."""
    step = max(1, values.shape[0] // 128) if values.ndim >= 2 else 1
    sample = values[::step, ::step] if values.ndim >= 2 else values
    low, high = np.percentile(sample, [0.5, 99.5])
    if not np.isfinite(low) or not np.isfinite(high):
        return Window(0.0, 1.0)
    width = max(float(high - low), MIN_WIDTH)
    return Window(float(low) + width / 2.0, width)


def first_value(value: object) -> float | None:
    """Window Center/Width may be multi-valued (several suggested windows): the first one counts."""
    if value is None or value == "":
        return None
    if not isinstance(value, str | bytes | int | float):
        try:
            value = next(iter(value))  # type: ignore[call-overload]
        except (StopIteration, TypeError):
            return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
