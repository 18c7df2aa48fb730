"""scan.py: the stat cache, move detection, missing files, and the counts a scan reports."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from cfclassify import hashing
from cfclassify import scan as scan_module
from cfclassify.config import WalkSettings
from cfclassify.scan import ScanReport, scan
from cfclassify.store import Store


def image_bytes(i: int) -> bytes:
    return b"\xff\xd8\xff\xe0" + hashlib.sha256(str(i).encode()).digest() * (i % 7 + 1)


def must_show_spec() -> dict[str, bytes | str]:
    """60 image files, 20 of them byte-copies at other paths; a hidden folder; a text file."""
    spec: dict[str, bytes | str] = {}
    for i in range(40):
        spec[f"{'ab'[i % 2]}/sub{i % 3}/img{i:02}.{['jpg', 'JPG', 'png', 'webp'][i % 4]}"] = image_bytes(i)
    for i in range(20):
        spec[f"copies/copy{i:02}.jpeg"] = image_bytes(i)
    spec[".hidden/secret.jpg"] = image_bytes(1000)
    spec[".hidden/more/also.jpg"] = image_bytes(1001)
    spec["notes.txt"] = "not an image"
    return spec


class ReadSpy:
    """Counts every file whose bytes the scan reads (hashing.sha256_file is the only reader)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        real = hashing.sha256_file

        def spy(path: str | os.PathLike[str]) -> str:
            self.paths.append(os.fspath(path))
            return real(path)

        monkeypatch.setattr(hashing, "sha256_file", spy)

    def reset(self) -> None:
        self.paths.clear()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> ReadSpy:
    return ReadSpy(monkeypatch)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "scan.db") as s:
        yield s


def do_scan(root: Path | list[Path], store: Store, settings: WalkSettings | None = None) -> ScanReport:
    roots = [str(r) for r in root] if isinstance(root, list) else [str(root)]
    return scan(roots, settings or WalkSettings(), store, hash_workers=2)


def table(store: Store, sql: str) -> list[tuple[object, ...]]:
    return [tuple(r) for r in store.conn.execute(sql).fetchall()]


def count(store: Store, sql: str) -> int:
    return int(store.conn.execute(sql).fetchone()[0])


# -- the "must show" ---------------------------------------------------------------------------


def test_must_show_60_files_40_images_and_rescan_reads_nothing(
    tmp_tree: Callable[..., Path], store: Store, reads: ReadSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_tree(must_show_spec())
    report = do_scan(root, store)
    assert count(store, "SELECT count(*) FROM files") == 60
    assert count(store, "SELECT count(*) FROM images") == 40
    assert count(store, "SELECT count(*) FROM files WHERE path LIKE '%/.hidden/%'") == 0
    assert count(store, "SELECT count(*) FROM files WHERE path LIKE '%.txt'") == 0
    assert (report.files, report.hashed, report.new_images, report.duplicate_paths) == (60, 60, 40, 20)
    assert report.known_images == 0
    assert report.walk.skipped_hidden == 1  # the .hidden folder itself; nothing under it is listed
    assert report.walk.not_images == 1
    assert len(reads.paths) == 60

    def no_reads(path: object) -> str:
        raise AssertionError(f"the rescan read {path}")

    def hash_nothing(items: Iterable[tuple[object, str]], **kwargs: object) -> Iterator[object]:
        for _, path in items:
            raise AssertionError(f"the rescan asked to hash {path}")
        yield from ()

    monkeypatch.setattr(scan_module, "hash_files", hash_nothing)
    monkeypatch.setattr(hashing, "sha256_file", no_reads)
    again = do_scan(root, store)
    assert (again.files, again.hashed, again.cached, again.moved) == (60, 0, 60, 0)
    assert (again.new_images, again.known_images, again.duplicate_paths) == (0, 40, 20)
    assert count(store, "SELECT count(*) FROM files") == 60
    assert count(store, "SELECT count(*) FROM images") == 40
    assert count(store, "SELECT count(*) FROM files WHERE missing = 1") == 0


def test_hashes_recorded_are_the_file_contents(tmp_tree: Callable[..., Path], store: Store) -> None:
    root = tmp_tree({"a.jpg": b"one", "b/c.png": b"two"})
    do_scan(root, store)
    recorded = dict(table(store, "SELECT path, sha256 FROM files"))
    assert recorded == {
        str(root / "a.jpg"): hashlib.sha256(b"one").hexdigest(),
        str(root / "b" / "c.png"): hashlib.sha256(b"two").hexdigest(),
    }
    row = table(store, f"SELECT dir, root, size FROM files WHERE path = '{root / 'b' / 'c.png'}'")
    assert row == [(str(root / "b"), str(root), 3)]
    assert table(store, "SELECT status FROM images") == [("pending",), ("pending",)]


# -- the stat cache ----------------------------------------------------------------------------


def test_rename_within_root_is_not_read_again(
    tmp_tree: Callable[..., Path], store: Store, reads: ReadSpy
) -> None:
    root = tmp_tree({"a/one.jpg": b"one", "a/two.jpg": b"two"})
    do_scan(root, store)
    reads.reset()
    (root / "b").mkdir()
    os.rename(root / "a" / "one.jpg", root / "b" / "renamed.jpg")
    report = do_scan(root, store)
    assert reads.paths == []
    assert (report.moved, report.cached, report.hashed, report.missing) == (1, 1, 0, 1)
    sha = hashlib.sha256(b"one").hexdigest()
    assert table(store, f"SELECT path, missing FROM files WHERE sha256 = '{sha}' ORDER BY path") == [
        (str(root / "a" / "one.jpg"), 1),
        (str(root / "b" / "renamed.jpg"), 0),
    ]
    assert count(store, "SELECT count(*) FROM images") == 2


def test_move_between_roots_is_not_read_again(
    tmp_tree: Callable[..., Path], store: Store, reads: ReadSpy
) -> None:
    first = tmp_tree({"one.jpg": b"one"}, name="r1")
    second = tmp_tree({"two.jpg": b"two"}, name="r2")
    do_scan([first, second], store)
    reads.reset()
    os.rename(first / "one.jpg", second / "one.jpg")
    report = do_scan([first, second], store)
    assert reads.paths == []
    assert report.moved == 1
    assert count(store, f"SELECT missing FROM files WHERE path = '{second / 'one.jpg'}'") == 0


def test_chmod_changes_nothing(tmp_tree: Callable[..., Path], store: Store, reads: ReadSpy) -> None:
    root = tmp_tree({"a.jpg": b"one"})
    do_scan(root, store)
    before = table(store, "SELECT path, sha256, size, mtime_ns, inode FROM files")
    reads.reset()
    os.chmod(root / "a.jpg", 0o600)
    os.chown(root / "a.jpg", os.getuid(), os.getgid())
    report = do_scan(root, store)
    assert reads.paths == []
    assert report.cached == 1
    assert table(store, "SELECT path, sha256, size, mtime_ns, inode FROM files") == before


def test_touch_rereads_but_keeps_the_image(
    tmp_tree: Callable[..., Path], store: Store, reads: ReadSpy
) -> None:
    root = tmp_tree({"a.jpg": b"one"})
    do_scan(root, store)
    reads.reset()
    st = os.stat(root / "a.jpg")
    os.utime(root / "a.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    report = do_scan(root, store)
    assert reads.paths == [str(root / "a.jpg")]
    assert (report.hashed, report.new_images, report.known_images) == (1, 0, 1)
    assert count(store, "SELECT count(*) FROM images") == 1


def test_content_change_is_read_again(tmp_tree: Callable[..., Path], store: Store, reads: ReadSpy) -> None:
    root = tmp_tree({"a.jpg": b"one", "b.jpg": b"bee"})
    do_scan(root, store)
    reads.reset()
    (root / "a.jpg").write_bytes(b"changed content")
    report = do_scan(root, store)
    assert reads.paths == [str(root / "a.jpg")]
    assert (report.hashed, report.cached, report.new_images) == (1, 1, 1)
    assert table(store, f"SELECT sha256 FROM files WHERE path = '{root / 'a.jpg'}'") == [
        (hashlib.sha256(b"changed content").hexdigest(),)
    ]
    assert count(store, "SELECT count(*) FROM images") == 3  # the old content's image row stays


def test_same_size_same_mtime_new_inode_is_read_again(
    tmp_tree: Callable[..., Path], store: Store, reads: ReadSpy
) -> None:
    """An editor that saves by writing a new file and renaming it over the old one."""
    root = tmp_tree({"a.jpg": b"AAAA"})
    do_scan(root, store)
    st = os.stat(root / "a.jpg")
    (root / "tmp.jpg.new").write_bytes(b"BBBB")
    os.utime(root / "tmp.jpg.new", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(root / "tmp.jpg.new", root / "a.jpg")
    reads.reset()
    do_scan(root, store)
    assert reads.paths == [str(root / "a.jpg")]
    assert table(store, "SELECT sha256 FROM files") == [(hashlib.sha256(b"BBBB").hexdigest(),)]


def test_deleted_file_is_marked_missing_and_its_image_kept(
    tmp_tree: Callable[..., Path], store: Store
) -> None:
    root = tmp_tree({"a.jpg": b"one", "b.jpg": b"two"})
    do_scan(root, store)
    (root / "a.jpg").unlink()
    report = do_scan(root, store)
    assert report.missing == 1
    assert table(store, "SELECT path, missing FROM files ORDER BY path") == [
        (str(root / "a.jpg"), 1),
        (str(root / "b.jpg"), 0),
    ]
    assert count(store, "SELECT count(*) FROM images") == 2
    assert store.count_pending() == 1  # a missing file's image has no path to send from
    again = do_scan(root, store)
    assert again.missing == 0  # counted once, when it went missing


def test_files_of_a_deleted_or_excluded_folder_are_marked_missing(
    tmp_tree: Callable[..., Path], store: Store
) -> None:
    root = tmp_tree({"keep/a.jpg": b"one", "gone/deep/b.jpg": b"two", "later/c.jpg": b"three"})
    do_scan(root, store)
    shutil.rmtree(root / "gone")
    report = do_scan(root, store, WalkSettings(exclude=("later",)))
    assert report.missing == 2
    assert table(store, "SELECT path FROM files WHERE missing = 1 ORDER BY path") == [
        (str(root / "gone" / "deep" / "b.jpg"),),
        (str(root / "later" / "c.jpg"),),
    ]


def test_a_file_given_as_root_marks_none_of_its_neighbours_missing(
    tmp_tree: Callable[..., Path], store: Store
) -> None:
    root = tmp_tree({"a.jpg": b"one", "b.jpg": b"two"})
    do_scan(root, store)
    report = do_scan(root / "a.jpg", store)
    assert report.missing == 0 and report.cached == 1
    assert count(store, "SELECT count(*) FROM files WHERE missing = 1") == 0


def test_moved_back_file_returns_without_a_read(
    tmp_tree: Callable[..., Path], tmp_path: Path, store: Store, reads: ReadSpy
) -> None:
    root = tmp_tree({"a.jpg": b"one"})
    do_scan(root, store)
    os.rename(root / "a.jpg", tmp_path / "away.jpg")
    do_scan(root, store)
    os.rename(tmp_path / "away.jpg", root / "a.jpg")
    reads.reset()
    report = do_scan(root, store)
    assert reads.paths == []
    assert report.returned == 1
    assert table(store, "SELECT missing FROM files") == [(0,)]


def test_restored_copy_is_present_again(tmp_tree: Callable[..., Path], tmp_path: Path, store: Store) -> None:
    root = tmp_tree({"a.jpg": b"one"})
    do_scan(root, store)
    shutil.copy(root / "a.jpg", tmp_path / "backup.jpg")
    (root / "a.jpg").unlink()
    do_scan(root, store)
    assert table(store, "SELECT missing FROM files") == [(1,)]
    shutil.copy(tmp_path / "backup.jpg", root / "a.jpg")
    do_scan(root, store)
    assert table(store, "SELECT missing FROM files") == [(0,)]
    assert count(store, "SELECT count(*) FROM images") == 1


def test_restored_copy_is_counted_as_returned(
    tmp_tree: Callable[..., Path], tmp_path: Path, store: Store
) -> None:
    root = tmp_tree({"a.jpg": b"one"})
    do_scan(root, store)
    shutil.copy(root / "a.jpg", tmp_path / "backup.jpg")
    (root / "a.jpg").unlink()
    do_scan(root, store)
    shutil.copy(tmp_path / "backup.jpg", root / "a.jpg")
    assert do_scan(root, store).returned == 1


def test_missing_is_scoped_to_the_roots_scanned(tmp_tree: Callable[..., Path], store: Store) -> None:
    first = tmp_tree({"a.jpg": b"one"}, name="r1")
    second = tmp_tree({"b.jpg": b"two"}, name="r10")  # shares a string prefix with r1
    do_scan([first, second], store)
    report = do_scan(first, store)
    assert report.missing == 0
    assert count(store, "SELECT count(*) FROM files WHERE missing = 1") == 0


def test_files_that_cannot_be_read_are_counted(
    tmp_tree: Callable[..., Path], store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file seen by the walk but gone when the hasher opens it: counted, the scan goes on."""
    root = tmp_tree({"a.jpg": b"one", "b.jpg": b"two"})
    real = scan_module.iter_directories

    def walk_then_delete(*args: object, **kwargs: object) -> Iterator[object]:
        for directory in real(*args, **kwargs):  # type: ignore[arg-type]
            (root / "a.jpg").unlink()
            yield directory

    monkeypatch.setattr(scan_module, "iter_directories", walk_then_delete)
    report = do_scan(root, store)
    assert (report.files, report.hashed, report.unreadable) == (2, 1, 1)
    assert report.as_dict()["problems"]["unreadable"] == 1
    assert report.examples[0][0] == str(root / "a.jpg")
    assert table(store, "SELECT path FROM files") == [(str(root / "b.jpg"),)]


def test_second_scan_of_new_copies_counts_known_images(tmp_tree: Callable[..., Path], store: Store) -> None:
    root = tmp_tree({"a.jpg": b"one"})
    do_scan(root, store)
    (root / "copy.jpg").write_bytes(b"one")
    (root / "new.jpg").write_bytes(b"new")
    report = do_scan(root, store)
    assert (report.new_images, report.known_images, report.duplicate_paths) == (1, 1, 1)


def test_batches_larger_than_one_transaction(
    tmp_tree: Callable[..., Path], store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan_module, "BATCH", 7)
    root = tmp_tree({f"d{i % 4}/f{i:03}.jpg": image_bytes(i % 25) for i in range(50)})
    progress: list[int] = []
    report = scan([str(root)], WalkSettings(), store, progress=progress.append)
    assert (report.files, report.new_images, report.duplicate_paths) == (50, 25, 25)
    assert count(store, "SELECT count(*) FROM files") == 50
    assert sum(progress) == 50
    assert len(progress) > 1


def test_as_dict_shape(tmp_tree: Callable[..., Path], store: Store) -> None:
    root = tmp_tree(must_show_spec())
    data = do_scan(root, store).as_dict()
    assert data["files"] == 60
    assert data["skipped"] == {"hidden": 1, "excluded": 0, "symlinks": 0, "not_images": 1}
    assert set(data["problems"]) == {"unreadable", "vanished", "broken_links", "loops"}
    assert "walk" not in data


def test_a_name_that_is_not_utf8_is_recorded_cached_and_marked_missing(
    tmp_tree: Callable[..., Path], store: Store, reads: ReadSpy
) -> None:
    root = tmp_tree({"a.jpg": b"one"})
    raw = os.fsencode(str(root)) + b"/caf\xe9.jpg"  # Latin-1: not valid UTF-8
    with open(raw, "wb") as fh:
        fh.write(b"two")
    first = do_scan(root, store)
    assert (first.files, first.new_images, first.walk.non_utf8_names) == (2, 2, 1)
    assert store.known_files_in_dir(str(root)).keys() == {str(root / "a.jpg"), os.fsdecode(raw)}
    reads.reset()
    again = do_scan(root, store)
    assert again.cached == 2 and reads.paths == []
    os.remove(raw)
    assert do_scan(root, store).missing == 1
    assert count(store, "SELECT count(*) FROM files WHERE missing = 1 AND typeof(path) = 'blob'") == 1
