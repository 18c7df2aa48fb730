"""Benchmark of ``cfclassify scan``: cold scan, unchanged rescan, peak memory. Ratios, same run.

    .venv/bin/python bench/bench_scan.py [--quick] [--out bench/RESULTS.md] [--workdir DIR]

1. Cold scan (``cfclassify.scan.scan`` into a fresh database) of N files of ~200 kB random bytes,
   against ``find | xargs sha256sum`` and ``find | xargs -P2 openssl dgst -sha256`` on the same
   files. Goal: <= 1.2x sha256sum.
2. Unchanged rescan of 100,000 small files over ~1,000 folders against a bare ``find -type f``
   (and, for context, ``find -printf`` of size, mtime and inode, which stats every file as the
   scan must). Goal: <= 2x the bare find.
3. Peak RSS of a child process running a cold scan at 10,000 and 100,000 files (from
   ``os.wait4``'s rusage for that child). Goal: <= 150 MB and flat.

The page cache cannot be dropped without privileges we do not assume, so every command runs once
untimed first (warm cache for all), then each is timed ``--repeat`` times and the median is kept.
Corpora come from a fixed seed; all of them live under one temporary folder removed at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SEED = 20260101
HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(SRC))

from cfclassify.config import WalkSettings  # noqa: E402
from cfclassify.scan import scan  # noqa: E402
from cfclassify.store import Store  # noqa: E402


@dataclass
class Sizes:
    big_files: int
    big_size: int
    small_folders: int
    small_per_folder: int
    memory_points: tuple[int, ...]


FULL = Sizes(big_files=2000, big_size=200_000, small_folders=1000, small_per_folder=100,
             memory_points=(10_000, 100_000))  # fmt: skip
QUICK = Sizes(big_files=300, big_size=200_000, small_folders=200, small_per_folder=50,
              memory_points=(5_000, 10_000))  # fmt: skip


@dataclass
class Row:
    what: str
    seconds: float | None
    ratio: str
    note: str = ""


# -- corpora -----------------------------------------------------------------------------------


def make_big_corpus(root: Path, count: int, size: int, rng: random.Random) -> None:
    for i in range(count):
        folder = root / f"d{i // 100:03}"
        folder.mkdir(parents=True, exist_ok=True)
        jitter = rng.randint(-size // 10, size // 10)
        (folder / f"img{i:05}.jpg").write_bytes(rng.randbytes(size + jitter))


def make_small_corpus(root: Path, folders: int, per_folder: int, rng: random.Random) -> None:
    """``folders`` folders of ``per_folder`` files, grouped by 100 folders (g00/d000/...)."""
    for d in range(folders):
        folder = root / f"g{d // 100:02}" / f"d{d % 100:03}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_folder):
            (folder / f"p{i:03}.jpg").write_bytes(rng.randbytes(rng.randint(200, 600)))


# -- timing ------------------------------------------------------------------------------------


def timed(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm: page cache, imports, dentries
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def shell(command: str) -> Callable[[], None]:
    def run() -> None:
        subprocess.run(command, shell=True, check=True, stdout=subprocess.DEVNULL)

    return run


def cold_scan(root: Path, work: Path) -> Callable[[], None]:
    def run() -> None:
        db = work / "cold.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        with Store(db) as store:
            report = scan([str(root)], WalkSettings(), store)
        assert report.hashed == report.files, report

    return run


def rescan(root: Path, db: Path) -> Callable[[], None]:
    def run() -> None:
        with Store(db) as store:
            report = scan([str(root)], WalkSettings(), store)
        assert report.hashed == 0 and report.cached == report.files, report

    return run


CHILD = """
import sys
sys.path.insert(0, {src!r})
from cfclassify.config import WalkSettings
from cfclassify.scan import scan
from cfclassify.store import Store
with Store({db!r}) as store:
    report = scan({roots!r}, WalkSettings(), store)
print(report.files)
"""


def child_peak_rss(roots: list[str], db: Path) -> tuple[int, float, int]:
    """(files scanned, seconds, peak RSS in bytes) of a cold scan run in a child process."""
    code = CHILD.format(src=str(SRC), db=str(db), roots=roots)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"child scan failed with exit code {proc.returncode}")
    return int(out.decode().strip()), seconds, usage.ru_maxrss * 1024  # Linux: kilobytes


def baseline_rss(db: Path) -> int:
    code = (
        f"import sys; sys.path.insert(0, {str(SRC)!r})\n"
        f"from cfclassify.store import Store\nStore({str(db)!r}).close()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return usage.ru_maxrss * 1024


# -- the three measurements --------------------------------------------------------------------


def bench_cold(work: Path, sizes: Sizes, repeat: int, rng: random.Random) -> list[Row]:
    root = work / "big"
    make_big_corpus(root, sizes.big_files, sizes.big_size, rng)
    q = shlex.quote(str(root))
    t_sha = timed(shell(f"find {q} -type f -print0 | xargs -0 sha256sum"), repeat)
    t_ssl = timed(shell(f"find {q} -type f -print0 | xargs -0 -P2 openssl dgst -sha256"), repeat)
    t_scan = timed(cold_scan(root, work), repeat)
    mb = sum(f.stat().st_size for f in root.rglob("*.jpg")) / 1e6
    label = f"{sizes.big_files:,} files, {mb:,.0f} MB"
    return [
        Row(f"cold scan, {label}", t_scan, "1.00", f"{mb / t_scan:,.0f} MB/s"),
        Row("`find \\| xargs sha256sum`", t_sha, f"scan = {t_scan / t_sha:.2f}x", "goal <= 1.2x"),
        Row(
            "`find \\| xargs -P2 openssl dgst -sha256`",
            t_ssl,
            f"scan = {t_scan / t_ssl:.2f}x",
            "the hashing limit on this machine",
        ),  # fmt: skip
    ]


def bench_rescan(work: Path, sizes: Sizes, repeat: int, rng: random.Random) -> tuple[Path, list[Row]]:
    root = work / "small"
    make_small_corpus(root, sizes.small_folders, sizes.small_per_folder, rng)
    db = work / "rescan.db"
    with Store(db) as store:
        start = time.perf_counter()
        first = scan([str(root)], WalkSettings(), store)
        t_first = time.perf_counter() - start
    q = shlex.quote(str(root))
    t_find = timed(shell(f"find {q} -type f"), repeat)
    t_stat = timed(shell(f"find {q} -type f -printf '%s %T@ %i %p\\n'"), repeat)
    t_rescan = timed(rescan(root, db), repeat)
    n = f"{first.files:,} files in {sizes.small_folders:,} folders"
    return root, [
        Row(f"unchanged rescan, {n}", t_rescan, "1.00", f"{first.files / t_rescan:,.0f} files/s"),
        Row("bare `find -type f`", t_find, f"rescan = {t_rescan / t_find:.2f}x", "goal <= 2x"),
        Row(
            "`find -printf '%s %T@ %i %p'` (stats every file)",
            t_stat,
            f"rescan = {t_rescan / t_stat:.2f}x",
            "context",
        ),  # fmt: skip
        Row(f"(first, cold scan of the same {first.files:,} files)", t_first, "", "not compared"),
    ]


def bench_memory(work: Path, small_root: Path, sizes: Sizes) -> list[Row]:
    rows = []
    base = baseline_rss(work / "baseline.db")
    rows.append(Row("peak RSS: import + open a database", None, f"{base / 1e6:.0f} MB", "baseline"))
    groups = sorted(p for p in small_root.iterdir() if p.is_dir())
    per_group = sizes.small_per_folder * 100  # files under each g00, g01, ... folder
    for point in sizes.memory_points:
        wanted = max(1, point // per_group)
        roots = [str(small_root)] if wanted >= len(groups) else [str(g) for g in groups[:wanted]]
        db = work / f"mem{point}.db"
        files, seconds, peak = child_peak_rss(roots, db)
        rows.append(Row(f"peak RSS: cold scan of {files:,} files", seconds, f"{peak / 1e6:.0f} MB",
                        "goal <= 150 MB, flat"))  # fmt: skip
    return rows


# -- report ------------------------------------------------------------------------------------


def markdown(rows: list[Row], sizes: Sizes, repeat: int, quick: bool, total: float) -> str:
    lines = [
        f"## scan benchmark{' (--quick)' if quick else ''}: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {os.cpu_count()} CPUs (nproc), {platform.machine()}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}. Page cache warm for every command (one untimed run "
        f"each first); median of {repeat} timed runs. Whole benchmark: {total:.0f} s.",
        "",
        "| measurement | seconds | ratio / value | note |",
        "|---|---:|---:|---|",
    ]
    for row in rows:
        seconds = f"{row.seconds:.3f}" if row.seconds is not None else ""
        lines.append(f"| {row.what} | {seconds} | {row.ratio} | {row.note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller corpora (about 20 s)")
    parser.add_argument("--out", type=Path, help="append the Markdown section to this file")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per command (median kept)")
    parser.add_argument("--workdir", type=Path, help="where to build corpora (default: a temp folder)")
    parser.add_argument("--only", choices=["cold", "rescan", "memory"], action="append")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    only = set(args.only or ["cold", "rescan", "memory"])
    rng = random.Random(SEED)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="cfclassify-bench-", dir=args.workdir))
    rows: list[Row] = []
    try:
        if "cold" in only:
            rows += bench_cold(work, sizes, args.repeat, rng)
            print(markdown(rows, sizes, args.repeat, args.quick, 0), file=sys.stderr)
        if only & {"rescan", "memory"}:
            small_root, rescan_rows = bench_rescan(work, sizes, args.repeat, rng)
            if "rescan" in only:
                rows += rescan_rows
            if "memory" in only:
                rows += bench_memory(work, small_root, sizes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = markdown(rows, sizes, args.repeat, args.quick, time.perf_counter() - started)
    print(text)
    if args.out:
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
