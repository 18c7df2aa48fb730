"""The generated corpora: promised counts, real duplicates, broken files that are broken, and
the same bytes for the same seed."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from cfclassify.errors import ImageError
from cfclassify.images import prepare_upload
from cfclassify.samples import make_hostile_tree, make_photo, make_sample_tree

# The 100-MP sample is legitimately above Pillow's warning threshold.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp"}


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones too), by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _visible_images(files: dict[str, bytes]) -> dict[str, bytes]:
    return {
        rel: data
        for rel, data in files.items()
        if Path(rel).suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in Path(rel).parts)
    }


# --- make_photo ------------------------------------------------------------------------------


def test_make_photo_is_deterministic_and_seeded() -> None:
    assert make_photo(1) == make_photo(1)
    assert make_photo(1) != make_photo(2)
    assert make_photo(1, (320, 240), "PNG") == make_photo(1, (320, 240), "PNG")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"])
def test_make_photo_formats_and_sizes(fmt: str) -> None:
    im = Image.open(io.BytesIO(make_photo(3, (300, 200), fmt)))
    assert im.format == fmt
    assert im.size == (300, 200)


def test_make_photo_looks_like_a_photo() -> None:
    # Neither flat (compresses to nothing) nor white noise (does not compress at all):
    # phone-like 1.5-4 bits per pixel as a quality-92 JPEG.
    data = make_photo(4, (1000, 750))
    bits_per_pixel = len(data) * 8 / (1000 * 750)
    assert 1.0 < bits_per_pixel < 5.0
    im = Image.open(io.BytesIO(data)).convert("RGB")
    colours = im.resize((32, 24)).getcolors(maxcolors=32 * 24)
    assert colours is not None and len(colours) > 500  # many colours, not a flat fill


# --- make_sample_tree ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("sample")
    return root, make_sample_tree(root)


def test_sample_tree_has_the_promised_counts(sample: tuple[Path, dict[str, int]]) -> None:
    root, counts = sample
    assert counts == {
        "unique": 40,
        "duplicates": 20,
        "broken": 1,
        "image_files": 61,
        "hidden": 1,
        "non_image": 1,
        "files": 63,
    }
    files = _tree(root)
    assert len(files) == counts["files"]
    visible = _visible_images(files)
    assert len(visible) == counts["image_files"]
    # Distinct contents: the unique images plus the broken one; the rest are duplicates.
    assert len({hashlib.sha256(d).digest() for d in visible.values()}) == 41
    hidden = [rel for rel in files if rel.startswith(".")]
    assert len(hidden) == counts["hidden"]
    assert Path(hidden[0]).suffix == ".jpg"
    assert files[hidden[0]] not in visible.values()  # a skipped file, not a duplicate
    assert [rel for rel in files if rel.endswith(".txt")] == ["notes.txt"]


def test_sample_tree_shape(sample: tuple[Path, dict[str, int]]) -> None:
    root, _ = sample
    visible = _visible_images(_tree(root))
    suffixes = Counter(Path(rel).suffix for rel in visible)
    assert suffixes[".JPG"] and suffixes[".JPEG"] and suffixes[".PNG"]  # upper case too
    assert max(len(Path(rel).parts) for rel in visible) >= 4  # nested
    assert any(" " in rel for rel in visible)
    for rel, data in visible.items():
        fmt = Image.open(io.BytesIO(data)).format
        assert fmt == {".png": "PNG", ".webp": "WEBP"}.get(Path(rel).suffix.lower(), "JPEG")


def test_duplicates_are_byte_identical_copies(sample: tuple[Path, dict[str, int]]) -> None:
    root, counts = sample
    visible = _visible_images(_tree(root))
    by_hash: dict[str, list[str]] = {}
    for rel, data in visible.items():
        by_hash.setdefault(hashlib.sha256(data).hexdigest(), []).append(rel)
    copies = sum(len(paths) - 1 for paths in by_hash.values())
    assert copies == counts["duplicates"]
    for paths in by_hash.values():
        if len(paths) > 1:
            assert len({visible[p] for p in paths}) == 1
            assert len({Path(p).parent for p in paths}) == len(paths)  # at other paths


def test_broken_files_fail_and_the_rest_prepare(sample: tuple[Path, dict[str, int]]) -> None:
    root, counts = sample
    failed = []
    for rel in _visible_images(_tree(root)):
        try:
            prepare_upload(root / rel, short_side=64)
        except ImageError as exc:
            failed.append((rel, exc.reason))
    assert failed == [("scans/broken_1.jpg", "truncated image data")]
    assert len(failed) == counts["broken"]


def test_sample_tree_is_deterministic(tmp_path: Path) -> None:
    make_sample_tree(tmp_path / "a", unique=8, duplicates=5, broken=2, seed=7)
    make_sample_tree(tmp_path / "b", unique=8, duplicates=5, broken=2, seed=7)
    make_sample_tree(tmp_path / "c", unique=8, duplicates=5, broken=2, seed=8)
    a, b, c = (_tree(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert a != c


def test_sample_tree_other_sizes(tmp_path: Path) -> None:
    counts = make_sample_tree(tmp_path, unique=3, duplicates=7, broken=0)
    visible = _visible_images(_tree(tmp_path))
    assert len(visible) == counts["image_files"] == 10
    assert len({hashlib.sha256(d).digest() for d in visible.values()}) == 3


# --- make_hostile_tree -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("hostile")
    return root, make_hostile_tree(root)


def test_hostile_tree_lists_every_file(hostile: tuple[Path, dict[str, str]]) -> None:
    root, expected = hostile
    on_disk = {os.fsdecode(name) for name in os.listdir(os.fsencode(root))}
    assert on_disk == set(expected)
    assert set(expected.values()) == {"ok", "failed"}
    assert sum(v == "failed" for v in expected.values()) == 5
    assert len(expected) >= 16
    assert any("\n" in n for n in expected) and any(" " in n for n in expected)
    assert any(not n.isascii() for n in expected)
    if sys.platform.startswith("linux"):
        raw = [n for n in os.listdir(os.fsencode(root)) if not _is_utf8(n)]
        assert len(raw) == 1


def _is_utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_hostile_bomb_png_is_well_formed(hostile: tuple[Path, dict[str, str]]) -> None:
    root, _ = hostile
    data = (root / "bomb-100000x100000.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    payload = data[16 : 16 + length]
    (crc,) = struct.unpack(">I", data[16 + length : 20 + length])
    assert kind == b"IHDR" and crc == zlib.crc32(kind + payload)
    assert struct.unpack(">II", payload[:8]) == (100_000, 100_000)
    assert len(data) < 1000


def test_hostile_huge_jpeg_is_cheap(hostile: tuple[Path, dict[str, str]]) -> None:
    root, _ = hostile
    path = root / "huge-12000x8400.jpg"
    assert path.stat().st_size < 1_000_000
    with Image.open(path) as im:
        assert (im.format, im.size) == ("JPEG", (12_000, 8_400))


def test_hostile_contents(hostile: tuple[Path, dict[str, str]]) -> None:
    root, expected = hostile
    modes = {
        "cmyk.jpg": "CMYK",
        "gray16.png": "I;16",
        "palette-transparent.png": "P",
        "alpha.webp": "RGBA",
    }
    for name, mode in modes.items():
        with Image.open(root / name) as im:
            assert im.mode == mode, name
    with Image.open(root / "animated.gif") as im:
        assert getattr(im, "n_frames", 1) == 3
    with Image.open(root / "exif-rotated-6.jpg") as im:
        assert im.size == (640, 480) and im.getexif()[0x0112] == 6
    for name, fmt in (("photo.heic", "HEIF"), ("photo.avif", "AVIF")):
        if name in expected:
            with Image.open(root / name) as im:
                assert im.format == fmt
    assert (root / "empty.jpg").stat().st_size == 0


def test_hostile_tree_is_deterministic(hostile: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, expected = hostile
    again = make_hostile_tree(tmp_path)
    assert again == expected
    for name in expected:
        if name.endswith((".heic", ".avif")):
            continue  # the HEVC/AV1 encoders are not promised to be bit-exact
        assert (root / name).read_bytes() == (tmp_path / name).read_bytes(), name
