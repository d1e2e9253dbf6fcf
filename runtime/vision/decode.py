"""Images as clients send them -> pixel arrays for VisionEngine.preprocess.

    decode_image(data, limits, fmt=None)          PNG / JPEG / DICOM bytes
    tensor_image(dtype, shape, data, limits)      raw pixels: uint8 0-255 or float32 0-1
    declared_pixels(data)                         width x height a PNG / JPEG header says
    decode_cost_pixels(data)                      the same, when the byte count fits it
    -> uint8 or float32 in [0, 1], (H, W) grey or (H, W, C) with C in 1, 3, 4

Formats come from the first bytes (PNG signature, JPEG SOI marker, "DICM" at byte
128 of a DICOM Part 10 file) unless the caller names one; a named DICOM may lack the
128-byte preamble. PNG and JPEG are decoded by Pillow, restricted to those two
formats; DICOM by pydicom (its codecs, or Pillow's, for compressed transfer syntaxes).

Limits are checked before any pixel is decoded (decompression bombs): the byte size
first, then the width x height that the header declares. Pillow's own guard
(Image.MAX_IMAGE_PIXELS) stays in place behind ours and reads as the same error.

DICOM pixels to [0, 1], per PS3.3 C.7.6.3 and C.11:
1. stored values -> modality values: Rescale Slope / Intercept (or a Modality LUT);
2. a VOI window (Window Center / Width, first pair; LINEAR, LINEAR_EXACT or SIGMOID)
   maps them to [0, 1]; without one, the whole range the stored bits can hold
   (8, 12, 16 ... bits, signed or not), passed through step 1, maps linearly to [0, 1],
   so an 8-bit image gives exactly the PNG pixels / 255;
3. MONOCHROME1 (minimum = white) is inverted;
4. RGB and YBR (converted to RGB by pydicom) are scaled by 2^BitsStored - 1;
   PALETTE COLOR goes through its lookup table.
Multi-frame datasets are refused (send one frame per image), and so are deflated ones
(their inflated size is unknown until they are read).
"""

from __future__ import annotations

import io
import math
import struct

import numpy as np

from runtime.errors import InvalidRequest
from runtime.vision.serving_config import ImageLimits

FORMATS = ("png", "jpeg", "dicom")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"  # start-of-image marker, then the first segment's marker
DICOM_PREFIX_AT = 128  # Part 10 files: a 128-byte preamble, then "DICM"
DICOM_PREFIX = b"DICM"
PILLOW_FORMATS = {"png": "PNG", "jpeg": "JPEG"}
DEFLATED_SYNTAX = b"1.2.840.10008.1.2.1.99"
TENSOR_DTYPES = {"uint8": np.dtype(np.uint8), "float32": np.dtype("<f4")}


JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers
JPEG_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD9)])  # no length field
JPEG_NO_FRAME_MARKERS = frozenset([0xD9, 0xDA])  # EOI or scan data before any frame header
JPEG_HEADER_SCAN_BYTES = 1 << 16  # EXIF and ICC segments before the frame header


class ImageError(InvalidRequest):
    """An image that cannot be used; `field` names it, e.g. images[2]."""


def detect_format(data: bytes) -> str | None:
    """"png" | "jpeg" | "dicom" from the first bytes; None when none of them."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SOI):
        return "jpeg"
    if data[DICOM_PREFIX_AT:DICOM_PREFIX_AT + len(DICOM_PREFIX)] == DICOM_PREFIX:
        return "dicom"
    return None


def declared_pixels(data: bytes) -> int | None:
    """Width x height from a PNG or JPEG header, without Pillow and without decoding.

    For deciding where to decode (the event loop takes small images itself); None
    when the bytes are neither or the header is not where it should be. Not a check:
    decode_image checks the same header, and the limits, again.
    """
    if data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])  # IHDR is always the first chunk
        return width * height
    if not data.startswith(JPEG_SOI):
        return None
    at, end = 2, min(len(data), JPEG_HEADER_SCAN_BYTES)
    while at + 4 <= end:
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker in JPEG_NO_FRAME_MARKERS:
            return None
        if marker == 0xFF:  # fill byte before a marker
            at += 1
        elif marker in JPEG_STANDALONE_MARKERS:
            at += 2
        elif marker in JPEG_SOF_MARKERS:
            if at + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            return width * height
        else:
            at += 2 + struct.unpack(">H", data[at + 2:at + 4])[0]
    return None


def decode_cost_pixels(data: bytes) -> int | None:
    """The pixels to budget for decoding `data`: its header's, if its size is plausible.

    A header can declare a tiny image in front of megabytes of other chunks or
    segments, which the decoder still walks through; so the declared size stands for
    the work only when the bytes could encode that many pixels (at most 8 per pixel,
    16-bit RGBA stored uncompressed, plus 1 KiB of headers). None otherwise.
    """
    pixels = declared_pixels(data)
    if pixels is None or len(data) > 8 * pixels + 1024:
        return None
    return pixels


def check_pixels(width: int, height: int, limits: ImageLimits, field: str) -> None:
    if width < 1 or height < 1:
        raise ImageError(field, f"the image is empty ({width} x {height} pixels)")
    if width * height > limits.max_pixels:
        raise ImageError(
            field, f"{width} x {height} = {width * height} pixels exceeds the limit "
                   f"max_pixels {limits.max_pixels}"
        )


def check_bytes(size: int, limits: ImageLimits, field: str) -> None:
    if size > limits.max_bytes:
        raise ImageError(field, f"{size} bytes exceeds the limit max_bytes {limits.max_bytes}")


def decode_image(data: bytes, limits: ImageLimits, fmt: str | None = None,
                 field: str = "image") -> np.ndarray:
    """Encoded bytes -> pixels; ImageError (an InvalidRequest) on anything wrong."""
    check_bytes(len(data), limits, field)
    if not data:
        raise ImageError(field, "no image bytes")
    detected = detect_format(data)
    if fmt is None:
        if detected is None:
            raise ImageError(field, f"not a PNG, JPEG or DICOM file (first bytes {data[:8]!r}); "
                                    "raw pixels go in a tensor")
        fmt = detected
    elif fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "dicom":
        return _decode_dicom(data, limits, field, has_preamble=detected == "dicom")
    return _decode_pillow(data, fmt, limits, field)


def tensor_image(dtype: str, shape: tuple[int, ...], data: bytes, limits: ImageLimits,
                 field: str = "image") -> np.ndarray:
    """Raw row-major little-endian pixels, (H, W) or (H, W, C) -> a read-only array."""
    check_bytes(len(data), limits, field)
    if dtype not in TENSOR_DTYPES:
        raise ImageError(f"{field}.dtype", f"must be one of {', '.join(TENSOR_DTYPES)}")
    if len(shape) not in (2, 3):
        raise ImageError(f"{field}.shape", f"must be [H, W] or [H, W, C], got {list(shape)}")
    if len(shape) == 3 and shape[2] not in (1, 3, 4):
        raise ImageError(f"{field}.shape", f"channels must be 1, 3 or 4, got {shape[2]}")
    check_pixels(shape[1], shape[0], limits, field)
    item = TENSOR_DTYPES[dtype]
    expected = math.prod(shape) * item.itemsize
    if len(data) != expected:
        raise ImageError(f"{field}.data", f"has {len(data)} bytes; shape {list(shape)} of "
                                          f"{dtype} needs {expected}")
    pixels = np.frombuffer(data, dtype=item).reshape(shape)
    if item.kind == "f":
        if not np.isfinite(pixels).all():
            raise ImageError(f"{field}.data", "float32 pixels must be finite")
        low, high = float(pixels.min()), float(pixels.max())
        if low < 0.0 or high > 1.0:
            raise ImageError(f"{field}.data", f"float32 pixels must be in [0, 1] (uint8 for "
                                              f"0-255), got values in [{low:g}, {high:g}]")
    return pixels


# ---- PNG and JPEG ------------------------------------------------------------------
def _decode_pillow(data: bytes, fmt: str, limits: ImageLimits, field: str) -> np.ndarray:
    from PIL import Image, ImageOps

    name = PILLOW_FORMATS[fmt]
    try:
        image = Image.open(io.BytesIO(data), formats=[name])  # reads the header only
    except Image.DecompressionBombError as e:
        raise ImageError(field, f"the header declares a decompression bomb ({_reason(e)}); "
                                f"exceeds the limit max_pixels {limits.max_pixels}") from None
    except Exception as e:  # noqa: BLE001 - untrusted bytes: every parser failure is a bad image
        raise ImageError(field, f"cannot decode {name}: {_reason(e)}") from None
    check_pixels(image.width, image.height, limits, field)
    try:
        # Camera JPEGs: rotate as the camera meant. In place: without an orientation
        # tag the copy it would return is about 15 % of a small PNG's decoding time.
        ImageOps.exif_transpose(image, in_place=True)
        return _pillow_pixels(image, field)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or corrupt pixel data
        raise ImageError(field, f"cannot decode {name}: {_reason(e)}") from None


def _pillow_pixels(image, field: str) -> np.ndarray:
    mode = image.mode
    if mode in ("L", "RGB", "RGBA"):
        return np.asarray(image)  # uint8
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode == "LA":
        return np.asarray(image.convert("L"))  # alpha carries no image content here
    if mode in ("P", "PA"):
        return np.asarray(image.convert("RGBA" if "transparency" in image.info or mode == "PA"
                                        else "RGB"))
    if mode in ("CMYK", "YCbCr"):
        return np.asarray(image.convert("RGB"))
    if mode.startswith("I;16") or mode == "I":  # 16-bit grey PNG
        pixels = np.asarray(image).astype(np.float32)
        if pixels.min() < 0 or pixels.max() > 65535:
            raise ImageError(field, f"unsupported {mode} pixel values outside 0-65535")
        return pixels / np.float32(65535.0)
    raise ImageError(field, f"unsupported image mode {mode!r}")


# ---- DICOM -------------------------------------------------------------------------
def _file_meta(data: bytes) -> bytes:
    """The File Meta group's bytes of a Part 10 file (explicit VR little endian, PS3.10 7.1).

    (0002,0000) UL group length comes first, right after the preamble and "DICM";
    without it, the first KiB stands in (the meta group is small).
    """
    start = DICOM_PREFIX_AT + len(DICOM_PREFIX)
    if data[start:start + 6] == b"\x02\x00\x00\x00UL":
        (length,) = struct.unpack_from("<I", data, start + 8)
        return data[start + 12:start + 12 + length]
    return data[start:start + 1024]


def _decode_dicom(data: bytes, limits: ImageLimits, field: str, has_preamble: bool) -> np.ndarray:
    import pydicom

    # A deflated dataset is inflated whole while it is read, before any header can be
    # checked: a few MB can inflate to GBs. Refused up front (PS3.5 A.5).
    if has_preamble and DEFLATED_SYNTAX in _file_meta(data):
        raise ImageError(field, f"DICOM transfer syntax Deflated Explicit VR Little Endian "
                                f"({DEFLATED_SYNTAX.decode()}) is not accepted: its inflated "
                                "size cannot be checked before reading; send it uncompressed")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
        photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
        rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        has_pixels = "PixelData" in ds
    except Exception as e:  # noqa: BLE001 - untrusted bytes: every parser failure is a bad image
        raise ImageError(field, f"cannot read DICOM: {_reason(e)}") from None
    if not has_pixels:
        raise ImageError(field, "the DICOM dataset has no Pixel Data")
    check_pixels(columns, rows, limits, field)
    if frames != 1:
        raise ImageError(field, f"multi-frame DICOM ({frames} frames) is not supported; "
                                "send each frame as its own image")
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR") and \
            not photometric.startswith("YBR_"):
        raise ImageError(field, f"unsupported DICOM Photometric Interpretation {photometric!r}")
    stored = _dicom_pixel_array(ds, field)
    try:
        if photometric.startswith("MONOCHROME"):
            pixels = _monochrome(stored, ds)
            return 1.0 - pixels if photometric == "MONOCHROME1" else pixels
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
            rgb = apply_color_lut(stored, ds)
            return (rgb.astype(np.float32) / np.float32(2**lut_bits - 1)).clip(0, 1)
        if stored.ndim != 3 or stored.shape[-1] != 3:
            raise ImageError(field, f"{photometric} DICOM pixels have shape {stored.shape}")
        bits = int(ds.get("BitsStored", 8))
        return (stored.astype(np.float32) / np.float32(2**bits - 1)).clip(0, 1)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - inconsistent header values (LUT, window, bits)
        raise ImageError(field, f"cannot convert DICOM pixels: {_reason(e)}") from None


def _dicom_pixel_array(ds, field: str) -> np.ndarray:
    """The stored values; a compressed syntax without an installed codec is named."""
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:  # no file meta (no preamble): the syntax pydicom parsed it with
        syntax = ds.file_meta.TransferSyntaxUID = _syntax_read_with(ds)
    name = f"{syntax.name} ({syntax})"
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageError(field, f"DICOM transfer syntax {name} is not supported") from None
    if not decoder.is_available:
        raise ImageError(field, f"DICOM transfer syntax {name} needs a codec that is not "
                                f"installed: {' or '.join(decoder.missing_dependencies)}")
    try:
        return ds.pixel_array
    except Exception as e:  # noqa: BLE001 - codec failures carry their reason in the message
        other = decoder.missing_dependencies
        hint = f"; other codecs for it: {' or '.join(other)}" if other else ""
        raise ImageError(field, f"cannot decode DICOM pixel data ({name}): {_reason(e)}{hint}") \
            from None


def _syntax_read_with(ds):
    """The uncompressed transfer syntax pydicom read a dataset without file meta with."""
    from pydicom.uid import (
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _monochrome(stored: np.ndarray, ds) -> np.ndarray:
    """(H, W) stored values -> float32 [0, 1] through the modality and VOI transforms."""
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    window = _window(ds)
    if window is not None:
        center, width, function = window
        return _apply_window(values, center, width, function).astype(np.float32)
    bits = int(ds.get("BitsStored", 8 * stored.dtype.itemsize))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ends = np.asarray(apply_modality_lut(np.array([low, high], dtype=np.int64), ds),
                      dtype=np.float64)
    lo, hi = float(ends.min()), float(ends.max())
    if hi <= lo:
        raise ValueError(f"the modality transform maps the stored range to one value {lo}")
    # lo and hi are the transformed ends whatever the slope's sign: lo -> 0, hi -> 1.
    return ((values - lo) / (hi - lo)).clip(0.0, 1.0).astype(np.float32)


def _window(ds) -> tuple[float, float, str] | None:
    """(center, width, function) of the first VOI window, or None without one."""
    from pydicom.multival import MultiValue

    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None

    def first(value) -> float:  # multi-valued (several windows): the first is the default
        return float(value[0] if isinstance(value, MultiValue) else value)

    center, width = first(ds.WindowCenter), first(ds.WindowWidth)
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise ValueError(f"unsupported VOI LUT Function {function!r}")
    if width <= 0 or (function == "LINEAR" and width < 1):
        raise ValueError(f"Window Width {width} is not valid for {function}")
    return center, width, function


def _apply_window(x: np.ndarray, c: float, w: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2: modality values -> [0, 1] display values."""
    if function == "LINEAR":
        if w == 1:  # the standard's degenerate window: a threshold at c - 0.5
            return (x > c - 0.5).astype(np.float64)
        return ((x - (c - 0.5)) / (w - 1) + 0.5).clip(0.0, 1.0)
    if function == "LINEAR_EXACT":
        return ((x - c) / w + 0.5).clip(0.0, 1.0)
    return 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))  # SIGMOID


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:300] if text else type(error).__name__
