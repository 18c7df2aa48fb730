"""``make bench``: run every benchmark and write ``bench/RESULTS.md`` afresh.

    .venv/bin/python bench/run.py [--quick] [--full] [--out bench/RESULTS.md]

Runs, each as its own process so one's threads and memory never colour another's figures:
``bench_scan.py`` (cold scan, unchanged rescan, peak memory), ``bench_pipeline.py`` (throughput,
12-MP end to end, prepare, one day's budget) and ``soak.py`` (the fault suite: ``--quick`` unless
``--full``). Each appends or replaces its own section of the results file. ``--quick`` passes
``--quick`` to all three (a few minutes in all). The exit status is non-zero when a script failed
to run or the soak found a broken invariant; a missed performance goal is reported as MISS in the
file, not as a failure.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, PYTHON, REPO, RESULTS, machine_line, table, write_section  # noqa: E402


def header(quick: bool, full: bool) -> str:
    mode = "--quick" if quick else ("--full" if full else "default (soak in its --quick form)")
    return (
        "# cfclassify benchmark results\n\n"
        f"Written by `bench/run.py` ({mode}) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.\n\n"
        f"- Machine: {machine_line()}\n\n"
        "The machine is shared and noisy: every figure is read as a ratio against a baseline measured "
        "in the same run, never against a number from another day. PASS / MISS is judged against the "
        "goal shown beside each figure.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="every benchmark in its short form")
    parser.add_argument("--full", action="store_true", help="also the full soak (20 kills)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file (default bench/RESULTS.md)")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.write_text(header(args.quick, args.full), encoding="utf-8")
    quick = ["--quick"] if args.quick else []
    jobs: list[tuple[str, list[str]]] = []
    scan = HERE / "bench_scan.py"
    if scan.exists():
        jobs.append(("scan", [str(scan), *quick, "--out", str(out)]))
    else:
        write_section(out, "scan", "## scan benchmark\n\nSkipped: `bench/bench_scan.py` is not there yet.\n")
    jobs.append(("pipeline", [str(HERE / "bench_pipeline.py"), *quick, "--out", str(out)]))
    soak_mode = [] if args.full and not args.quick else ["--quick"]
    jobs.append(("soak", [str(HERE / "soak.py"), *soak_mode, "--out", str(out)]))

    summary: list[list[str]] = []
    failed = 0
    for name, command in jobs:
        print(f"== {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        proc = subprocess.run([PYTHON, *command], cwd=REPO, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        failed += proc.returncode != 0
        summary.append(
            [name, " ".join(Path(command[0]).name.split() + command[1:-2]), f"{seconds:.0f} s", status]
        )
        print(f"== {name}: {status} in {seconds:.0f} s", file=sys.stderr, flush=True)
    write_section(
        out,
        "summary",
        "## Runs\n\n" + table(["benchmark", "command", "time", "status"], summary) + "\n",
    )
    print(f"wrote {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
