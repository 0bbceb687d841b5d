"""The viewer's window math (PS3.3 C.11.2.1.2) against values worked out by hand, and the decoder's
handling of rescale, MONOCHROME1, colour and multi-frame instances."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from securepacs.webapp import render, windowing


def test_linear_window_matches_the_standard_formula():
    # c = 40, w = 400: lower edge c - 0.5 - (w-1)/2 = -160, upper edge c - 0.5 + (w-1)/2 = 239.
    values = np.array([-1000, -160, -159.5, 39.5, 239, 239.5, 3000], dtype=np.float32)
    out = windowing.window(values, 40, 400)
    # ((x - 39.5) / 399 + 0.5) * 255: -159.5 -> 0.32 -> 0; 39.5 -> 127.5 -> 128 (round half even: 128)
    assert out.tolist() == [0, 0, 0, 128, 255, 255, 255]
    assert out.dtype == np.uint8


def test_window_width_one_is_a_threshold():
    assert windowing.window(np.array([9.0, 9.6, 10.0], np.float32), 10, 1).tolist() == [0, 255, 255]
    assert windowing.window(np.array([9.0], np.float32), 10, 0.2).tolist() == [0]  # clamped to 1


def test_monochrome1_inverts():
    values = np.array([-1000, 40, 3000], dtype=np.float32)
    assert windowing.window(values, 40, 400, invert=True).tolist() == [255, 127, 0]


def test_rescale_slope_and_intercept():
    stored = np.array([0, 1024, 2048], dtype=np.int16)
    assert windowing.modality_values(stored, 1, -1024).tolist() == [-1024, 0, 1024]
    assert windowing.modality_values(np.array([10], np.uint16), 2.5, 1).tolist() == [26.0]
    unsigned = np.array([65535], dtype=np.uint16)  # 16-bit unsigned must not wrap to -1
    assert windowing.modality_values(unsigned).tolist() == [65535.0]


def test_presets_and_auto_window():
    assert windowing.CT_PRESETS["lung"] == (-600.0, 1500.0)
    data = np.linspace(0, 1000, 256 * 256, dtype=np.float32).reshape(256, 256)
    auto = windowing.auto_window(data)
    assert 480 < auto.center < 520 and 950 < auto.width <= 1000
    assert windowing.first_value(["40", "80"]) == 40.0 and windowing.first_value("") is None


def _instance(pixels: np.ndarray, photometric: str = "MONOCHROME2", **tags: object) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    frames = pixels.shape[0] if pixels.ndim == 4 or (pixels.ndim == 3 and photometric.startswith("MONO")) else 1
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if photometric == "RGB" else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


class _Store:
    def __init__(self, data: bytes):
        self.data = data
        self.reads = 0

    def get_bytes(self, _uri: str) -> bytes:
        self.reads += 1
        return self.data


def _png(rendered: render.Rendered) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(rendered.body)))


def test_signed_rescaled_monochrome1_render_is_the_window_math():
    stored = np.arange(64, dtype=np.int16).reshape(8, 8) * 50 - 1000
    store = _Store(_instance(stored, "MONOCHROME1", RescaleSlope=2, RescaleIntercept=-100))
    renderer = render.Renderer(store)
    out = renderer.render("i", 0, {"wc": "0", "ww": "2000", "format": "png"})
    want = windowing.window(stored.astype(np.float32) * 2 - 100, 0, 2000, invert=True)
    assert np.array_equal(_png(out), want) and not out.lossy
    renderer.render("i", 0, {"wc": "10", "ww": "2000", "format": "png"})
    assert store.reads == 1  # the decoded frame is cached


def test_unsigned_default_window_from_tags_and_lossy_jpeg():
    stored = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 200)
    renderer = render.Renderer(_Store(_instance(stored, WindowCenter="25000", WindowWidth="10000")))
    out = renderer.render("i", 0, {"format": "jpeg", "size": "16"})
    assert out.window == windowing.Window(25000.0, 10000.0) and out.lossy and out.content_type == "image/jpeg"


def test_multiframe_and_rgb():
    frames = np.stack([np.full((4, 4), v, np.uint16) for v in (0, 100, 200)])
    renderer = render.Renderer(_Store(_instance(frames)))
    assert _png(renderer.render("m", 2, {"wc": "100", "ww": "200", "format": "png"}))[0, 0] == 255
    with pytest.raises(render.RenderError) as err:
        renderer.render("m", 3, {"format": "png"})
    assert err.value.status == 404
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200
    colour = render.Renderer(_Store(_instance(rgb, "RGB"))).render("c", 0, {"format": "png"})
    assert _png(colour)[0, 0].tolist() == [200, 0, 0] and colour.window is None


def test_size_scales_down_only_and_parameters_are_checked():
    renderer = render.Renderer(_Store(_instance(np.zeros((64, 32), np.int16))))
    assert Image.open(io.BytesIO(renderer.render("i", 0, {"size": "32", "format": "png"}).body)).size == (16, 32)
    assert Image.open(io.BytesIO(renderer.render("i", 0, {"size": "512", "format": "png"}).body)).size == (32, 64)
    for bad in ({"format": "gif"}, {"ww": "0"}, {"wc": "x"}, {"size": "1"}):
        with pytest.raises(render.RenderError):
            renderer.render("i", 0, bad)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
def test_compressed_transfer_syntaxes_decode_to_the_uncompressed_values(name: str):
    from pydicom.data import get_testdata_file

    reference = render.decode(Path(get_testdata_file("MR_small.dcm")).read_bytes(), 0)
    frame = render.decode(Path(get_testdata_file(name)).read_bytes(), 0)
    assert np.array_equal(frame.values, reference.values) and not frame.lossy_source


def test_lossy_sources_are_flagged():
    from pydicom.data import get_testdata_file

    for name in ("SC_rgb_jpeg_dcmtk.dcm", "JPGExtended.dcm"):
        data = Path(get_testdata_file(name)).read_bytes()
        assert render.decode(data, 0).lossy_source
        assert render.Renderer(_Store(data)).render(
            "x", 0, {"format": "png"}).lossy
