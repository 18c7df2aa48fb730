"""Benchmarks of ``cfclassify run`` against the stand-in: every figure a ratio measured in this run.

    .venv/bin/python bench/bench_pipeline.py [--quick] [--out bench/RESULTS.md] [--only NAME ...]

1. ``throughput``: 400 small JPEGs, concurrency 16, stand-in latency 100 ms. The pipeline
   (``cfclassify.runner.run``: scan, prepare, reserve, classify, store) against a bare httpx loop
   (16 asyncio tasks posting the raw bytes over one ``httpx.AsyncClient``, no database) on the same
   stand-in: goal >= 0.95. Also against the ideal (concurrency / latency, capped by the 3000/min
   rate limit) and against a plain sequential loop over the official ``cloudflare`` SDK.
2. ``e2e``: 12-MP JPEGs (4000 x 3000), stand-in at zero latency: images/s end to end, goal
   >= 50 (the tool must not be the bottleneck below the rate limit), with a cProfile summary.
3. ``prepare``: ``prepare_upload`` alone on the same 12-MP files, 1 and 2 threads (goal >= 50/s
   on 2 cores), and upload bytes over original bytes (goal <= 2 %).
4. ``budget``: one UTC day at the default budget (injected clock, stand-in at zero latency,
   concurrency 64): exactly floor(10^10 / 228,055) = 43,849 images billed, and how long it takes.
   ``--quick`` uses ``--budget 100`` (438 images) instead and says so.

The stand-in runs in its own process (``cfclassify emulate``), as the real service would be on
another machine. Corpora are generated once from fixed seeds and cached under ``bench/work/``;
databases live in a temporary folder removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ACCOUNT,
    TOKEN,
    WORK,
    EmulatorProcess,
    credentials_env,
    machine_line,
    median,
    now,
    table,
    verdict,
    write_section,
)

from cfclassify.config import DEFAULT_MODEL, load_settings  # noqa: E402
from cfclassify.images import prepare_upload  # noqa: E402
from cfclassify.runner import RunResult, run  # noqa: E402
from cfclassify.samples import make_photo  # noqa: E402

COST = 228_055
DAY_LIMIT = 10_000 * 1_000_000
RATE_LIMIT_PER_S = 3000 / 60
UNCAPPED_RPM = 1_000_000_000  # the stand-in has no per-minute limit unless asked for one
FIXED_NOON = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


@dataclass
class Sizes:
    small: int = 400
    small_repeat: int = 3
    sdk_images: int = 40
    big: int = 60
    tiny: int = 44_000
    budget: float | None = None  # None: the default daily budget


FULL = Sizes()
QUICK = Sizes(small=200, small_repeat=1, sdk_images=15, big=20, tiny=1_000, budget=100)


@dataclass
class Section:
    title: str
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        parts = [f"### {self.title}", ""]
        if self.rows:
            parts += [table(["measurement", "value", "ratio", "goal", "verdict"], self.rows), ""]
        parts += [f"- {n}" for n in self.notes]
        for block in self.blocks:
            parts += ["", "```", block.rstrip(), "```"]
        return "\n".join(parts) + "\n"


# -- corpora (cached) --------------------------------------------------------------------------


def small_corpus(count: int) -> Path:
    root = WORK / "small-320x240"
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = root / f"img_{i:04d}.jpg"
        if not path.exists():
            path.write_bytes(make_photo(10_000 + i, (320, 240)))
    return root


def _write_big(i: int) -> None:
    path = WORK / "photos-12mp" / f"photo_{i:03d}.jpg"
    if not path.exists():
        tmp = path.with_suffix(".part")
        tmp.write_bytes(make_photo(20_000 + i, (4000, 3000)))
        tmp.rename(path)


def big_corpus(count: int) -> list[Path]:
    root = WORK / "photos-12mp"
    root.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(count) if not (root / f"photo_{i:03d}.jpg").exists()]
    if missing:
        print(f"  generating {len(missing)} 12-MP photos (cached in {root})", file=sys.stderr)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            list(pool.map(_write_big, missing))
    return [root / f"photo_{i:03d}.jpg" for i in range(count)]


def tiny_corpus(count: int) -> list[str]:
    """``count`` distinct 16 x 16 PNGs (random pixels), 1,000 per folder; returns the folders."""
    from PIL import Image

    root = WORK / "tiny-16px"
    folders = []
    for start in range(0, count, 1000):
        folder = root / f"d{start // 1000:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        folders.append(str(folder))
        for i in range(start, min(count, start + 1000)):
            path = folder / f"t_{i:06d}.png"
            if not path.exists():
                pixels = random.Random(i).randbytes(16 * 16 * 3)
                Image.frombytes("RGB", (16, 16), pixels).save(path, "PNG")
    return folders


# -- the three clients -------------------------------------------------------------------------


def pipeline(
    api_base: str,
    config: Path,
    roots: list[str],
    db: Path,
    *,
    concurrency: int,
    rpm: int,
    budget: float | None = None,
    clock: Callable[[], datetime] | None = None,
) -> tuple[float, RunResult]:
    settings = load_settings(
        config,
        env=credentials_env(api_base),
        overrides={"db": str(db), "run__concurrency": concurrency, "run__requests_per_minute": rpm},
    )
    extra: dict[str, Any] = {"clock": clock} if clock else {}
    started = now()
    result = run(settings, roots, budget=budget, handle_signals=False, **extra)
    return now() - started, result


def bare_httpx(api_base: str, bodies: list[bytes], concurrency: int) -> float:
    """The floor: concurrency tasks posting raw bytes over one client, no database, no prepare."""
    url = f"{api_base}/accounts/{ACCOUNT}/ai/run/{DEFAULT_MODEL}"

    async def main() -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "image/jpeg"}
        async with httpx.AsyncClient(limits=limits, headers=headers, timeout=60) as client:
            queue = list(reversed(bodies))

            async def worker() -> None:
                while queue:
                    body = queue.pop()
                    response = await client.post(url, content=body)
                    if not response.json()["success"]:
                        raise RuntimeError(response.text)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    started = now()
    asyncio.run(main())
    return now() - started


def sdk_loop(api_base: str, bodies: list[bytes]) -> float:
    """What a user would write: the official SDK in a plain loop (it sends the JSON body form)."""
    from cloudflare import Cloudflare

    client = Cloudflare(api_token=TOKEN, base_url=api_base, max_retries=0)
    started = now()
    for data in bodies:
        answer = client.ai.run(DEFAULT_MODEL, account_id=ACCOUNT, image=list(data))
        if not answer:
            raise RuntimeError("empty answer from the SDK")
    elapsed = now() - started
    client.close()
    return elapsed


# -- benchmarks --------------------------------------------------------------------------------


def bench_throughput(tmp: Path, config: Path, sizes: Sizes) -> Section:
    concurrency, latency = 16, 0.100
    root = small_corpus(sizes.small)
    files = sorted(root.iterdir())[: sizes.small]
    roots_dir = tmp / "small"
    roots_dir.mkdir()
    for f in files:  # hard links: the same bytes, a root holding exactly these files
        os.link(f, roots_dir / f.name)
    bodies = [f.read_bytes() for f in files]
    n = len(bodies)
    sec = Section(f"1. Pipeline throughput: {n} JPEGs of 320 x 240, concurrency 16, latency 100 ms")
    bare_t: list[float] = []
    pipe_t: list[float] = []
    classify_t: list[float] = []
    with EmulatorProcess("--latency-ms", "100") as emu:
        bare_httpx(emu.api_base, bodies[:32], concurrency)  # warm-up: imports, connections
        for rep in range(sizes.small_repeat):
            bare_t.append(bare_httpx(emu.api_base, bodies, concurrency))
            seconds, result = pipeline(
                emu.api_base,
                config,
                [str(roots_dir)],
                tmp / f"t{rep}.db",
                concurrency=concurrency,
                rpm=UNCAPPED_RPM,
            )
            assert result.exit_code == 0 and result.run is not None, result.as_dict()
            assert result.run.classified == n, result.as_dict()
            pipe_t.append(seconds)
            classify_t.append(result.run.seconds)
        capped_s, capped = pipeline(
            emu.api_base, config, [str(roots_dir)], tmp / "capped.db", concurrency=concurrency, rpm=3000
        )
        assert capped.exit_code == 0, capped.as_dict()
        sdk_n = min(sizes.sdk_images, n)
        emu.reset()
        sdk_s = sdk_loop(emu.api_base, bodies[:sdk_n])
        stats = emu.stats()
    bare, pipe, cls = median(bare_t), median(pipe_t), median(classify_t)
    bare_rate, pipe_rate = n / bare, n / pipe
    ideal_uncapped = concurrency / latency
    ideal = min(ideal_uncapped, RATE_LIMIT_PER_S)
    capped_rate = n / capped_s
    sdk_rate = sdk_n / sdk_s
    scan_share = (pipe - cls) / pipe
    sec.rows = [
        [
            "bare httpx loop (16 tasks, no DB)",
            f"{bare_rate:.1f} img/s ({bare:.2f} s)",
            "1.00",
            "baseline",
            "",
        ],
        [
            "pipeline, rate cap lifted (scan included)",
            f"{pipe_rate:.1f} img/s ({pipe:.2f} s)",
            f"{pipe_rate / bare_rate:.3f} of bare",
            ">= 0.95",
            verdict(pipe_rate / bare_rate >= 0.95),
        ],
        [
            "  of which scan + start-up (before the first request)",
            f"{pipe - cls:.3f} s",
            f"{scan_share:.1%} of the run",
            "",
            "",
        ],
        [
            "pipeline, rate cap lifted, vs the uncapped ideal (16 / 0.1 s)",
            f"{pipe_rate:.1f} img/s",
            f"{pipe_rate / ideal_uncapped:.3f} of {ideal_uncapped:.0f}/s",
            "context",
            "",
        ],
        [
            "pipeline at the default 3000/min cap vs the ideal min(160/s, 50/s)",
            f"{capped_rate:.1f} img/s ({capped_s:.2f} s)",
            f"{capped_rate / ideal:.3f} of {ideal:.0f}/s",
            ">= 0.95",
            verdict(capped_rate / ideal >= 0.95),
        ],
        [
            f"official `cloudflare` SDK, sequential loop ({sdk_n} images)",
            f"{sdk_rate:.2f} img/s ({sdk_s:.2f} s)",
            f"pipeline = {pipe_rate / sdk_rate:.1f}x the SDK (capped: {capped_rate / sdk_rate:.1f}x)",
            "context",
            "",
        ],
    ]
    sec.notes = [
        f"Median of {sizes.small_repeat} interleaved runs each (bare: {_fmt(bare_t)} s; "
        f"pipeline: {_fmt(pipe_t)} s). Each pipeline run starts from a fresh database, so the scan "
        "(walk + SHA-256 of every file) and the prepare stage (decode, re-encode at 256 px) are "
        "part of the job measured; the bare loop posts bytes read beforehand.",
        '"Rate cap lifted" sets `run.requests_per_minute` to 10^9 so that the comparison with the '
        "bare loop (which has no cap) measures the tool, not its pacing; the default cap is measured "
        "separately against the ideal it allows (3000/min = 50/s).",
        f"The SDK sends the JSON body form (every byte as an integer, "
        f"{stats['bytes_received'] / max(1, stats['requests']) / 1000:.0f} kB a request where the raw "
        f"file is {sum(map(len, bodies[:sdk_n])) / sdk_n / 1000:.0f} kB) one request at a time: its "
        "rate is about 1 / (latency + encoding).",
    ]
    return sec


def bench_e2e_and_prepare(tmp: Path, config: Path, sizes: Sizes) -> list[Section]:
    files = big_corpus(sizes.big)
    root = tmp / "big"
    root.mkdir()
    for f in files:
        os.link(f, root / f.name)
    n = len(files)
    orig_bytes = sum(f.stat().st_size for f in files)
    e2e = Section(f"2. End to end from 12-MP JPEGs (4000 x 3000, {n} files), stand-in at zero latency")
    with EmulatorProcess() as emu:
        seconds, result = pipeline(
            emu.api_base, config, [str(root)], tmp / "e2e.db", concurrency=8, rpm=UNCAPPED_RPM
        )
        assert result.exit_code == 0 and result.run is not None, result.as_dict()
        profiler = cProfile.Profile()
        profiler.enable()
        p_seconds, p_result = pipeline(
            emu.api_base, config, [str(root)], tmp / "e2e-profile.db", concurrency=8, rpm=UNCAPPED_RPM
        )
        profiler.disable()
        assert p_result.exit_code == 0, p_result.as_dict()
    rate = n / seconds
    classify = result.run.seconds
    scan_s = seconds - classify
    e2e.rows = [
        [
            "images/s end to end (scan + prepare + classify + store)",
            f"{rate:.1f} img/s ({seconds:.2f} s)",
            f"{rate / RATE_LIMIT_PER_S:.2f} of the 50/s rate limit",
            ">= 50/s",
            verdict(rate >= RATE_LIMIT_PER_S),
        ],
        ["  scan (hash 12-MP files) + start-up", f"{scan_s:.2f} s", f"{scan_s / seconds:.1%}", "", ""],
        [
            "  classify stage (prepare on threads, requests, store)",
            f"{classify:.2f} s",
            f"{n / classify:.1f} img/s",
            "",
            "",
        ],
        ["same run under cProfile", f"{p_seconds:.2f} s", f"{p_seconds / seconds:.2f}x", "", ""],
    ]
    buf = io.StringIO()
    stats = pstats.Stats(profiler, stream=buf)
    recorded = float(getattr(stats, "total_tt", 0.0))
    stats.sort_stats("cumulative").print_stats(15)
    text = buf.getvalue()
    text = text[text.find("   ncalls") :] if "   ncalls" in text else text
    e2e.notes = [
        "cProfile sees the calling thread only: the prepare work (Pillow, on a thread pool) and "
        "the hashing threads show up as waits (`run_in_executor`, `_thread.lock.acquire`), not as "
        "their own functions. Section 3 measures that stage alone.",
        f"cProfile accounted for {recorded:.2f} s of the {p_seconds:.2f} s profiled run: time a "
        "coroutine spends suspended, and code outside the main thread, is not attributed to anything.",
    ]
    e2e.blocks = ["cProfile, top 15 by cumulative time\n" + "\n".join(_short(text).splitlines()[:40])]

    prep = Section(f"3. Prepare alone (`prepare_upload`, 256 px short side, q90) on the same {n} files")
    for f in files:  # page cache warm for both timings
        f.read_bytes()
    started = now()
    uploads = [prepare_upload(f) for f in files]
    one = now() - started
    started = now()
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(prepare_upload, files))
    two = now() - started
    up_bytes = sum(len(u.data) for u in uploads)
    share = up_bytes / orig_bytes
    prep.rows = [
        ["1 thread", f"{n / one:.1f} img/s ({one:.2f} s)", "1.00", "baseline", ""],
        [
            "2 threads",
            f"{n / two:.1f} img/s ({two:.2f} s)",
            f"{one / two:.2f}x 1 thread",
            ">= 50 img/s on 2 cores",
            verdict(n / two >= 50),
        ],
        [
            "upload bytes / original bytes",
            f"{up_bytes / n / 1000:.1f} kB vs {orig_bytes / n / 1e6:.2f} MB a photo",
            f"{share:.2%}",
            "<= 2 %",
            verdict(share <= 0.02),
        ],
    ]
    sizes_seen = {(u.upload_width, u.upload_height) for u in uploads}
    prep.notes = [f"Upload sizes: {sorted(sizes_seen)}; the pipeline run in section 2 prepared the same."]
    return [e2e, prep]


def bench_budget(tmp: Path, config: Path, sizes: Sizes) -> Section:
    folders = tiny_corpus(sizes.tiny)
    limit = DAY_LIMIT if sizes.budget is None else round(sizes.budget * 1_000_000)
    expected = limit // COST
    how = "the default budget (10,000 neurons)" if sizes.budget is None else f"--budget {sizes.budget:g}"
    sec = Section(
        f"4. Budget use: one UTC day at {how}, {sizes.tiny:,} distinct 16 x 16 PNGs, concurrency 64"
    )
    with EmulatorProcess() as emu:
        seconds, result = pipeline(
            emu.api_base,
            config,
            folders,
            tmp / "budget.db",
            concurrency=64,
            rpm=UNCAPPED_RPM,
            budget=sizes.budget,
            clock=lambda: FIXED_NOON,
        )
        stats = emu.stats()
    assert result.run is not None, result.as_dict()
    import sqlite3

    conn = sqlite3.connect(tmp / "budget.db")
    charged = conn.execute(
        "SELECT coalesce(sum(micro_neurons), 0) FROM ledger WHERE state = 'charged'"
    ).fetchone()[0]
    rows = conn.execute("SELECT count(*) FROM classifications").fetchone()[0]
    stamps = [
        datetime.fromisoformat(t).timestamp()
        for (t,) in conn.execute("SELECT classified_at FROM classifications ORDER BY classified_at")
    ]
    conn.close()
    # Throughput early and late in the day: does the cost of an image grow with the day's ledger?
    tenth = max(2, len(stamps) // 10)
    early = (tenth - 1) / max(1e-9, stamps[tenth - 1] - stamps[0])
    late = (tenth - 1) / max(1e-9, stamps[-1] - stamps[-tenth])
    billed = stats["billed_images"]
    ok = billed == expected and rows == expected and charged == expected * COST and result.exit_code == 75
    sec.rows = [
        [
            "images billed by the stand-in",
            f"{billed:,}",
            f"{billed / expected:.5f} of floor(limit / 228,055) = {expected:,}",
            f"exactly {expected:,}",
            verdict(ok),
        ],
        [
            "classifications stored / ledger charged",
            f"{rows:,} / {charged:,} micro-neurons",
            f"{charged / limit:.7f} of the limit",
            f"<= {limit:,}",
            verdict(charged <= limit),
        ],
        [
            "exit code, stop reason",
            f"{result.exit_code}, {result.run.stop_reason}",
            "",
            "75, budget",
            verdict(result.exit_code == 75 and result.run.stop_reason == "budget"),
        ],
        [
            "time for the day's images",
            f"{seconds:.1f} s",
            f"{billed / seconds:.0f} img/s ({result.run.seconds:.1f} s classifying)",
            "< 300 s" if sizes.budget is None else "context",
            verdict(seconds < 300) if sizes.budget is None else "",
        ],
        [
            f"rate over the first / last {tenth:,} images of the day",
            f"{early:.0f} / {late:.0f} img/s",
            f"last = {late / early:.2f} of first",
            "flat (>= 0.8)",
            verdict(late / early >= 0.8),
        ],
        [
            "the same day at the real 3000/min limit",
            f"{expected / RATE_LIMIT_PER_S / 60:.1f} min",
            f"tool = {seconds / (expected / RATE_LIMIT_PER_S):.2f} of that",
            "context",
            "",
        ],
    ]
    sec.notes = [
        f"floor(10^10 / 228,055) = {DAY_LIMIT // COST:,}, and {DAY_LIMIT // COST:,} x 228,055 = "
        f"{DAY_LIMIT // COST * COST:,} <= 10^10: the spec's own rule (refuse when charged + reserved + "
        "cost > limit) admits 43,849 images a day, while the SPEC and WORKERS_AI.md text say 43,848 "
        f"(10,000 / 0.228055 = {10_000 / 0.228055:,.2f}, so 43,848 is an off-by-one in the text). The "
        "ledger follows the rule.",
        "The ledger and the stand-in read an injected clock fixed at 12:00 UTC, so the run cannot "
        "cross midnight; `run.requests_per_minute` is lifted (the stand-in has no per-minute limit "
        "here) so the figure measures the tool, not the pacing.",
    ]
    if sizes.budget is not None:
        sec.notes.append(
            f"--quick: scaled down to --budget {sizes.budget:g} ({expected} images); "
            "`make bench` runs the full day."
        )
    return sec


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _short(text: str) -> str:
    """Trim the site-packages / repo prefixes from the profile's file names."""
    for prefix in sorted({p for p in sys.path if p and len(p) > 4}, key=len, reverse=True):
        text = text.replace(prefix.rstrip("/") + "/", "")
    return text


BENCHES = ("throughput", "e2e", "budget")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller corpora, --budget 100 for the day")
    parser.add_argument("--out", type=Path, help="put the Markdown section into this file (replacing it)")
    parser.add_argument("--only", choices=BENCHES, action="append", help="run only these (repeatable)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    only = args.only or list(BENCHES)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="cfclassify-bench-pipeline-"))
    config = tmp / "empty.toml"  # not ./config.toml: the built-in defaults are what is measured
    config.write_text("")
    sections: list[Section] = []
    try:
        if "throughput" in only:
            print("pipeline: throughput", file=sys.stderr)
            sections.append(bench_throughput(tmp, config, sizes))
        if "e2e" in only:
            print("pipeline: 12-MP end to end and prepare", file=sys.stderr)
            sections += bench_e2e_and_prepare(tmp, config, sizes)
        if "budget" in only:
            print("pipeline: one day's budget", file=sys.stderr)
            sections.append(bench_budget(tmp, config, sizes))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - started
    head = (
        f"## Pipeline benchmarks{' (--quick)' if args.quick else ''}: "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Machine: {machine_line()}. Stand-in: `cfclassify emulate` in its own process on 127.0.0.1. "
        f"Whole benchmark: {total:.0f} s.\n"
    )
    text = head + "\n" + "\n".join(s.markdown() for s in sections)
    print(text)
    if args.out:
        write_section(args.out, "pipeline", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
