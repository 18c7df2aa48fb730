"""hashing.py: SHA-256 of file bytes, on threads, in input order, errors returned not raised."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path

import pytest

from cfclassify import hashing
from cfclassify.hashing import CHUNK, hash_files, sha256_bytes, sha256_file


def reference(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [0, 1, 4095, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
def test_sha256_file_matches_hashlib(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert sha256_file(path) == reference(data)
    assert sha256_file(str(path)) == reference(data)


def test_empty_file_digest_is_the_known_constant(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert sha256_file(tmp_path / "empty.jpg") == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_sha256_bytes() -> None:
    assert sha256_bytes(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_sha256_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "absent")


def test_hash_files_keeps_input_order_and_values(tmp_path: Path) -> None:
    rng = random.Random(7)
    items = []
    expected = []
    for i in range(300):  # more than one window
        data = rng.randbytes(rng.choice([0, 10, 5000, CHUNK + 3]))
        path = tmp_path / f"{i:03}.jpg"
        path.write_bytes(data)
        items.append((i, str(path)))
        expected.append((i, reference(data)))
    assert list(hash_files(items, workers=4, window=16)) == expected


def test_hash_files_order_survives_uneven_finishing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first file finishes last; results still come back in input order."""

    def slow_first(path: str | os.PathLike[str]) -> str:
        if str(path) == "0":
            time.sleep(0.2)
        return f"digest-{path}"

    monkeypatch.setattr(hashing, "sha256_file", slow_first)
    got = list(hash_files(((i, str(i)) for i in range(8)), workers=4))
    assert got == [(i, f"digest-{i}") for i in range(8)]


def test_hash_files_returns_oserror_instead_of_raising(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    good.write_bytes(b"fine")
    folder = tmp_path / "a-folder.jpg"
    folder.mkdir()
    results = list(
        hash_files([("missing", str(tmp_path / "nope.jpg")), ("dir", str(folder)), ("good", str(good))])
    )
    assert [key for key, _ in results] == ["missing", "dir", "good"]
    assert isinstance(results[0][1], FileNotFoundError)
    assert isinstance(results[1][1], IsADirectoryError)
    assert results[2][1] == reference(b"fine")


def test_hash_files_does_not_swallow_other_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(path: str | os.PathLike[str]) -> str:
        raise ValueError("a bug, not a file problem")

    monkeypatch.setattr(hashing, "sha256_file", boom)
    with pytest.raises(ValueError, match="a bug"):
        list(hash_files([(1, "x")]))


def test_hash_files_bounds_work_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """The input is pulled lazily: never more than ``window`` items ahead of what was yielded."""
    pulled = 0
    max_ahead = 0
    lock = threading.Lock()

    def items():  # type: ignore[no-untyped-def]
        nonlocal pulled
        for i in range(1000):
            with lock:
                pulled += 1
            yield i, str(i)

    monkeypatch.setattr(hashing, "sha256_file", lambda path: str(path))
    consumed = 0
    for _ in hash_files(items(), workers=2, window=32):
        consumed += 1
        max_ahead = max(max_ahead, pulled - consumed)
    assert consumed == 1000
    assert max_ahead <= 32


def test_hash_files_on_nothing() -> None:
    assert list(hash_files([])) == []


def test_default_workers_bounds() -> None:
    assert 2 <= hashing.default_workers() <= 8
