"""Image decoding for Classify: PNG, JPEG, DICOM (built here and pydicom's samples), tensors.

Expected pixels are computed here from the DICOM standard's formulas, not by the
decoder's own helpers, and compared with what decode_image returns.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from runtime.vision.decode import (
    ImageError,
    declared_pixels,
    decode_cost_pixels,
    decode_image,
    detect_format,
    tensor_image,
)
from runtime.vision.serving_config import ImageLimits

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

LIMITS = ImageLimits()
RNG = np.random.default_rng(7)


def _png(array: np.ndarray, **save) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG", **save)
    return out.getvalue()


def _jpeg(array: np.ndarray, **save) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=95, subsampling=0, **save)
    return out.getvalue()


def _dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 8,
           preamble: bool = True, **elements) -> bytes:
    """A Part 10 file (explicit VR little endian) holding `pixels` as stored values."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels.astype(pixels.dtype.newbyteorder("<"))).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=preamble)
    data = out.getvalue()
    return data if preamble else data[data.index(b"\x08\x00"):]  # the dataset alone


# ---- PNG and JPEG ----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(9, 13), (9, 13, 3), (9, 13, 4)])
def test_png_round_trip_is_exact(shape):
    image = RNG.integers(0, 256, size=shape, dtype=np.uint8)
    data = _png(image)
    assert detect_format(data) == "png"
    decoded = decode_image(data, LIMITS)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, image)


def test_png_16_bit_palette_and_bilevel():
    grey16 = RNG.integers(0, 65536, size=(6, 5), dtype=np.uint16)
    np.testing.assert_allclose(decode_image(_png(grey16), LIMITS), grey16 / 65535.0, atol=1e-7)
    rgb = RNG.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(colors=256)
    out = io.BytesIO()
    palette.save(out, format="PNG")
    np.testing.assert_array_equal(decode_image(out.getvalue(), LIMITS),
                                  np.asarray(palette.convert("RGB")))
    bits = Image.fromarray(RNG.integers(0, 2, size=(6, 5), dtype=np.uint8) * 255).convert("1")
    out = io.BytesIO()
    bits.save(out, format="PNG")
    np.testing.assert_array_equal(decode_image(out.getvalue(), LIMITS),
                                  np.asarray(bits.convert("L")))


def test_jpeg_decodes_like_pillow_and_close_to_the_source():
    image = np.kron(RNG.integers(0, 256, size=(4, 4, 3), dtype=np.uint8),
                    np.ones((8, 8, 1), np.uint8))  # flat 8x8 blocks: little JPEG loss
    data = _jpeg(image)
    assert detect_format(data) == "jpeg"
    decoded = decode_image(data, LIMITS)
    np.testing.assert_array_equal(decoded, np.asarray(Image.open(io.BytesIO(data))))
    assert np.abs(decoded.astype(int) - image).mean() < 4


def test_jpeg_exif_orientation_is_applied():
    image = RNG.integers(0, 256, size=(8, 16, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    decoded = decode_image(_jpeg(image, exif=exif.tobytes()), LIMITS)
    assert decoded.shape == (16, 8, 3)


# ---- DICOM built here ------------------------------------------------------------------
def test_dicom_monochrome2_8_bit_equals_the_png_pixels():
    image = RNG.integers(0, 256, size=(10, 7), dtype=np.uint8)
    data = _dicom(image)
    assert detect_format(data) == "dicom"
    np.testing.assert_allclose(decode_image(data, LIMITS), image / 255.0, atol=1e-6)


def test_dicom_monochrome1_is_inverted():
    image = RNG.integers(0, 256, size=(10, 7), dtype=np.uint8)
    decoded = decode_image(_dicom(image, "MONOCHROME1"), LIMITS)
    np.testing.assert_allclose(decoded, 1.0 - image / 255.0, atol=1e-6)


def test_dicom_12_bit_with_rescale_and_linear_window():
    stored = RNG.integers(0, 4096, size=(12, 9), dtype=np.uint16)
    slope, intercept, center, width = 0.5, -1000.0, -200.0, 801.0
    data = _dicom(stored, bits_stored=12, RescaleSlope=slope, RescaleIntercept=intercept,
                  WindowCenter=center, WindowWidth=width)
    hu = stored * slope + intercept
    # PS3.3 C.11.2.1.2.1, LINEAR: ((x - (c - 0.5)) / (w - 1) + 0.5), clipped to [0, 1]
    expected = np.clip((hu - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(decode_image(data, LIMITS), expected, atol=1e-6)


def test_dicom_16_bit_signed_without_window_spans_the_stored_range():
    stored = RNG.integers(-32768, 32768, size=(8, 8), dtype=np.int16)
    data = _dicom(stored, bits_stored=16, RescaleSlope=2.0, RescaleIntercept=-5.0)
    # No window: the range the stored bits can hold maps to [0, 1] (the rescale is linear,
    # so it cancels out).
    expected = (stored.astype(np.float64) + 32768) / 65535
    np.testing.assert_allclose(decode_image(data, LIMITS), expected, atol=1e-6)


def test_dicom_16_bit_unsigned_with_negative_slope_keeps_the_order_of_values():
    stored = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)
    data = _dicom(stored, bits_stored=16, RescaleSlope=-1.0, RescaleIntercept=0.0)
    decoded = decode_image(data, LIMITS)
    np.testing.assert_allclose(decoded, 1.0 - stored / 65535.0, atol=1e-6)


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID"])
def test_dicom_other_voi_functions(function):
    stored = RNG.integers(0, 4096, size=(6, 6), dtype=np.uint16)
    center, width = 2000.0, 1500.0
    data = _dicom(stored, bits_stored=12, WindowCenter=center, WindowWidth=width,
                  VOILUTFunction=function)
    x = stored.astype(np.float64)
    expected = (np.clip((x - center) / width + 0.5, 0, 1) if function == "LINEAR_EXACT"
                else 1 / (1 + np.exp(-4 * (x - center) / width)))
    np.testing.assert_allclose(decode_image(data, LIMITS), expected, atol=1e-6)


def test_dicom_rgb_8_bit():
    image = RNG.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    decoded = decode_image(_dicom(image, "RGB"), LIMITS)
    np.testing.assert_allclose(decoded, image / 255.0, atol=1e-6)


def test_dicom_without_preamble_needs_the_format_named():
    image = RNG.integers(0, 256, size=(4, 4), dtype=np.uint8)
    data = _dicom(image, preamble=False)
    assert detect_format(data) is None
    with pytest.raises(ImageError, match="not a PNG, JPEG or DICOM"):
        decode_image(data, LIMITS)
    np.testing.assert_allclose(decode_image(data, LIMITS, "dicom"), image / 255.0, atol=1e-6)


def test_dicom_without_pixels_or_with_several_frames_is_refused():
    image = RNG.integers(0, 256, size=(4, 4), dtype=np.uint8)
    ds = pydicom.dcmread(io.BytesIO(_dicom(image)))
    del ds.PixelData
    out = io.BytesIO()
    ds.save_as(out)
    with pytest.raises(ImageError, match="no Pixel Data"):
        decode_image(out.getvalue(), LIMITS)
    frames = RNG.integers(0, 256, size=(8, 4), dtype=np.uint8)  # 2 frames of 4 x 4
    data = _dicom(frames[:4], NumberOfFrames=2)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PixelData = frames.tobytes()
    out = io.BytesIO()
    ds.save_as(out)
    with pytest.raises(ImageError, match=r"multi-frame DICOM \(2 frames\)"):
        decode_image(out.getvalue(), LIMITS)


# ---- pydicom's sample files ------------------------------------------------------------
def _sample(name: str) -> bytes:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not bundled with pydicom {pydicom.__version__} (download-only)")
    with open(path, "rb") as f:
        return f.read()


def test_sample_ct_uses_its_rescale_and_stored_range():
    data = _sample("CT_small.dcm")
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.PhotometricInterpretation == "MONOCHROME2" and "WindowCenter" not in ds
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    hu = ds.pixel_array * slope + intercept
    expected = (hu - (low * slope + intercept)) / ((high - low) * slope)
    decoded = decode_image(data, LIMITS)
    assert decoded.shape == (ds.Rows, ds.Columns)
    np.testing.assert_allclose(decoded, expected, atol=1e-6)


def test_sample_rle_compressed_mr_equals_the_uncompressed_one():
    np.testing.assert_array_equal(decode_image(_sample("MR_small_RLE.dcm"), LIMITS),
                                  decode_image(_sample("MR_small.dcm"), LIMITS))


@pytest.mark.parametrize("name", ["SC_rgb_small_odd.dcm", "SC_ybr_full_422_uncompressed.dcm",
                                  "examples_palette.dcm", "SC_rgb_jpeg.dcm", "JPEG2000.dcm",
                                  "SC_rgb_rle_16bit.dcm", "ExplVR_BigEnd.dcm"])
def test_sample_files_decode_to_unit_range(name):
    data = _sample(name)
    ds = pydicom.dcmread(io.BytesIO(data))
    decoded = decode_image(data, LIMITS)
    assert decoded.shape[:2] == (ds.Rows, ds.Columns)
    assert decoded.dtype == np.float32 and 0.0 <= decoded.min() <= decoded.max() <= 1.0
    assert decoded.max() > decoded.min()
    if ds.PhotometricInterpretation == "RGB" and ds.BitsStored == 8:
        np.testing.assert_allclose(decoded, ds.pixel_array / 255.0, atol=1e-6)


def test_sample_needing_a_missing_codec_names_the_syntax_and_the_codecs():
    data = _sample("MR_small_jpeg_ls_lossless.dcm")
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS codec is installed here")
    with pytest.raises(ImageError) as error:
        decode_image(data, LIMITS)
    message = str(error.value)
    assert "JPEG-LS Lossless Image Compression" in message and "1.2.840.10008.1.2.4.80" in message
    assert "needs a codec that is not installed" in message and "pylibjpeg" in message


def test_sample_deflated_dataset_is_refused_before_it_is_inflated():
    with pytest.raises(ImageError, match=r"Deflated Explicit VR Little Endian "
                                         r"\(1.2.840.10008.1.2.1.99\) is not accepted"):
        decode_image(_sample("image_dfl.dcm"), LIMITS)


def test_sample_truncated_pixel_data_is_a_clear_error():
    with pytest.raises(ImageError, match="cannot decode DICOM pixel data"):
        decode_image(_sample("MR_truncated.dcm"), LIMITS)


# ---- raw tensors -----------------------------------------------------------------------
def test_tensors_uint8_and_float32():
    image = RNG.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(tensor_image("uint8", (5, 4, 3), image.tobytes(), LIMITS), image)
    grey = RNG.random((5, 4), dtype=np.float32)
    np.testing.assert_array_equal(
        tensor_image("float32", (5, 4), grey.astype("<f4").tobytes(), LIMITS), grey)


@pytest.mark.parametrize("dtype, shape, data, message", [
    ("uint8", (5, 4), b"\0" * 19, r"images\[0\]\.data: has 19 bytes; shape \[5, 4\]"),
    ("uint8", (5, 4, 2), b"\0" * 40, r"channels must be 1, 3 or 4"),
    ("uint8", (20,), b"\0" * 20, r"must be \[H, W\] or \[H, W, C\]"),
    ("uint8", (0, 4), b"", r"the image is empty"),
    ("int16", (2, 2), b"\0" * 8, r"images\[0\]\.dtype"),
    ("float32", (1, 2), np.array([0.5, 2.0], "<f4").tobytes(), r"must be in \[0, 1\]"),
    ("float32", (1, 2), np.array([0.5, np.nan], "<f4").tobytes(), r"must be finite"),
])
def test_bad_tensors_name_the_field(dtype, shape, data, message):
    with pytest.raises(ImageError, match=message):
        tensor_image(dtype, shape, data, LIMITS, "images[0]")


# ---- limits and corrupt bytes ----------------------------------------------------------
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with no pixel data at all."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    limits = ImageLimits(max_pixels=10_000)
    with pytest.raises(ImageError, match=r"5000 x 4000 = 20000000 pixels exceeds the "
                                         r"limit max_pixels 10000"):
        decode_image(_png_header_only(5_000, 4_000), limits)
    # Beyond Pillow's own bomb guard (2 x Image.MAX_IMAGE_PIXELS) the message still names ours.
    with pytest.raises(ImageError, match=r"max_pixels 25000000"):
        decode_image(_png_header_only(60_000, 60_000), LIMITS)
    # A DICOM header declaring 40000 rows x 50000 columns over 16 bytes of pixel data.
    bomb = _dicom(np.zeros((4, 4), np.uint8), Rows=40_000, Columns=50_000)
    with pytest.raises(ImageError, match=r"50000 x 40000 = 2000000000 pixels .* max_pixels 10000"):
        decode_image(bomb, limits)


def test_byte_limit():
    data = _png(RNG.integers(0, 256, size=(32, 32), dtype=np.uint8))
    with pytest.raises(ImageError, match=rf"images\[1\]: {len(data)} bytes exceeds the limit "
                                         r"max_bytes 100"):
        decode_image(data, ImageLimits(max_bytes=100), field="images[1]")


@pytest.mark.parametrize("make, message", [
    (lambda: _png(RNG.integers(0, 256, (30, 30), dtype=np.uint8))[:500], "cannot decode PNG"),
    (lambda: _jpeg(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8))[:200], "cannot decode JPEG"),
    (lambda: b"\x89PNG\r\n\x1a\n" + bytes(40), "cannot decode PNG"),
    (lambda: bytes(128) + b"DICM" + RNG.bytes(300), "cannot (read|decode) DICOM|no Pixel Data"),
    (lambda: b"GIF89a" + bytes(20), "not a PNG, JPEG or DICOM"),
    (lambda: b"", "no image bytes"),
])
def test_corrupt_bytes_are_invalid_requests(make, message):
    with pytest.raises(ImageError, match=message):
        decode_image(make(), LIMITS)


def test_a_named_format_that_does_not_match_fails_cleanly():
    data = _png(np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageError, match="cannot decode JPEG"):
        decode_image(data, LIMITS, "jpeg")


@pytest.mark.parametrize("shape", [(28, 28, 3), (17, 33), (300, 41, 3)])
def test_declared_pixels_reads_png_and_jpeg_headers_as_pillow_does(shape):
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # an APP1 segment before the JPEG frame header
    for data in (_png(image), _jpeg(image, exif=exif.tobytes()),
                 _jpeg(image, progressive=True), _png(image, compress_level=0)):
        assert declared_pixels(data) == shape[0] * shape[1]
        assert decode_cost_pixels(data) == shape[0] * shape[1]
        assert Image.open(io.BytesIO(data)).size == (shape[1], shape[0])


def test_declared_pixels_is_none_when_not_cheaply_known():
    jpeg = _jpeg(np.zeros((8, 8, 3), np.uint8))
    assert declared_pixels(jpeg[:40]) is None  # cut before the frame header
    assert declared_pixels(b"not an image") is None and declared_pixels(b"") is None
    # An end-of-image marker before any frame header: no size, whatever follows it.
    fake_frame = b"\xff\xc0\x00\x11\x08\x00\x04\x00\x04\x03" + b"\0" * 9
    assert declared_pixels(b"\xff\xd8\xff\xd9" + fake_frame) is None
    assert declared_pixels(b"\xff\xd8" + fake_frame) == 16
    assert declared_pixels(_dicom(np.zeros((4, 4), np.uint8))) is None
    # A tiny declared image in front of megabytes of other chunks is not a small job.
    png = _png(np.zeros((4, 4), np.uint8))
    text = b"k\x00" + b"x" * 100_000
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(
        ">I", zlib.crc32(b"tEXt" + text))
    padded = png[:33] + chunk + png[33:]  # after the signature and IHDR
    assert Image.open(io.BytesIO(padded)).size == (4, 4)
    assert declared_pixels(padded) == 16 and decode_cost_pixels(padded) is None
