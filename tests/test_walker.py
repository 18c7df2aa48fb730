"""walker.py: which files a walk yields, what it skips, and that nothing on disk stops it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cfclassify.config import WalkSettings
from cfclassify.walker import WalkReport, display_path, iter_directories

JPEG = b"\xff\xd8\xff\xe0 not really a jpeg"


def walk(roots: list[Path] | Path, settings: WalkSettings | None = None) -> tuple[list[str], WalkReport]:
    """Relative-free: the absolute paths of every yielded file, in walk order, and the report."""
    report = WalkReport()
    roots = roots if isinstance(roots, list) else [roots]
    paths = [
        f.path
        for d in iter_directories([str(r) for r in roots], settings or WalkSettings(), report)
        for f in d.files
    ]
    return paths, report


def names(paths: list[str], base: Path) -> set[str]:
    return {os.path.relpath(p, base) for p in paths}


def test_extensions_are_case_insensitive(tmp_tree: Callable[..., Path]) -> None:
    root = tmp_tree(
        {
            "a.JPG": JPEG,
            "b.Jpeg": JPEG,
            "c.png": JPEG,
            "d.HEIC": JPEG,
            "notes.txt": "x",
            "jpg": JPEG,  # no extension at all
            "e.jpg.txt": "x",
        }
    )
    paths, report = walk(root)
    assert names(paths, root) == {"a.JPG", "b.Jpeg", "c.png", "d.HEIC"}
    assert report.files == 4
    assert report.not_images == 3


def test_configured_extensions_only(tmp_tree: Callable[..., Path]) -> None:
    root = tmp_tree({"a.jpg": JPEG, "b.PNG": JPEG, "c.raw": JPEG})
    paths, _ = walk(root, WalkSettings(extensions=("png", "raw")))
    assert names(paths, root) == {"b.PNG", "c.raw"}


def test_found_file_carries_stat_data_and_batches_per_folder(tmp_tree: Callable[..., Path]) -> None:
    root = tmp_tree({"x/b.jpg": b"12345", "x/a.jpg": b"1", "y/c.jpg": b"", "top.jpg": b"12"})
    dirs = list(iter_directories([str(root)], WalkSettings()))
    by_dir = {os.path.relpath(d.path, root): [f.name for f in d.files] for d in dirs}
    assert by_dir == {".": ["top.jpg"], "x": ["a.jpg", "b.jpg"], "y": ["c.jpg"]}
    found = next(f for d in dirs for f in d.files if f.name == "b.jpg")
    st = os.stat(root / "x" / "b.jpg")
    assert (found.size, found.mtime_ns, found.inode, found.device) == (
        5,
        st.st_mtime_ns,
        st.st_ino,
        st.st_dev,
    )
    assert all(d.root == str(root) for d in dirs)


def test_a_file_given_as_root_is_an_incomplete_folder(tmp_tree: Callable[..., Path]) -> None:
    root = tmp_tree({"a.jpg": JPEG, "b.jpg": JPEG})
    (batch,) = iter_directories([str(root / "a.jpg")], WalkSettings())
    # Its folder was not listed, so the scan must not mark b.jpg missing because of it.
    assert batch.complete is False and [f.name for f in batch.files] == ["a.jpg"]


def test_hidden_entries_skipped_by_default(tmp_tree: Callable[..., Path]) -> None:
    root = tmp_tree({".hidden/a.jpg": JPEG, ".b.jpg": JPEG, "c.jpg": JPEG})
    paths, report = walk(root)
    assert names(paths, root) == {"c.jpg"}
    assert report.skipped_hidden == 2


def test_hidden_entries_included_when_configured(tmp_tree: Callable[..., Path]) -> None:
    root = tmp_tree({".hidden/a.jpg": JPEG, ".b.jpg": JPEG, "c.jpg": JPEG})
    paths, report = walk(root, WalkSettings(include_hidden=True))
    assert names(paths, root) == {".hidden/a.jpg", ".b.jpg", "c.jpg"}
    assert report.skipped_hidden == 0


def test_a_hidden_root_is_still_walked(tmp_tree: Callable[..., Path]) -> None:
    root = tmp_tree({"a.jpg": JPEG}, name=".photos")
    paths, _ = walk(root)
    assert len(paths) == 1


def test_junk_folders_excluded_by_default(tmp_tree: Callable[..., Path]) -> None:
    root = tmp_tree(
        {
            "@eaDir/a.jpg/SYNOPHOTO_THUMB_XL.jpg": JPEG,
            "#recycle/b.jpg": JPEG,
            "$RECYCLE.BIN/c.jpg": JPEG,
            "#snapshot/d.jpg": JPEG,
            "lost+found/e.jpg": JPEG,
            "keep/f.jpg": JPEG,
        }
    )
    paths, report = walk(root)
    assert names(paths, root) == {"keep/f.jpg"}
    assert report.skipped_excluded == 5


def test_custom_exclude_patterns_replace_the_defaults(tmp_tree: Callable[..., Path]) -> None:
    root = tmp_tree({"thumbs/a.jpg": JPEG, "x/thumb_b.jpg": JPEG, "@eaDir/c.jpg": JPEG, "d.jpg": JPEG})
    paths, report = walk(root, WalkSettings(exclude=("thumb*",)))
    assert names(paths, root) == {"@eaDir/c.jpg", "d.jpg"}
    assert report.skipped_excluded == 2


# -- symlinks ----------------------------------------------------------------------------------


def test_symlinks_not_followed_by_default(tmp_tree: Callable[..., Path], tmp_path: Path) -> None:
    outside = tmp_tree({"o.jpg": JPEG, "sub/p.jpg": JPEG}, name="outside")
    root = tmp_tree({"a.jpg": JPEG})
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)
    (root / "linked_file.jpg").symlink_to(outside / "o.jpg")
    paths, report = walk(root)
    assert names(paths, root) == {"a.jpg"}
    assert report.skipped_symlinks == 2


def test_symlinks_followed_when_configured(tmp_tree: Callable[..., Path]) -> None:
    outside = tmp_tree({"o.jpg": JPEG, "sub/p.jpg": JPEG}, name="outside")
    root = tmp_tree({"a.jpg": JPEG})
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)
    (root / "linked_file.jpg").symlink_to(outside / "o.jpg")
    paths, report = walk(root, WalkSettings(follow_symlinks=True))
    assert names(paths, root) == {"a.jpg", "linked_dir/o.jpg", "linked_dir/sub/p.jpg", "linked_file.jpg"}
    linked = next(p for p in paths if p.endswith("linked_file.jpg"))
    assert os.stat(linked).st_ino == os.stat(outside / "o.jpg").st_ino
    assert report.skipped_symlinks == 0


def test_symlink_loop_detected_when_followed(tmp_tree: Callable[..., Path]) -> None:
    root = tmp_tree({"a.jpg": JPEG, "sub/b.jpg": JPEG, "sub/deeper/c.jpg": JPEG})
    (root / "sub" / "deeper" / "up").symlink_to(root, target_is_directory=True)
    (root / "sub" / "self").symlink_to(root / "sub", target_is_directory=True)
    paths, report = walk(root, WalkSettings(follow_symlinks=True))
    assert sorted(names(paths, root)) == ["a.jpg", "sub/b.jpg", "sub/deeper/c.jpg"]
    assert len(paths) == 3  # nothing twice
    assert report.loops == 2
    assert report.problems == 2


def test_broken_link_counted_when_following(tmp_tree: Callable[..., Path]) -> None:
    root = tmp_tree({"a.jpg": JPEG})
    (root / "gone.jpg").symlink_to(root / "never-existed.jpg")
    paths, report = walk(root, WalkSettings(follow_symlinks=True))
    assert names(paths, root) == {"a.jpg"}
    assert report.broken_links == 1
    assert any("gone.jpg" in path for path, _ in report.examples)


def test_broken_link_is_a_skipped_symlink_by_default(tmp_tree: Callable[..., Path]) -> None:
    root = tmp_tree({"a.jpg": JPEG})
    (root / "gone.jpg").symlink_to(root / "never-existed.jpg")
    paths, report = walk(root)
    assert names(paths, root) == {"a.jpg"}
    assert report.skipped_symlinks == 1
    assert report.broken_links == 0


# -- unreadable, vanished, bad names -----------------------------------------------------------


@contextlib.contextmanager
def as_nobody() -> Iterator[None]:
    """Drop the effective uid to 'nobody' so that file permissions apply even when tests run as root."""
    if os.geteuid() != 0:
        yield
        return
    try:
        os.seteuid(65534)
    except PermissionError:
        pytest.skip("running as root without CAP_SETUID: root ignores file permissions")
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A temp folder 'nobody' can enter (pytest's tmp_path is 0700 under root)."""
    path = Path(tempfile.mkdtemp(prefix="cfclassify-walk-"))
    path.chmod(0o755)
    yield path
    for dirpath, _, _ in os.walk(path):
        os.chmod(dirpath, 0o755)
    shutil.rmtree(path)


def test_permission_denied_folder_is_counted_not_fatal(world_tmp: Path) -> None:
    """A real EACCES: as root the walk runs with euid 'nobody', which root's bypass does not cover."""
    for rel in ("a.jpg", "locked/b.jpg", "open/c.jpg"):
        (world_tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (world_tmp / rel).write_bytes(JPEG)
        (world_tmp / rel).chmod(0o644)
    for folder in ("open",):
        (world_tmp / folder).chmod(0o755)
    (world_tmp / "locked").chmod(0o000)
    with as_nobody():
        paths, report = walk(world_tmp)
    assert names(paths, world_tmp) == {"a.jpg", "open/c.jpg"}
    assert report.unreadable == 1
    assert report.examples[0][0] == str(world_tmp / "locked")
    assert "denied" in report.examples[0][1].lower()


def test_permission_denied_root_is_counted_not_fatal(world_tmp: Path, tmp_tree: Callable[..., Path]) -> None:
    locked = world_tmp / "locked"
    locked.mkdir(mode=0o000)
    locked.chmod(0o000)
    readable = world_tmp / "ok"
    readable.mkdir()
    readable.chmod(0o755)
    (readable / "a.jpg").write_bytes(JPEG)
    (readable / "a.jpg").chmod(0o644)
    with as_nobody():
        paths, report = walk([locked, readable])
    assert len(paths) == 1
    assert report.unreadable == 1


def test_simulated_oserror_from_scandir_is_counted(
    tmp_tree: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same path without privileges games: scandir of one folder raises EIO."""
    root = tmp_tree({"a.jpg": JPEG, "bad/b.jpg": JPEG, "good/c.jpg": JPEG})
    real = os.scandir

    def scandir(path: Any) -> Any:
        if os.fspath(path).endswith("/bad"):
            raise OSError(5, "Input/output error", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    paths, report = walk(root)
    assert names(paths, root) == {"a.jpg", "good/c.jpg"}
    assert report.unreadable == 1
    assert report.examples == [(str(root / "bad"), "Input/output error")]


def test_file_vanishing_between_listing_and_stat(
    tmp_tree: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """scandir lists the name, then the file is deleted before the walker stats it."""
    root = tmp_tree({"a.jpg": JPEG, "gone.jpg": JPEG, "z.jpg": JPEG})
    real = os.scandir

    class Listing:
        def __init__(self, path: Any) -> None:
            self.inner = real(path)

        def __enter__(self) -> Listing:
            return self

        def __exit__(self, *exc: object) -> None:
            self.inner.close()

        def __iter__(self) -> Iterator[os.DirEntry[str]]:
            for entry in self.inner:
                if entry.name == "gone.jpg":
                    os.unlink(entry.path)
                yield entry

    monkeypatch.setattr(os, "scandir", Listing)
    paths, report = walk(root)
    assert names(paths, root) == {"a.jpg", "z.jpg"}
    assert report.vanished == 1
    assert report.examples[0][0].endswith("gone.jpg")


def test_missing_root_is_counted_not_fatal(tmp_tree: Callable[..., Path], tmp_path: Path) -> None:
    root = tmp_tree({"a.jpg": JPEG})
    paths, report = walk([tmp_path / "does-not-exist", root])
    assert len(paths) == 1
    assert report.vanished == 1


def test_non_utf8_names_are_walked_and_counted(tmp_tree: Callable[..., Path]) -> None:
    root = tmp_tree({"a.jpg": JPEG})
    bad = os.fsencode(str(root)) + b"/caf\xe9.jpg"  # Latin-1 é: not valid UTF-8
    with open(bad, "wb") as fh:
        fh.write(JPEG)
    os.mkdir(os.fsencode(str(root)) + b"/dir\xff")
    with open(os.fsencode(str(root)) + b"/dir\xff/inside.jpg", "wb") as fh:
        fh.write(JPEG)
    paths, report = walk(root)
    found = {os.fsencode(p) for p in paths}
    base = os.fsencode(str(root))
    assert found == {base + b"/a.jpg", base + b"/caf\xe9.jpg", base + b"/dir\xff/inside.jpg"}
    assert report.non_utf8_names == 2  # the file and the folder
    assert report.problems == 0


def test_display_path_makes_bad_bytes_printable() -> None:
    raw = os.fsdecode(b"/x/caf\xe9.jpg")
    assert display_path(raw) == "/x/caf\\xe9.jpg"
    assert display_path("/x/café.jpg") == "/x/café.jpg"


# -- roots -------------------------------------------------------------------------------------


@pytest.mark.parametrize("inner_first", [False, True])
def test_overlapping_roots_are_walked_once(tmp_tree: Callable[..., Path], inner_first: bool) -> None:
    root = tmp_tree({"a.jpg": JPEG, "2024/b.jpg": JPEG, "2024/x/c.jpg": JPEG})
    roots = [root / "2024", root] if inner_first else [root, root / "2024"]
    paths, report = walk(roots)
    assert sorted(names(paths, root)) == ["2024/b.jpg", "2024/x/c.jpg", "a.jpg"]
    assert len(paths) == 3
    assert report.files == 3


def test_same_root_twice_is_walked_once(tmp_tree: Callable[..., Path]) -> None:
    root = tmp_tree({"a.jpg": JPEG})
    paths, report = walk([root, root])
    assert len(paths) == 1
    assert report.problems == 0


def test_a_file_as_root(tmp_tree: Callable[..., Path]) -> None:
    root = tmp_tree({"a.jpg": JPEG, "b.txt": "x"})
    paths, report = walk([root / "a.jpg", root / "b.txt"])
    assert paths == [str(root / "a.jpg")]
    assert report.not_images == 1


def test_walk_streams_one_folder_at_a_time(
    tmp_tree: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_tree({f"d{i:02}/a.jpg": JPEG for i in range(20)})
    real = os.scandir
    listed: list[str] = []

    def scandir(path: Any) -> Any:
        listed.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    it = iter_directories([str(root)], WalkSettings())
    top = next(it)  # every folder walked is yielded, empty ones too (the scan marks what left them)
    assert (top.path, top.files, top.complete) == (str(root), [], True)
    first = next(it)
    assert first.path == str(root / "d00")
    assert len(listed) == 2  # the root and d00, not the 19 folders still to come
    assert sum(1 for _ in it) == 19


def test_deep_tree_needs_no_recursion(tmp_tree: Callable[..., Path]) -> None:
    root = tmp_tree({})
    path = str(root)
    for _ in range(1100):  # deeper than Python's default recursion limit (os.makedirs recurses)
        path += "/d"
        os.mkdir(path)
    Path(path, "a.jpg").write_bytes(JPEG)
    try:
        paths, _ = walk(root)
        assert len(paths) == 1
    finally:  # pytest's own cleanup (shutil.rmtree) would recurse too deep: undo it level by level
        os.unlink(os.path.join(path, "a.jpg"))
        while path != str(root):
            os.rmdir(path)
            path = os.path.dirname(path)
