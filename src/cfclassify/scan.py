"""``scan``: walk the roots, hash what changed, and record files and images.

For each folder the walker yields, the folder's recorded files come back in one query and each
file is checked against its row, like git's index: same size, mtime_ns and inode means the same
bytes, so the file is not read again (a chmod changes only ctime, which is not compared). A path
that is new but whose (device, inode, size, mtime_ns) matches a recorded file elsewhere is a move
or rename within the roots and inherits that file's hash without a read. Everything else is
hashed on the thread pool in ``hashing.py``. Writes go in batches, one transaction each.

A folder's recorded files that are no longer in it are marked missing as the folder is walked
(their images and labels stay); at the end, so are the files of recorded folders under the roots
that the walk never reached (deleted, or now excluded). Files seen again are marked present.
Unchanged files are not written: a rescan of an unchanged tree reads and writes nothing but the
directory listings, their stat data and one query per folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .config import WalkSettings
from .hashing import hash_files
from .store import FileRecord, Store
from .walker import FoundFile, WalkReport, iter_directories

log = logging.getLogger(__name__)

BATCH = 2000

Progress = Callable[[int], None]


@dataclass
class ScanReport:
    files: int = 0  # image files found
    hashed: int = 0  # files whose bytes were read
    cached: int = 0  # unchanged files, not read
    moved: int = 0  # renamed or moved files, not read
    new_images: int = 0  # distinct contents seen for the first time
    known_images: int = 0  # distinct contents seen in this scan that were recorded before
    duplicate_paths: int = 0  # files whose content another file in this scan already has
    missing: int = 0  # recorded files not found any more
    returned: int = 0  # files seen again after going missing
    unreadable: int = 0  # files found but not readable
    walk: WalkReport = field(default_factory=WalkReport)
    examples: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        walk = data.pop("walk")
        data["examples"] = [list(x) for x in (self.walk.examples + self.examples)[:20]]
        walk.pop("examples")
        data["skipped"] = {
            "hidden": walk["skipped_hidden"],
            "excluded": walk["skipped_excluded"],
            "symlinks": walk["skipped_symlinks"],
            "not_images": walk["not_images"],
        }
        data["problems"] = {
            "unreadable": walk["unreadable"] + self.unreadable,
            "vanished": walk["vanished"],
            "broken_links": walk["broken_links"],
            "loops": walk["loops"],
        }
        data["directories"] = walk["directories"]
        data["non_utf8_names"] = walk["non_utf8_names"]
        return data


def scan(
    roots: Sequence[str],
    settings: WalkSettings,
    store: Store,
    *,
    progress: Progress | None = None,
    hash_workers: int | None = None,
) -> ScanReport:
    """Walk ``roots`` and bring the database up to date with them. Reads only what changed."""
    report = ScanReport()
    abs_roots = [os.path.abspath(r) for r in roots]
    seen_images: set[str] = set()
    visited: set[str] = set()
    # On a first scan there is nothing to have moved from: skip the per-file rename lookup.
    may_have_moved = store.has_files()

    pending = 0
    to_hash: list[tuple[tuple[str, FoundFile], str]] = []
    ready: list[FileRecord] = []
    gone: list[str] = []
    returned: list[str] = []

    def flush() -> None:
        nonlocal pending
        for (root, found), digest in hash_files(to_hash, workers=hash_workers):
            if isinstance(digest, OSError):
                report.unreadable += 1
                reason = digest.strerror or str(digest)
                log.warning("cannot read %s: %s", found.path, reason)
                if len(report.examples) < 20:
                    report.examples.append((found.path, reason))
                continue
            report.hashed += 1
            ready.append(_record(root, found, digest))
        for record in ready:
            _count_image(record.sha256, report, seen_images)
        report.new_images += store.record_scan_batch(ready, gone=gone, returned=returned)
        report.missing += len(gone)
        if progress:
            progress(pending)
        for batch in (to_hash, ready, gone, returned):
            batch.clear()
        pending = 0

    for directory in iter_directories(abs_roots, settings, report.walk):
        known = store.known_files_in_dir(directory.path)
        found_paths: set[str] = set()
        for found in directory.files:
            report.files += 1
            pending += 1
            found_paths.add(found.path)
            row = known.get(found.path)
            if row is not None and row.missing:
                report.returned += 1
            if row is not None and row.sha256 and _unchanged(row.size, row.mtime_ns, row.inode, found):
                report.cached += 1
                _count_image(row.sha256, report, seen_images)
                if row.missing:
                    returned.append(found.path)
                continue
            moved = (
                store.find_moved(found.device, found.inode, found.size, found.mtime_ns, found.path)
                if may_have_moved
                else None
            )
            if moved is not None and moved.sha256:
                report.moved += 1
                ready.append(_record(directory.root, found, moved.sha256))
                continue
            to_hash.append(((directory.root, found), found.path))
        if directory.complete:
            visited.add(directory.path)
            gone.extend(p for p, row in known.items() if not row.missing and p not in found_paths)
        if pending >= BATCH or len(gone) >= BATCH:
            flush()
    flush()
    # Only folders given as roots were listed in full; a root that is gone (an unmounted disk, say)
    # marks nothing missing.
    report.missing += store.finish_scan([r for r in abs_roots if os.path.isdir(r)], visited)
    # Images counted as known in _count_image may have been recorded as new in this very scan.
    report.known_images = len(seen_images) - report.new_images
    return report


def _unchanged(size: int, mtime_ns: int, inode: int, found: FoundFile) -> bool:
    return size == found.size and mtime_ns == found.mtime_ns and inode == found.inode


def _record(root: str, found: FoundFile, sha256: str) -> FileRecord:
    return FileRecord(
        path=found.path,
        dir=os.path.dirname(found.path),
        root=root,
        sha256=sha256,
        size=found.size,
        mtime_ns=found.mtime_ns,
        inode=found.inode,
        device=found.device,
    )


def _count_image(sha256: str, report: ScanReport, seen_images: set[str]) -> None:
    if sha256 in seen_images:
        report.duplicate_paths += 1
    else:
        seen_images.add(sha256)
