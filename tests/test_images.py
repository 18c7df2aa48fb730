"""prepare_upload / shrink_upload: every awkward file becomes a small JPEG or an ImageError."""

from __future__ import annotations

import io
import os
import random
import resource
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageFile, ImageStat, PngImagePlugin

from cfclassify.errors import ImageError
from cfclassify.images import Upload, prepare_upload, shrink_upload
from cfclassify.samples import make_hostile_tree, make_photo, truncate

# images.py silences this warning at import (it enforces its own limit), but pytest resets the
# warning filters around each test; the 100-MP sample is legitimately above Pillow's threshold.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

FAILURES = {
    "truncated.jpg": "truncated image data",
    "truncated.png": "truncated image data",
    "empty.jpg": "empty file",
    "text-named.jpg": "not an image",
    "bomb-100000x100000.png": "too many pixels (10000000000 > 178956970)",
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("hostile")
    return root, make_hostile_tree(root)


@pytest.fixture(scope="module")
def uploads(hostile: tuple[Path, dict[str, str]]) -> dict[str, Upload | ImageError]:
    root, expected = hostile
    out: dict[str, Upload | ImageError] = {}
    for name in expected:
        try:
            out[name] = prepare_upload(root / name)
        except ImageError as exc:
            out[name] = exc
    return out


def _ok(uploads: dict[str, Upload | ImageError], name: str) -> Upload:
    if name not in uploads:
        pytest.skip(f"{name} not made: this Pillow cannot write it")
    result = uploads[name]
    assert isinstance(result, Upload), result
    return result


def _decoded(upload: Upload) -> Image.Image:
    im = Image.open(io.BytesIO(upload.data))
    assert im.format == "JPEG"
    assert im.mode == "RGB"
    assert im.size == (upload.upload_width, upload.upload_height)
    im.load()
    return im


def _near(pixel: object, colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(int(a) - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- the hostile tree, file by file ----------------------------------------------------------


def test_every_hostile_file_has_the_expected_outcome(
    hostile: tuple[Path, dict[str, str]], uploads: dict[str, Upload | ImageError]
) -> None:
    _, expected = hostile
    assert set(FAILURES) <= set(expected)
    for name, outcome in expected.items():
        result = uploads[name]
        if outcome == "failed":
            assert isinstance(result, ImageError), name
            assert result.reason == FAILURES[name], name
            assert result.path is not None and result.path.endswith(name)
        else:
            assert isinstance(result, Upload), (name, result)
            im = _decoded(result)
            assert result.content_type == "image/jpeg"
            short, long = sorted((result.width, result.height))
            assert min(im.size) == min(256, short), name
            assert max(im.size) == (round(long * 256 / short) if short > 256 else long), name
            # Orientation of the frame kept: landscape stays landscape.
            assert (im.width >= im.height) == (result.width >= result.height), name


def test_exif_orientation_is_applied(uploads: dict[str, Upload | ImageError]) -> None:
    upload = _ok(uploads, "exif-rotated-6.jpg")
    assert (upload.width, upload.height) == (480, 640)  # stored 640 x 480
    assert (upload.upload_width, upload.upload_height) == (256, 341)
    im = _decoded(upload)
    # The stored top quarter is red; turned clockwise it is the right quarter.
    assert _near(im.getpixel((im.width - 5, im.height // 2)), (255, 0, 0))
    assert not _near(im.getpixel((5, im.height // 2)), (255, 0, 0))


@pytest.mark.parametrize("name", ["palette-transparent.png", "alpha.webp"])
def test_alpha_is_composited_over_white(uploads: dict[str, Upload | ImageError], name: str) -> None:
    im = _decoded(_ok(uploads, name))
    assert _near(im.getpixel((2, 2)), (255, 255, 255), 8)  # transparent black -> white
    assert _near(im.getpixel((im.width // 2, im.height // 2)), (255, 0, 0))


def test_animated_gif_gives_its_first_frame(uploads: dict[str, Upload | ImageError]) -> None:
    upload = _ok(uploads, "animated.gif")
    assert upload.format == "GIF"
    mean = ImageStat.Stat(_decoded(upload)).mean
    assert mean[0] > 240 and mean[1] < 15 and mean[2] < 15


def test_16_bit_png_is_scaled_not_clipped(uploads: dict[str, Upload | ImageError]) -> None:
    im = _decoded(_ok(uploads, "gray16.png"))
    row = im.height // 2
    left = im.getpixel((2, row))
    middle = im.getpixel((im.width // 2, row))
    right = im.getpixel((im.width - 3, row))
    assert isinstance(left, tuple) and isinstance(middle, tuple) and isinstance(right, tuple)
    assert left[0] < 20 and 100 < middle[0] < 156 and right[0] > 235


def test_cmyk_jpeg_keeps_its_colours(
    hostile: tuple[Path, dict[str, str]], uploads: dict[str, Upload | ImageError]
) -> None:
    root, _ = hostile
    reference = Image.open(root / "cmyk.jpg").convert("RGB")
    assert Image.open(root / "cmyk.jpg").mode == "CMYK"
    got = ImageStat.Stat(_decoded(_ok(uploads, "cmyk.jpg"))).mean
    want = ImageStat.Stat(reference).mean
    assert all(abs(g - w) < 6 for g, w in zip(got, want, strict=True))


@pytest.mark.parametrize(("name", "fmt"), [("photo.heic", "HEIF"), ("photo.avif", "AVIF")])
def test_heic_and_avif(uploads: dict[str, Upload | ImageError], name: str, fmt: str) -> None:
    upload = _ok(uploads, name)
    assert upload.format == fmt
    assert (upload.width, upload.height) == (640, 480)
    assert (upload.upload_width, upload.upload_height) == (341, 256)


def test_100_megapixel_jpeg(uploads: dict[str, Upload | ImageError]) -> None:
    upload = _ok(uploads, "huge-12000x8400.jpg")
    assert (upload.width, upload.height) == (12_000, 8_400)
    assert (upload.upload_width, upload.upload_height) == (366, 256)
    assert _near(_decoded(upload).getpixel((10, 10)), (128, 128, 128), 3)


def test_odd_file_names(hostile: tuple[Path, dict[str, str]]) -> None:
    root, expected = hostile
    odd = [n for n in expected if " " in n or "\n" in n or not n.isascii()]
    assert len(odd) >= 3 + sys.platform.startswith("linux")
    for name in odd:
        assert prepare_upload(os.path.join(root, name)).content_type == "image/jpeg"


# --- options ---------------------------------------------------------------------------------


def test_short_side_zero_sends_the_original_bytes(hostile: tuple[Path, dict[str, str]]) -> None:
    root, expected = hostile
    cases = {"exif-rotated-6.jpg": "image/jpeg", "gray16.png": "image/png"}
    cases.update({"animated.gif": "image/gif", "alpha.webp": "image/webp"})
    if "photo.heic" in expected:
        cases["photo.heic"] = "image/heif"
    for name, content_type in cases.items():
        upload = prepare_upload(root / name, short_side=0)
        assert upload.data == (root / name).read_bytes()
        assert upload.content_type == content_type
        assert (upload.upload_width, upload.upload_height) == (upload.width, upload.height)
    assert prepare_upload(root / "exif-rotated-6.jpg", short_side=0).width == 480
    # Still verified: a broken file is not sent as-is.
    for name, reason in FAILURES.items():
        with pytest.raises(ImageError) as info:
            prepare_upload(root / name, short_side=0)
        assert info.value.reason == reason


def test_never_upscales(tmp_path: Path) -> None:
    path = _write(tmp_path / "small.png", make_photo(1, (100, 80), "PNG"))
    upload = prepare_upload(path)
    assert (upload.upload_width, upload.upload_height) == (100, 80)
    upload = prepare_upload(path, short_side=64)
    assert (upload.upload_width, upload.upload_height) == (80, 64)


def test_portrait_and_quality(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jpg", make_photo(2, (600, 900)))
    high = prepare_upload(path, short_side=300, quality=95)
    low = prepare_upload(path, short_side=300, quality=50)
    assert (high.upload_width, high.upload_height) == (300, 450)
    assert len(low.data) < len(high.data)


def test_shrink_upload_returns_fewer_bytes(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jpg", make_photo(3, (1200, 900)))
    first = prepare_upload(path)
    smaller = shrink_upload(path, first)
    assert len(smaller.data) < len(first.data)
    assert (smaller.upload_width, smaller.upload_height) == (171, 128)
    assert smaller.content_type == "image/jpeg"
    # After an original was refused, the re-encode is a small JPEG.
    original = prepare_upload(path, short_side=0)
    assert len(shrink_upload(path, original).data) < len(original.data)
    # At the floor (64 px) it trades quality instead.
    tiny = prepare_upload(path, short_side=64)
    assert len(shrink_upload(path, tiny).data) < len(tiny.data)


def test_shrink_upload_refuses_when_it_cannot_win(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jpg", make_photo(4, (320, 240)))
    impossible = Upload(b"x" * 10, "image/jpeg", "JPEG", 320, 240, 64, 48)
    with pytest.raises(ImageError, match="cannot shrink"):
        shrink_upload(path, impossible)


# --- decompression bombs ---------------------------------------------------------------------


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    yield


def test_bomb_is_rejected_from_the_header(hostile: tuple[Path, dict[str, str]], no_decoding: None) -> None:
    root, _ = hostile
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError) as info:
        prepare_upload(root / "bomb-100000x100000.png")
    assert info.value.reason == "too many pixels (10000000000 > 178956970)"
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 50_000  # 30 GB would have been needed to decode it


def test_max_pixels_is_checked_before_decoding(tmp_path: Path, no_decoding: None) -> None:
    path = _write(tmp_path / "p.jpg", make_photo(5, (320, 240)))
    with pytest.raises(ImageError) as info:
        prepare_upload(path, max_pixels=10_000)
    assert info.value.reason == "too many pixels (76800 > 10000)"


def test_pillow_globals_are_left_alone(hostile: tuple[Path, dict[str, str]]) -> None:
    root, expected = hostile
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    for name in expected:
        try:
            prepare_upload(os.path.join(root, name), max_pixels=1_000_000_000)
        except ImageError:
            pass
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


# --- truncation, unreadable, unsupported -----------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "HEIF", "AVIF"])
@pytest.mark.parametrize("tolerant", [False, True])
def test_truncated_files_fail_even_when_pillow_tolerates_truncation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, tolerant: bool
) -> None:
    try:
        data = make_photo(6, (300, 200), fmt)
    except Exception:
        pytest.skip(f"this Pillow cannot write {fmt}")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", tolerant)
    whole = _write(tmp_path / "whole", data)
    cut = _write(tmp_path / "cut", truncate(data))
    assert prepare_upload(whole).upload_height == 200
    with pytest.raises(ImageError) as info:
        prepare_upload(cut)
    assert info.value.reason == "truncated image data"


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="file vanished"):
        prepare_upload(tmp_path / "gone.jpg")
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(ImageError, match="not a regular file"):
        prepare_upload(tmp_path / "folder.jpg")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.jpg")  # would block a plain open() forever
        with pytest.raises(ImageError, match="not a regular file"):
            prepare_upload(tmp_path / "fifo.jpg")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads all")
def test_permission_denied(tmp_path: Path) -> None:
    path = _write(tmp_path / "secret.jpg", make_photo(7, (64, 64)))
    path.chmod(0)
    with pytest.raises(ImageError, match="permission denied"):
        prepare_upload(path)


def test_formats_we_do_not_decode(tmp_path: Path) -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n"
    with pytest.raises(ImageError) as info:
        prepare_upload(_write(tmp_path / "drawing.jpg", eps))
    assert info.value.reason == "unsupported image format (EPS)"


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's "Corrupt EXIF data" and kin
def test_no_other_exception_escapes_from_corrupt_files(tmp_path: Path) -> None:
    rng = random.Random(42)
    sources = [make_photo(8, (64, 48), fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF")]
    for i in range(150):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(min(len(data), 200))] = rng.randrange(256)
        path = _write(tmp_path / f"corrupt{i}.jpg", bytes(data))
        try:
            upload = prepare_upload(path)
        except ImageError as exc:
            assert exc.reason
        else:
            assert upload.data[:2] == b"\xff\xd8"


# --- modes and orientation across formats ----------------------------------------------------


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])
def test_every_mode_becomes_rgb(tmp_path: Path, mode: str) -> None:
    ramp = Image.linear_gradient("L").rotate(90).resize((300, 200))  # dark left, bright right
    if mode in ("I", "F"):
        im = ramp.convert(mode).point(lambda v: v * 1000 + 5)
    elif mode == "I;16":
        im = ramp.convert("I").point(lambda v: v * 257).convert("I;16")
    else:
        im = ramp.convert(mode)
    upload = prepare_upload(_write(tmp_path / "x.tif", _tiff(im)), short_side=100)
    out = _decoded(upload)
    assert out.size == (150, 100)
    left, right = out.getpixel((3, 50)), out.getpixel((146, 50))
    assert isinstance(left, tuple) and isinstance(right, tuple)
    assert right[0] - left[0] > 150  # the ramp survived: not clipped to one colour


def _tiff(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, "TIFF")
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "HEIF", "AVIF"])
def test_orientation_applied_exactly_once(tmp_path: Path, fmt: str) -> None:
    # Pillow's TIFF plugin and pillow-heif rotate while loading; the others leave it to us.
    im = Image.new("RGB", (160, 120), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 160, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    try:
        im.save(out, fmt, exif=exif.tobytes())
    except Exception:
        pytest.skip(f"this Pillow cannot write {fmt}")
    upload = prepare_upload(_write(tmp_path / "o", out.getvalue()), short_side=60)
    assert (upload.width, upload.height) == (120, 160)
    got = _decoded(upload)
    assert got.size == (60, 80)
    assert _near(got.getpixel((57, 40)), (255, 0, 0), 60)
    assert _near(got.getpixel((3, 40)), (0, 0, 255), 60)


# --- same pixels, same upload ----------------------------------------------------------------


def test_same_pixels_with_different_metadata_give_identical_uploads(tmp_path: Path) -> None:
    pixels = Image.open(io.BytesIO(make_photo(9, (500, 400), "PNG"))).convert("RGB")
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "taken on holiday")
    variants: dict[str, dict[str, Any]] = {
        "plain.png": {},
        "text.png": {"pnginfo": text},
        "dpi.png": {"dpi": (300, 300)},
        "icc.png": {"icc_profile": b"\x00" * 128},
    }
    paths = []
    for name, options in variants.items():
        out = io.BytesIO()
        pixels.save(out, "PNG", **options)
        paths.append(_write(tmp_path / name, out.getvalue()))
    assert len({p.read_bytes() for p in paths}) == len(paths)
    assert len({prepare_upload(p).data for p in paths}) == 1

    # A JPEG re-saved with other metadata keeps its entropy data, so it decodes identically.
    jpeg = Image.open(io.BytesIO(make_photo(10, (500, 400))))
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"  # any tag but Orientation
    with_exif = io.BytesIO()
    jpeg.save(with_exif, "JPEG", quality="keep", exif=exif.tobytes(), comment=b"hello")
    plain = io.BytesIO()
    jpeg.save(plain, "JPEG", quality="keep")
    a = _write(tmp_path / "a.jpg", with_exif.getvalue())
    b = _write(tmp_path / "b.jpg", plain.getvalue())
    assert a.read_bytes() != b.read_bytes()
    assert prepare_upload(a).data == prepare_upload(b).data


def test_threads_give_the_same_uploads_as_one_thread(
    hostile: tuple[Path, dict[str, str]], uploads: dict[str, Upload | ImageError]
) -> None:
    root, expected = hostile
    names = [n for n, outcome in expected.items() if outcome == "ok"] * 3

    def prepare(name: str) -> bytes:
        return prepare_upload(root / name).data

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(prepare, names))
    for name, data in zip(names, results, strict=True):
        upload = uploads[name]
        assert isinstance(upload, Upload)
        assert data == upload.data
