"""Turn one image file into the bytes we upload: inspect, orient, flatten, shrink, encode.

``prepare_upload`` is called from worker threads, many at once, so it keeps no state between calls
and changes no global setting per call: Pillow's ``Image.MAX_IMAGE_PIXELS`` and
``ImageFile.LOAD_TRUNCATED_IMAGES`` are read, never written. Everything module-level happens once
at import: the HEIF opener is registered and Pillow's *warning* for large images is silenced,
because we enforce our own pixel limit (``max_pixels``) before any pixel is decoded.

The steps, in the order that makes them cheap:

1. Read the whole file once (``O_NONBLOCK`` so a FIFO cannot hang a worker); what we verify is
   exactly what we send. Zero bytes is "empty file".
2. ``Image.open`` parses only the header, restricted to a list of raster formats (EPS and friends
   would run external programs on ``load``). Width x height is checked against ``max_pixels``
   here, before decoding: a 100,000 x 100,000 PNG costs a few microseconds, not 30 GB.
3. ``draft`` asks libjpeg for a 1/2, 1/4 or 1/8 scale decode that is still at least the target
   size. A 12-MP JPEG then decodes to about 500 x 375: most of the speed of this module.
   (pillow-heif's ``draft`` picks an embedded HEIC thumbnail of at least that size, if any.)
   The decoder gets the whole buffer at once, not Pillow's 64 kB reads: another 15-20 %.
4. ``load`` decodes everything, so truncated data is found now (Pillow raises unless
   ``LOAD_TRUNCATED_IMAGES`` was switched on by someone else; then we look for the traces it
   leaves and still refuse the file).
5. Normalise the mode to L, RGB or RGBA (16-bit scaled, not clipped; palettes and transparency
   keys expanded), resize with a reducing gap (box-reduce, then Lanczos), composite alpha over
   white, and only then apply the EXIF orientation: transposing 256 x 341 pixels is free,
   transposing 12 MP is not.
   The orientation is read after ``load``: Pillow's TIFF plugin and pillow-heif rotate while
   loading and then drop the tag, so reading it earlier would rotate those twice.
6. Encode a baseline JPEG from a fresh image with no metadata (no EXIF, ICC, DPI), so the same
   pixels always give the same bytes whatever metadata the original carried. ``optimize`` is
   on: about 6 % fewer bytes for 0.4 ms, next to a 30 ms decode. ICC profiles are dropped, not
   applied: a wide-gamut photo comes out slightly desaturated, which a classifier shrugs off.

Every failure comes out as ``ImageError`` with a short reason; nothing else escapes.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
from dataclasses import dataclass

import pillow_heif
from PIL import Image, ImageFile, UnidentifiedImageError

from cfclassify.errors import ImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DECODABLE_FORMATS",
    "Upload",
    "prepare_upload",
    "shrink_upload",
]

# Pillow's own hard limit: Image.open raises above 2 x MAX_IMAGE_PIXELS (2 x 89,478,485) and
# only warns between the two. A larger max_pixels cannot take effect without raising Pillow's
# global, which a library called from threads must not do per call (the CLI could, once).
DEFAULT_MAX_PIXELS = 178_956_970
MIN_SHRINK_SIDE = 64

# Formats we agree to decode. Image.open would otherwise also identify EPS (Ghostscript on
# load), FITS, PSD, ... ; a file we refuse here is reported as "unsupported image format".
DECODABLE_FORMATS: tuple[str, ...] = (
    "JPEG",  # also yields "MPO" for multi-picture JPEGs
    "PNG",
    "GIF",
    "WEBP",
    "BMP",
    "DIB",
    "TIFF",
    "HEIF",
    "AVIF",
    "ICO",
    "PPM",
    "TGA",
    "QOI",
    "JPEG2000",
)

# The MIME type for sending an original unchanged. MPO is a JPEG with extra frames appended
# (most camera and phone JPEGs with a depth map or preview): any JPEG reader takes it.
_CONTENT_TYPES = {"MPO": "image/jpeg", "HEIF": "image/heif", "AVIF": "image/avif"}

_ORIENTATION_TAG = 0x0112
# The same table as ImageOps.exif_transpose; we apply it to the small image, after resizing.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = {5, 6, 7, 8}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")

# Once, at import: HEIC/HEIF through pillow-heif (AVIF is native in Pillow >= 11.3).
pillow_heif.register_heif_opener()
# Pillow warns between MAX_IMAGE_PIXELS and twice that; we apply our own max_pixels instead, and
# warnings.catch_warnings() per call would not be thread-safe.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Image.open raises KeyError for a format name no plugin registered (JPEG2000 without OpenJPEG).
Image.init()
_OPENABLE = tuple(fmt for fmt in DECODABLE_FORMATS if fmt in Image.OPEN)


@dataclass(frozen=True, slots=True)
class Upload:
    """What is sent for one image, and what we learnt about the original on the way."""

    data: bytes
    content_type: str  # "image/jpeg", or the original's MIME type when sent as-is
    format: str  # the original's format as Pillow names it: "JPEG", "PNG", "HEIF", ...
    width: int  # original size, after EXIF orientation
    height: int
    upload_width: int
    upload_height: int


def prepare_upload(
    path: str | os.PathLike[str],
    *,
    short_side: int = 256,
    quality: int = 90,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Upload:
    """Return the upload for ``path``: a JPEG whose shorter side is ``short_side`` (never
    upscaled), or the original bytes when ``short_side`` is 0. Raises ``ImageError`` only.

    >>> prepare_upload("IMG_0001.jpg").upload_height  # doctest: +SKIP
    256
    """
    if short_side < 0:
        # A caller's bug (config validates this), not a property of the file: not ImageError.
        raise ValueError("short_side must be >= 0")
    name = os.fsdecode(path)
    data = _read_file(path, name)
    if short_side == 0:
        info = _decode(data, name, max_pixels=max_pixels, target_short=None)
        content_type = _CONTENT_TYPES.get(info.format) or Image.MIME.get(
            info.format, "application/octet-stream"
        )
        return Upload(
            data=data,
            content_type=content_type,
            format=info.format,
            width=info.width,
            height=info.height,
            upload_width=info.width,
            upload_height=info.height,
        )
    return _encode(data, name, short_side=short_side, quality=quality, max_pixels=max_pixels)


def shrink_upload(
    path: str | os.PathLike[str],
    previous: Upload,
    *,
    quality: int = 90,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Upload:
    """Re-encode after a 413: half the previous shorter side (not below 64), then lower quality,
    until the upload has fewer bytes than ``previous``. Raises ``ImageError`` if it cannot.
    """
    name = os.fsdecode(path)
    data = _read_file(path, name)
    side = min(previous.upload_width, previous.upload_height)
    half = max(MIN_SHRINK_SIDE, side // 2)
    target = min(half, side)
    # Halving the side quarters the pixels; when the image is already tiny (or was sent as an
    # original that re-encodes badly) lower quality is what is left to trade.
    attempts = [(target, quality)] + [(target, min(quality, q)) for q in (75, 60, 40)]
    best: Upload | None = None
    for short_side, q in dict.fromkeys(attempts):
        upload = _encode(data, name, short_side=short_side, quality=q, max_pixels=max_pixels)
        if best is None or len(upload.data) < len(best.data):
            best = upload
        # A clear win (at most 3/4 of the bytes) ends the search; a small one is kept as a fallback.
        if len(upload.data) * 4 <= len(previous.data) * 3:
            return upload
    if best is not None and len(best.data) < len(previous.data):
        return best
    raise ImageError(f"cannot shrink the upload below {len(previous.data)} bytes", path=name)


# --- internals -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Decoded:
    image: Image.Image  # loaded, still in its own mode, possibly reduced by draft
    format: str
    width: int  # original size after EXIF orientation
    height: int
    orientation: int


def _read_file(path: str | os.PathLike[str], name: str) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ImageError("not a regular file", path=name)
            data = f.read()
    except FileNotFoundError as exc:
        raise ImageError("file vanished", path=name) from exc
    except PermissionError as exc:
        raise ImageError("permission denied", path=name) from exc
    except IsADirectoryError as exc:
        raise ImageError("not a regular file", path=name) from exc
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}", path=name) from exc
    if not data:
        raise ImageError("empty file", path=name)
    return data


class _WatchedBytes(io.BytesIO):
    """A BytesIO that remembers whether a reader asked for data after the end."""

    hit_eof = False

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        if not chunk and size is not None and size > 0:
            self.hit_eof = True
        return chunk


def _open(data: bytes, name: str, max_pixels: int) -> tuple[ImageFile.ImageFile, _WatchedBytes]:
    fp = _WatchedBytes(data)
    try:
        im = Image.open(fp, formats=_OPENABLE)
    except Image.DecompressionBombError as exc:
        # Pillow's own hard limit struck while parsing the header: report it in our words.
        match = _BOMB_PIXELS.search(str(exc))
        pixels = int(match.group(1)) if match else 0
        limit = max_pixels
        if Image.MAX_IMAGE_PIXELS is not None and pixels <= max_pixels:
            limit = 2 * Image.MAX_IMAGE_PIXELS
        shown = str(pixels) if pixels else "?"
        raise ImageError(f"too many pixels ({shown} > {limit})", path=name) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(_unidentified_reason(data), path=name) from exc
    except Exception as exc:
        raise ImageError(_decode_reason(exc, data), path=name) from exc
    assert isinstance(im, ImageFile.ImageFile)
    return im, fp


def _unidentified_reason(data: bytes) -> str:
    # Only on the failure path: a cut-off WebP/HEIC/AVIF is often not even recognised; or is it
    # an image format we chose not to decode?
    if _container_truncated(data):
        return "truncated image data"
    try:
        with Image.open(io.BytesIO(data)) as other:
            fmt = other.format
    except Exception:
        return "not an image"
    return f"unsupported image format ({fmt})"


def _decode_reason(exc: BaseException, data: bytes) -> str:
    text = str(exc)
    lowered = text.lower()
    if (
        "truncated" in lowered
        or "end of file" in lowered
        or isinstance(exc, EOFError)
        or _container_truncated(data)
    ):
        return "truncated image data"
    if "decoder" in text and "not available" in text:
        return f"unsupported image encoding ({text})"
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    return f"cannot decode image: {text or type(exc).__name__}"


def _decode(data: bytes, name: str, *, max_pixels: int, target_short: int | None) -> _Decoded:
    # Not closed: the source is our own BytesIO, and close() would free the decoded pixels.
    im, fp = _open(data, name, max_pixels)
    try:
        fmt = im.format or "unknown"
        width, height = im.size
        if width * height > max_pixels:
            raise ImageError(f"too many pixels ({width * height} > {max_pixels})", path=name)
        if target_short is None:
            # Only verifying: a 1/8 JPEG decode still reads (and so checks) every byte. Not for
            # HEIF, whose draft would pick an embedded thumbnail and check only that.
            if fmt in ("JPEG", "MPO"):
                im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
        elif target_short < min(width, height):
            # JPEG: scaled DCT decode. HEIF: an embedded thumbnail of at least this size, if any.
            im.draft("RGB", _target_size(width, height, target_short))
        # The data is in memory already: hand it to the decoder in one piece instead of 64 kB
        # reads that Pillow concatenates (15-20 % of a 12-MP decode). Per instance, not global.
        im.decodermaxblock = max(im.decodermaxblock, len(data))
        im.load()
        if ImageFile.LOAD_TRUNCATED_IMAGES and (
            getattr(im, "_ended", False) or fp.hit_eof or _container_truncated(data)
        ):
            # Someone switched truncation tolerance on process-wide; we still refuse.
            raise ImageError("truncated image data", path=name)
        # After load: Pillow's TIFF plugin applies and removes the orientation while loading.
        orientation = _orientation(im)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(_decode_reason(exc, data), path=name) from exc
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    return _Decoded(im, fmt, width, height, orientation)


def _container_truncated(data: bytes) -> bool:
    """True when a RIFF (WebP) or ISO-BMFF (HEIF, AVIF) file declares more bytes than it has.

    Their decoders report a cut-off file in their own words ("could not create decoder
    object", or not recognised at all), and pillow-heif decodes it to a blank picture when
    LOAD_TRUNCATED_IMAGES is on; the container's own lengths say plainly what happened.
    """
    size = len(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        declared: int = struct.unpack("<I", data[4:8])[0]
        return declared + 8 > size
    if data[4:8] != b"ftyp":
        return False
    pos = 0
    while pos + 8 <= size:
        box: int = struct.unpack(">I", data[pos : pos + 4])[0]
        if box == 1 and pos + 16 <= size:
            box = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        elif box == 0:
            return False  # "to the end of the file"
        if box < 8:
            return False  # malformed, not merely short: let the decoder's message stand
        if pos + box > size:
            return True
        pos += box
    return pos != size


def _orientation(im: Image.Image) -> int:
    # A broken EXIF block is the photo's problem, not a reason to fail it: treat as upright.
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
        return int(value) if int(value) in _TRANSPOSE else 1
    except Exception:
        return 1


def _target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    if width <= height:
        return short_side, max(1, round(height * short_side / width))
    return max(1, round(width * short_side / height)), short_side


def _normalise_mode(im: Image.Image) -> Image.Image:
    """Bring any mode to L, RGB or RGBA, keeping the picture (no clipping, no lost alpha)."""
    mode = im.mode
    if mode in ("L", "RGB", "RGBA") and "transparency" not in im.info:
        return im
    if mode.startswith("I;16"):
        # 16-bit samples: scale to 8 bits. convert("L") alone would clip everything above 255.
        return im.convert("I").point(lambda v: v * (1 / 257)).convert("L")
    if mode in ("I", "F"):
        # 32-bit int or float samples have no fixed range: stretch what is there to 0..255.
        extrema = im.getextrema()
        assert isinstance(extrema[0], (int, float)) and isinstance(extrema[1], (int, float))
        low, high = float(extrema[0]), float(extrema[1])
        scale = 255 / (high - low) if high != low else 0.0
        return im.point(lambda v: (v - low) * scale).convert("L")
    if mode == "1":
        return im.convert("L")
    if mode in _ALPHA_MODES or "transparency" in im.info:
        return im.convert("RGBA")
    return im.convert("RGB")


def _flatten(im: Image.Image) -> Image.Image:
    """RGBA over white, as a viewer shows it; L becomes RGB."""
    if im.mode == "RGBA":
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im, mask=im.getchannel("A"))
        return background
    if im.mode != "RGB":
        return im.convert("RGB")
    return im


def _encode(data: bytes, name: str, *, short_side: int, quality: int, max_pixels: int) -> Upload:
    decoded = _decode(data, name, max_pixels=max_pixels, target_short=short_side)
    try:
        im = _normalise_mode(decoded.image)
        w, h = (
            (decoded.height, decoded.width)
            if decoded.orientation in _SWAPS_SIDES
            else (decoded.width, decoded.height)
        )
        if short_side < min(w, h):
            size = _target_size(w, h, short_side)
            if im.size != size:
                # reducing_gap: integer box-reduce first, Lanczos for the last factor < 3.
                im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        elif im.size != (w, h):
            im = im.resize((w, h), Image.Resampling.LANCZOS)
        im = _flatten(im)
        if decoded.orientation in _TRANSPOSE:
            im = im.transpose(_TRANSPOSE[decoded.orientation])
        # A fresh image: no info dict, so no EXIF / ICC / DPI can reach the encoder.
        clean = Image.frombytes("RGB", im.size, im.tobytes())
        out = io.BytesIO()
        # optimize: Huffman tables fitted to the image, ~6 % fewer bytes for ~0.4 ms at 256 px.
        clean.save(out, "JPEG", quality=quality, optimize=True)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(_decode_reason(exc, data), path=name) from exc
    return Upload(
        data=out.getvalue(),
        content_type="image/jpeg",
        format=decoded.format,
        width=decoded.width,
        height=decoded.height,
        upload_width=clean.width,
        upload_height=clean.height,
    )
