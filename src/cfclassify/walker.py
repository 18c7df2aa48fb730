"""Find image files under one or more roots, streaming, one directory at a time.

The walk is iterative (an explicit stack, no recursion limit) over ``os.scandir``, so memory
holds one directory's entries plus the stack, never the whole tree. It yields a ``Directory``
batch per folder walked (empty ones too) because the stat cache looks up a folder's known files
in one query and marks the ones no longer there as missing.

Nothing found on disk is fatal: a folder that cannot be listed, a file that vanished between
listing and stat, or a broken symlink is counted in the
``WalkReport`` (with a few examples to show) and the walk goes on.

Every directory visited is remembered by (device, inode): that detects symlink loops when links
are followed and stops overlapping roots (``/photos`` and ``/photos/2024``) from being walked twice.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .config import WalkSettings

log = logging.getLogger(__name__)

MAX_EXAMPLES = 20


@dataclass(frozen=True, slots=True)
class FoundFile:
    path: str
    name: str
    size: int
    mtime_ns: int
    inode: int
    device: int


@dataclass(frozen=True, slots=True)
class Directory:
    root: str
    path: str
    files: list[FoundFile]
    complete: bool = True  # False when only a file given as a root is listed, not its folder


@dataclass
class WalkReport:
    directories: int = 0
    files: int = 0  # image files yielded
    skipped_hidden: int = 0
    skipped_excluded: int = 0
    skipped_symlinks: int = 0
    not_images: int = 0
    unreadable: int = 0  # permission denied, I/O errors
    vanished: int = 0
    broken_links: int = 0
    non_utf8_names: int = 0  # walked like any other (the store keeps their bytes); counted to inform
    loops: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)

    def problem(self, counter: str, path: str, reason: str) -> None:
        setattr(self, counter, getattr(self, counter) + 1)
        log.debug("skipped %s: %s", path, reason)
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append((path, reason))

    @property
    def skipped(self) -> int:
        return self.skipped_hidden + self.skipped_excluded + self.skipped_symlinks

    @property
    def problems(self) -> int:
        return self.unreadable + self.vanished + self.broken_links + self.loops

    def os_error(self, path: str, exc: OSError, vanished: str = "vanished during the walk") -> None:
        """Count an OSError met on ``path``: gone (ENOENT) or unreadable (anything else)."""
        if isinstance(exc, FileNotFoundError):
            self.problem("vanished", path, vanished)
        else:
            self.problem("unreadable", path, exc.strerror or str(exc))


def display_path(path: str) -> str:
    """A path as a user can read it, even when its bytes are not UTF-8."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_valid_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Matcher:
    """Name tests run once per directory entry, so they avoid per-call pattern work."""

    def __init__(self, settings: WalkSettings) -> None:
        self.extensions = frozenset(e.lower() for e in settings.extensions)
        literal = [p for p in settings.exclude if not any(c in p for c in "*?[")]
        globs = [p for p in settings.exclude if p not in literal]
        self.exclude_names = frozenset(literal)
        self.exclude_re = re.compile("|".join(fnmatch.translate(p) for p in globs)) if globs else None
        self.include_hidden = settings.include_hidden
        self.follow_symlinks = settings.follow_symlinks

    def excluded(self, name: str) -> bool:
        if name in self.exclude_names:
            return True
        return self.exclude_re is not None and self.exclude_re.match(name) is not None

    def is_image_name(self, name: str) -> bool:
        stem, dot, ext = name.rpartition(".")
        return bool(dot and stem) and ext.lower() in self.extensions


def iter_directories(
    roots: Iterable[str | os.PathLike[str]],
    settings: WalkSettings,
    report: WalkReport | None = None,
) -> Iterator[Directory]:
    """Yield each folder under ``roots`` that holds image files, with those files' stat data."""
    report = report if report is not None else WalkReport()
    match = _Matcher(settings)
    visited: set[tuple[int, int]] = set()
    for raw_root in roots:
        root = os.path.abspath(os.fspath(raw_root))
        try:
            st = os.stat(root)
        except OSError as exc:
            report.os_error(root, exc, "no such file or directory")
            continue
        if stat.S_ISREG(st.st_mode):
            # A single file given as a root: take it if it is an image.
            found = FoundFile(root, os.path.basename(root), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
            if match.is_image_name(found.name):
                report.files += 1
                yield Directory(root, os.path.dirname(root), [found], complete=False)
            else:
                report.not_images += 1
            continue
        yield from _walk_root(root, match, visited, report)


def _walk_root(
    root: str, match: _Matcher, visited: set[tuple[int, int]], report: WalkReport
) -> Iterator[Directory]:
    stack = [root]
    while stack:
        path = stack.pop()
        try:
            dir_stat = os.stat(path)
        except OSError as exc:
            report.os_error(path, exc, "directory vanished during the walk")
            continue
        key = (dir_stat.st_dev, dir_stat.st_ino)
        if key in visited:
            if path != root:
                report.problem("loops", path, "directory already walked (symlink loop or overlapping root)")
            continue
        visited.add(key)
        files: list[FoundFile] = []
        subdirs: list[str] = []
        try:
            with os.scandir(path) as it:
                for entry in it:
                    _classify_entry(entry, match, report, files, subdirs)
        except OSError as exc:
            report.os_error(path, exc, "directory vanished during the walk")
            continue
        report.directories += 1
        # Sorted so that walks are deterministic and tests can name what comes first.
        stack.extend(sorted(subdirs, reverse=True))
        # Folders without image files are yielded too: the scan marks what vanished from them.
        files.sort(key=lambda f: f.name)
        report.files += len(files)
        yield Directory(root, path, files)


def _classify_entry(
    entry: os.DirEntry[str],
    match: _Matcher,
    report: WalkReport,
    files: list[FoundFile],
    subdirs: list[str],
) -> None:
    name = entry.name
    if not _is_valid_utf8(name):
        report.non_utf8_names += 1
    if name.startswith(".") and not match.include_hidden:
        report.skipped_hidden += 1
        return
    if match.excluded(name):
        report.skipped_excluded += 1
        return
    try:
        is_link = entry.is_symlink()
        if is_link and not match.follow_symlinks:
            report.skipped_symlinks += 1
            return
        if entry.is_dir(follow_symlinks=match.follow_symlinks):
            subdirs.append(entry.path)
            return
        if not match.is_image_name(name):
            report.not_images += 1
            return
        st = entry.stat(follow_symlinks=match.follow_symlinks)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and entry.is_symlink():
            report.problem("broken_links", entry.path, "symlink points nowhere")
        else:
            report.os_error(entry.path, exc)
        return
    if not stat.S_ISREG(st.st_mode):
        report.not_images += 1  # a fifo or device named .jpg
        return
    files.append(FoundFile(entry.path, name, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev))
