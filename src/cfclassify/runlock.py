"""One run at a time per database: an exclusive ``flock`` on ``<db>.lock`` beside the database.

The kernel drops a flock when its holder dies, kill -9 included, so a stale lock file never
blocks the next run. The holder writes its pid into the file so a second run can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from .errors import RunLocked, StoreError


def lock_path_for(db_path: str) -> str:
    return f"{db_path}.lock"


@contextlib.contextmanager
def run_lock(db_path: str) -> Iterator[None]:
    """Hold the run lock for ``db_path`` or raise RunLocked (exit 75) naming the holder."""
    path = lock_path_for(db_path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot create lock file {path}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            who = f"pid {holder}" if holder else "another process"
            raise RunLocked(
                f"another cfclassify run ({who}) is using {db_path}; this run stops, try again later",
                pid=holder,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
