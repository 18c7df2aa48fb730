"""Generated image corpora for the demo, the tests and the benchmarks: seeded, so reproducible.

Three things are made here, all from nothing but Pillow (and pillow-heif for HEIC):

* ``make_photo``: one photo-like image. Real photos compress to 2-4 bits a pixel as JPEG; a flat
  colour compresses to almost nothing and white noise not at all, and either would make the
  upload-size and throughput numbers lie. So a photo here is a smooth colour field (a 4 x 3
  random image upscaled bicubically), a dozen soft-edged shapes, mid-frequency texture and a fine
  grain. Everything is drawn at low resolution or tiled and then scaled by Pillow in C: a
  12-MP photo takes well under a second and comes out around 3-4 MB, like a phone's.
* ``make_sample_tree``: a small archive as a user has one: nested folders, upper-case
  extensions, duplicates at other paths, a broken file, a hidden folder and a stray text file.
* ``make_hostile_tree``: every kind of file that has broken an image pipeline before.

Determinism: all randomness comes from ``random.Random(seed)``, and the encoders are fed the
same pixels with the same options, so the same seed gives the same bytes (with the same Pillow).
"""

from __future__ import annotations

import io
import os
import random
import struct
import sys
import zlib
from pathlib import Path

import pillow_heif
from PIL import Image, ImageDraw, features

__all__ = ["make_photo", "make_sample_tree", "make_hostile_tree", "truncate"]

# HEIF saving comes from pillow-heif; registering twice is harmless.
pillow_heif.register_heif_opener()

_FOLDERS = (
    "2023/summer",
    "2023/winter",
    "2024/trip/day 1",
    "2024/trip/day 2",
    "phone/DCIM/100APPLE",
    "scans",
)
# (extension, format): the walker must match extensions case-insensitively.
_KINDS = (
    (".jpg", "JPEG"),
    (".JPG", "JPEG"),
    (".jpeg", "JPEG"),
    (".png", "PNG"),
    (".JPEG", "JPEG"),
    (".webp", "WEBP"),
    (".jpg", "JPEG"),
    (".PNG", "PNG"),
)
_GRAIN_TILE = 509  # prime, so the tiled grain does not line up with JPEG's 8 x 8 blocks


def make_photo(seed: int, size: tuple[int, int] = (640, 480), fmt: str = "JPEG") -> bytes:
    """Return a photo-like image of ``size`` encoded as ``fmt`` (any format Pillow can save).

    >>> len(make_photo(1)) > 20_000
    True
    """
    return _encode(_photo(seed, size), fmt)


def make_sample_tree(
    root: Path, *, unique: int = 40, duplicates: int = 20, broken: int = 1, seed: int = 0
) -> dict[str, int]:
    """Write a small photo archive under ``root`` and return what it holds.

    Keys: ``unique`` distinct good images, ``duplicates`` byte-copies of those at other paths,
    ``broken`` truncated JPEGs, ``image_files`` (the three together: what a walker finds),
    ``hidden`` images under a hidden folder (a walker skips them), ``non_image`` other files,
    ``files`` everything written.
    """
    root = Path(root)
    written: list[Path] = []
    for i in range(unique):
        ext, fmt = _KINDS[i % len(_KINDS)]
        rng = random.Random(seed * 1_000_003 + i)
        width, height = rng.choice(((320, 240), (400, 300), (480, 360), (240, 320), (300, 400)))
        rel = Path(_FOLDERS[i % len(_FOLDERS)]) / f"IMG_{i + 1:04d}{ext}"
        _write(root / rel, make_photo(seed * 1_000_003 + i, (width, height), fmt))
        written.append(rel)
    for k in range(duplicates):
        if not written:
            break
        source = written[k % len(written)]
        # Alternate between a mirrored backup tree and a renamed copy somewhere else.
        if k % 2 == 0:
            rel = Path("backup") / f"copy {k // len(written) + 1}" / source
        else:
            rel = Path("Shared Album") / f"{k:03d} {source.name}"
        _write(root / rel, (root / source).read_bytes())
    for b in range(broken):
        data = make_photo(seed * 1_000_003 + 900_000 + b, (320, 240))
        _write(root / "scans" / f"broken_{b + 1}.jpg", truncate(data))
    _write(root / ".thumbnails" / "hidden.jpg", make_photo(seed * 1_000_003 + 999_999, (160, 120)))
    _write(root / "notes.txt", b"Holiday photos. Not an image.\n")
    image_files = unique + (duplicates if unique else 0) + broken
    return {
        "unique": unique,
        "duplicates": duplicates if unique else 0,
        "broken": broken,
        "image_files": image_files,
        "hidden": 1,
        "non_image": 1,
        "files": image_files + 2,
    }


def make_hostile_tree(root: Path) -> dict[str, str]:
    """Write every awkward file we know of into ``root`` (flat) and return
    ``{file name: "ok" | "failed"}``, the outcome a correct pipeline reaches.

    Names are ``os.fsdecode`` of the on-disk name (one is not valid UTF-8 on POSIX). Contents
    the tests rely on: ``exif-rotated-6.jpg`` is stored 640 x 480 with its top quarter pure red
    (displayed upright, red is on the right); ``palette-transparent.png``, ``alpha.webp`` are
    transparent outside a central red disc (black under the alpha); ``animated.gif`` has a red
    first frame, then green and blue; ``gray16.png`` is a 16-bit horizontal ramp 0..65535.
    Formats this Pillow cannot write (HEIC, AVIF) are left out of the tree and the result.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[bytes, str]] = {}

    good = make_photo(101, (480, 360))
    files["truncated.jpg"] = (truncate(good), "failed")
    files["truncated.png"] = (truncate(make_photo(102, (320, 240), "PNG")), "failed")
    files["empty.jpg"] = (b"", "failed")
    files["text-named.jpg"] = (b"This is a text file with a .jpg name.\n" * 20, "failed")
    files["bomb-100000x100000.png"] = (_png_bomb(100_000, 100_000), "failed")

    photo = _photo(103, (400, 300))
    files["cmyk.jpg"] = (_encode(photo.convert("CMYK"), "JPEG"), "ok")
    files["gray16.png"] = (_encode(_gray16_ramp((320, 240)), "PNG"), "ok")
    files["palette-transparent.png"] = (_palette_with_transparency((320, 240)), "ok")
    files["animated.gif"] = (_animated_gif((160, 120)), "ok")
    files["exif-rotated-6.jpg"] = (_exif_rotated((640, 480)), "ok")
    if _can_save("HEIF"):
        files["photo.heic"] = (make_photo(104, (640, 480), "HEIF"), "ok")
    if _can_save("AVIF"):
        files["photo.avif"] = (make_photo(105, (640, 480), "AVIF"), "ok")
    files["alpha.webp"] = (_encode(_red_disc_rgba((320, 240)), "WEBP"), "ok")
    files["huge-12000x8400.jpg"] = (_flat_gray_jpeg(12_000, 8_400), "ok")
    files["name with spaces.jpg"] = (make_photo(106, (320, 240)), "ok")
    files["new\nline.jpg"] = (make_photo(107, (320, 240)), "ok")
    files["ünïcødé 写真 🐈.jpg"] = (make_photo(108, (320, 240)), "ok")

    result: dict[str, str] = {}
    for name, (data, outcome) in files.items():
        (root / name).write_bytes(data)
        result[name] = outcome
    if sys.platform.startswith("linux"):
        # Not valid UTF-8: Latin-1 "café". Only POSIX file systems without a fixed encoding
        # accept it, so it is made through a bytes path.
        raw = b"latin1-caf\xe9.jpg"
        with open(os.path.join(os.fsencode(root), raw), "wb") as f:
            f.write(make_photo(109, (320, 240)))
        result[os.fsdecode(raw)] = "ok"
    return result


def truncate(data: bytes, keep: float = 0.6) -> bytes:
    """Cut an encoded image short, as an interrupted copy or download leaves it."""
    return data[: max(1, int(len(data) * keep))]


# --- internals -------------------------------------------------------------------------------


def _photo(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = random.Random(seed)
    w, h = size
    # Light and colour at the largest scale.
    base = Image.frombytes("RGB", (4, 3), rng.randbytes(4 * 3 * 3))
    photo = base.resize(size, Image.Resampling.BICUBIC)
    # Objects: shapes with hard edges at quarter size, softened a little by the upscale.
    sw, sh = max(1, w // 4), max(1, h // 4)
    shapes = Image.new("RGB", (sw, sh))
    mask = Image.new("L", (sw, sh), 0)
    draw, draw_mask = ImageDraw.Draw(shapes), ImageDraw.Draw(mask)
    for _ in range(12):
        x0, y0 = rng.randrange(sw), rng.randrange(sh)
        box = (x0, y0, x0 + rng.randrange(1, sw // 2 + 2), y0 + rng.randrange(1, sh // 2 + 2))
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        opacity = rng.randrange(120, 256)
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
            draw_mask.ellipse(box, fill=opacity)
        else:
            draw.rectangle(box, fill=colour)
            draw_mask.rectangle(box, fill=opacity)
    photo.paste(
        shapes.resize(size, Image.Resampling.BILINEAR),
        mask=mask.resize(size, Image.Resampling.BILINEAR),
    )
    # Texture at a third of the size, and a fine grain tiled from one prime-sized square.
    tw, th = max(1, w // 3), max(1, h // 3)
    texture = Image.frombytes("L", (tw, th), rng.randbytes(tw * th))
    texture = texture.resize(size, Image.Resampling.BILINEAR)
    tile = Image.frombytes("L", (_GRAIN_TILE, _GRAIN_TILE), rng.randbytes(_GRAIN_TILE**2))
    grain = Image.new("L", size)
    for y in range(0, h, _GRAIN_TILE):
        for x in range(0, w, _GRAIN_TILE):
            grain.paste(tile, (x, y))
    noise = Image.blend(texture, grain, 0.35)
    return Image.blend(photo, Image.merge("RGB", (noise, noise, noise)), 0.18)


def _encode(im: Image.Image, fmt: str, **options: object) -> bytes:
    fmt = fmt.upper()
    if fmt in ("JPEG", "JPG") and "quality" not in options:
        options["quality"] = 92  # what phones and cameras write
    if fmt == "GIF" and im.mode not in ("P", "L"):
        im = im.convert("P", palette=Image.Palette.ADAPTIVE)
    out = io.BytesIO()
    im.save(out, fmt, **options)
    return out.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _can_save(fmt: str) -> bool:
    if fmt == "AVIF" and not features.check("avif"):
        return False
    try:
        _encode(Image.new("RGB", (16, 16)), fmt)
    except Exception:
        return False
    return True


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_bomb(width: int, height: int) -> bytes:
    """A well-formed PNG header claiming ``width x height`` RGB pixels, with a token IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + _png_chunk(b"IEND", b"")
    )


def _flat_jpeg_segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", marker, len(payload) + 2) + payload


def _flat_gray_jpeg(width: int, height: int) -> bytes:
    """A valid baseline JPEG of mid-grey, written by hand so that 100 MP costs 400 kB and no
    pixel buffer: each 8 x 8 block is "DC unchanged, end of block", two one-bit Huffman codes.
    """
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    bits = 2 * blocks
    scan = bytearray((bits + 7) // 8)
    if bits % 8:
        scan[-1] = (1 << (8 - bits % 8)) - 1  # pad the last byte with 1-bits, as the standard says
    one_code = bytes([1] + [0] * 15)  # a Huffman table with one code of length 1 ...
    return (
        b"\xff\xd8"
        + _flat_jpeg_segment(0xFFDB, b"\x00" + b"\x01" * 64)
        + _flat_jpeg_segment(0xFFC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
        + _flat_jpeg_segment(0xFFC4, b"\x00" + one_code + b"\x00")  # ... DC: difference 0
        + _flat_jpeg_segment(0xFFC4, b"\x10" + one_code + b"\x00")  # ... AC: end of block
        + _flat_jpeg_segment(0xFFDA, b"\x01\x01\x00\x00\x3f\x00")
        + bytes(scan)
        + b"\xff\xd9"
    )


def _gray16_ramp(size: tuple[int, int]) -> Image.Image:
    ramp = Image.linear_gradient("L").rotate(90).resize(size)  # dark left, bright right
    return ramp.convert("I").point(lambda v: v * 257).convert("I;16")


def _disc_mask(size: tuple[int, int]) -> Image.Image:
    w, h = size
    mask = Image.new("L", size, 0)
    r = min(w, h) // 3
    ImageDraw.Draw(mask).ellipse((w // 2 - r, h // 2 - r, w // 2 + r, h // 2 + r), fill=255)
    return mask


def _palette_with_transparency(size: tuple[int, int]) -> bytes:
    im = Image.new("P", size, 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)  # 0: black (transparent), 1: red
    im.paste(1, mask=_disc_mask(size))
    return _encode(im, "PNG", transparency=0)


def _red_disc_rgba(size: tuple[int, int]) -> Image.Image:
    im = Image.new("RGBA", size, (0, 0, 0, 0))
    im.paste((255, 0, 0, 255), mask=_disc_mask(size))
    return im


def _animated_gif(size: tuple[int, int]) -> bytes:
    frames = [Image.new("RGB", size, colour) for colour in ("red", "lime", "blue")]
    frames = [f.convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _exif_rotated(size: tuple[int, int]) -> bytes:
    im = _photo(110, size)
    im.paste((255, 0, 0), (0, 0, size[0], size[1] // 4))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways; a viewer turns it 90 degrees clockwise
    return _encode(im, "JPEG", exif=exif.tobytes())
