"""The fault ("soak") suite: kill -9, a fault mix, the budget under a kill and a lock, hostile files.

    .venv/bin/python bench/soak.py [--quick] [--out bench/RESULTS.md] [--json FILE] [--seed N]

1. ``kills``: a run (``python -m cfclassify run --quiet --concurrency 8``, a child process) is
   killed with SIGKILL at a random moment (seeded) and started again, 20 times (3 with
   ``--quick``); a last run goes to completion. Figures: results lost (images the stand-in billed
   whose answer is not in the database at the end: must be 0), images paid twice per kill (growth
   of the stand-in's ``paid_twice`` over the rerun that follows a kill: must be <= concurrency),
   duplicate rows (count vs count distinct keys in files, classifications, labels: must be 0).
2. ``faults``: 10 % HTTP 500, 10 % 429 with a short Retry-After, 3 % dropped connections, 1 %
   hangs (the client's read timeout is short): everything classified, nothing paid twice, time.
   A run that exits 75 (an image's outcome stayed unknown) is run again; reruns are counted.
3. ``budget``: concurrency 64, ``--budget 3`` (13 images): a second run started while the first
   holds the lock must exit 75 at once naming the holder's pid; the first is killed -9 mid-run;
   a rerun settles its reservations. The stand-in's billed neurons and the ledger's charges must
   never pass the budget.
4. ``hostile``: ``samples.make_hostile_tree`` through ``cfclassify run --json``: files tried,
   failures with their reasons, crashes (exit code not 0, or a traceback on stderr: must be 0).

The stand-in runs in this process (``start_emulator``) so its exact billing record can be read;
the runs under test are separate processes, as cron would start them. All data lives in one
temporary folder, removed at the end. Exit status: 0 when every invariant holds, else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PYTHON, child_env, credentials_env, machine_line, table, verdict, write_section  # noqa: E402

from cfclassify.config import load_settings  # noqa: E402
from cfclassify.emulator import EmulatorOptions, RunningEmulator, start_emulator  # noqa: E402
from cfclassify.runner import run  # noqa: E402
from cfclassify.samples import make_hostile_tree, make_photo  # noqa: E402

COST = 228_055


@dataclass(frozen=True)
class Plan:
    kills: int = 20
    kill_images: int = 2500
    kill_concurrency: int = 8
    kill_window: tuple[float, float] = (0.2, 2.5)  # seconds after the child starts
    fault_images: int = 500
    budget_images: int = 200


FULL = Plan()
QUICK = Plan(kills=3, kill_images=400, kill_window=(0.3, 1.8), fault_images=100, budget_images=100)


# -- helpers -----------------------------------------------------------------------------------


def photos(root: Path, count: int, seed: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / f"img_{i:05d}.jpg").write_bytes(make_photo(seed + i, (64, 48)))
    return root


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # the schema is not there yet (the run was killed before creating it)
    finally:
        conn.close()


def scalar(db: Path, sql: str, default: Any = 0) -> Any:
    rows = query(db, sql)
    return rows[0][0] if rows and rows[0][0] is not None else default


def billed_hashes(emu: RunningEmulator) -> set[str]:
    """The SHA-256 of every upload the stand-in billed (its own record, read in-process)."""
    state = emu._server.state  # the stand-in lives in this process for exactly this
    with state.lock:
        return set(state.billed)


def stand_in(options: EmulatorOptions) -> RunningEmulator:
    return start_emulator(options)


def duplicate_rows(db: Path) -> dict[str, int]:
    checks = {
        "files": "SELECT count(*) - count(DISTINCT path) FROM files",
        "images": "SELECT count(*) - count(DISTINCT sha256) FROM images",
        "classifications": "SELECT count(*) - count(DISTINCT sha256 || ' ' || model) FROM classifications",
        "labels": "SELECT count(*) - count(DISTINCT sha256 || ' ' || model || ' ' || upper(label)) "
        "FROM labels",
        "top labels": "SELECT count(*) - count(DISTINCT sha256 || ' ' || model) FROM labels WHERE rank = 1",
    }
    return {name: int(scalar(db, sql)) for name, sql in checks.items()}


def spawn(emu: RunningEmulator, cwd: Path, db: Path, root: Path, *flags: str) -> subprocess.Popen[bytes]:
    env = child_env(emu.api_base, CFCLASSIFY_RUN_BACKOFF_BASE="0.01", CFCLASSIFY_RUN_BACKOFF_MAX="0.5")
    return subprocess.Popen(
        [PYTHON, "-m", "cfclassify", "--db", str(db), "run", *flags, str(root)],
        cwd=cwd,  # no config.toml there: built-in defaults
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(predicate: Any, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


# -- 1. kill -9 --------------------------------------------------------------------------------


def soak_kills(tmp: Path, plan: Plan, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    root = photos(tmp / "kills", plan.kill_images, seed=seed * 10_000)
    db = tmp / "kills.db"
    conc = plan.kill_concurrency
    kills: list[dict[str, Any]] = []
    finished_early = 0
    started = time.perf_counter()
    with stand_in(EmulatorOptions(latency_ms=50, jitter_ms=50, seed=seed)) as emu:
        for i in range(plan.kills):
            delay = rng.uniform(*plan.kill_window)
            before = emu.stats()
            proc = spawn(emu, tmp, db, root, "--quiet", "--concurrency", str(conc))
            try:
                proc.wait(delay)
                finished_early += 1  # it ended before the kill: count it, go on
                proc.communicate()
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
                # Requests the dead run had in flight still reach the stand-in's bill (latency
                # <= 100 ms): wait for them, so "billed, not recorded" counts them.
                time.sleep(0.4)
            stats = emu.stats()
            recorded = int(
                scalar(db, "SELECT count(*) FROM classifications WHERE cache_status IS NOT 'LOCAL'")
            )
            if kills:  # what the run after the previous kill paid again
                kills[-1]["paid_twice_growth"] = stats["paid_twice"] - kills[-1]["paid_twice_at_kill"]
            kills.append(
                {
                    "kill": i + 1,
                    "after_s": round(delay, 3),
                    "exit": proc.returncode,
                    "sent_this_run": stats["requests"] - before["requests"],
                    "recorded": recorded,
                    "billed_not_recorded": stats["distinct_billed"] - recorded,
                    "paid_twice_at_kill": stats["paid_twice"],
                }
            )
        final = spawn(emu, tmp, db, root, "--quiet", "--concurrency", str(conc))
        out, err = final.communicate(timeout=600)
        stats = emu.stats()
        if kills:
            kills[-1]["paid_twice_growth"] = stats["paid_twice"] - kills[-1]["paid_twice_at_kill"]
        done = {r[0] for r in query(db, "SELECT upload_sha256 FROM images WHERE status = 'done'")}
        lost = billed_hashes(emu) - done
    seconds = time.perf_counter() - started
    dups = duplicate_rows(db)
    classified = int(scalar(db, "SELECT count(*) FROM classifications"))
    worst_growth = max((k["paid_twice_growth"] for k in kills), default=0)
    worst_unrecorded = max((k["billed_not_recorded"] for k in kills), default=0)
    reserved_left = int(scalar(db, "SELECT count(*) FROM ledger WHERE state = 'reserved'"))
    statuses = query(db, "SELECT status, count(*) FROM runs GROUP BY status ORDER BY status")
    return {
        "kills": plan.kills,
        "finished_before_kill": finished_early,
        "images": plan.kill_images,
        "concurrency": conc,
        "per_kill": kills,
        "final_exit": final.returncode,
        "final_stderr": err.decode(errors="replace")[-2000:],
        "classified": classified,
        "results_lost": len(lost),
        "paid_twice_total": stats["paid_twice"],
        "paid_twice_worst_kill": worst_growth,
        "billed_not_recorded_worst_kill": worst_unrecorded,
        "duplicate_rows": dups,
        "reservations_left": reserved_left,
        "runs": dict(statuses),
        "billed_images": stats["billed_images"],
        "distinct_billed": stats["distinct_billed"],
        "seconds": round(seconds, 1),
        "ok": {
            "results lost = 0": len(lost) == 0,
            "paid twice per kill <= concurrency": worst_growth <= conc and worst_unrecorded <= conc,
            "duplicate rows = 0": not any(dups.values()),
            "final run exit 0, every image classified": final.returncode == 0
            and classified == plan.kill_images,
            "no reservation left open": reserved_left == 0,
            "no run crashed (exits: -9 killed, 0, 75)": all(k["exit"] in (-9, 0, 75) for k in kills),
        },
    }


# -- 2. fault mix ------------------------------------------------------------------------------


def soak_faults(tmp: Path, plan: Plan, seed: int) -> dict[str, Any]:
    root = photos(tmp / "faults", plan.fault_images, seed=seed * 10_000 + 5_000)
    db = tmp / "faults.db"
    config = tmp / "empty.toml"
    options = EmulatorOptions(
        latency_ms=10,
        error_rate=0.10,
        rate_limit_rate=0.10,
        retry_after=0.1,
        drop_rate=0.03,
        hang_rate=0.01,
        hang_seconds=1.0,
        seed=seed,
    )
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    with stand_in(options) as emu:
        settings = load_settings(
            config,
            env=credentials_env(emu.api_base),
            overrides={
                "db": str(db),
                "run__concurrency": 8,
                "run__backoff_base": 0.05,
                "run__backoff_max": 2.0,
                "cloudflare__read_timeout": 0.5,
            },
        )
        for _ in range(5):  # the first run, then at most 4 reruns
            result = run(settings, [str(root)], handle_signals=False)
            assert result.run is not None
            runs.append(
                {
                    "exit": result.exit_code,
                    "classified": result.run.classified,
                    "unknown_outcomes": result.run.unknown_outcomes,
                    "stop": result.run.stop_reason,
                    "seconds": round(result.run.seconds, 2),
                }
            )
            if result.exit_code != 75:
                break
        stats = emu.stats()
    seconds = time.perf_counter() - started
    done = int(scalar(db, "SELECT count(*) FROM images WHERE status = 'done'"))
    charged = int(scalar(db, "SELECT sum(micro_neurons) FROM ledger WHERE state = 'charged'"))
    unknown = sum(r["unknown_outcomes"] for r in runs)
    return {
        "images": plan.fault_images,
        "runs": runs,
        "reruns": len(runs) - 1,
        "classified": done,
        "requests": stats["requests"],
        "status_counts": stats["status_counts"],
        "errors_by_code": stats["errors_by_code"],
        "dropped": stats["dropped"],
        "hung": stats["hung"],
        "paid_twice": stats["paid_twice"],
        "billed_images": stats["billed_images"],
        "unknown_outcomes": unknown,
        "ledger_charged_images": charged / COST,
        "seconds": round(seconds, 1),
        "ok": {
            "everything classified": done == plan.fault_images and runs[-1]["exit"] == 0,
            "nothing paid twice": stats["paid_twice"] == 0,
            "ledger = billed + unknown outcomes": charged == (stats["billed_images"] + unknown) * COST,
        },
    }


# -- 3. the budget under a kill and a second run -----------------------------------------------


def soak_budget(tmp: Path, plan: Plan, seed: int) -> dict[str, Any]:
    root = photos(tmp / "budget", plan.budget_images, seed=seed * 10_000 + 8_000)
    db = tmp / "budget.db"
    budget = 3.0
    limit = round(budget * 1_000_000)
    flags = ("--quiet", "--concurrency", "64", "--budget", f"{budget:g}")
    day = datetime.now(UTC).date().isoformat()
    found: dict[str, Any] = {}
    # Answers come 1.5-3 s after a request, so the first run is mid-flight for a while.
    with stand_in(EmulatorOptions(latency_ms=1500, jitter_ms=1500, seed=seed)) as emu:
        first = spawn(emu, tmp, db, root, *flags)
        held = wait_for(lambda: scalar(db, "SELECT count(*) FROM ledger") > 0, first, 30)
        found["first_reserved_in_flight"] = int(scalar(db, "SELECT count(*) FROM ledger"))
        t0 = time.perf_counter()
        second = spawn(emu, tmp, db, root, *flags)
        out2, err2 = second.communicate(timeout=60)
        found["second_exit"] = second.returncode
        found["second_seconds"] = round(time.perf_counter() - t0, 2)
        message = (out2 + err2).decode(errors="replace")
        found["second_names_pid"] = f"pid {first.pid}" in message
        found["second_message"] = message.strip().splitlines()[-1] if message.strip() else ""
        found["first_still_running"] = first.poll() is None
        wait_for(lambda: scalar(db, "SELECT count(*) FROM classifications") >= 1, first, 30)
        found["ledger_rows_at_kill"] = int(scalar(db, "SELECT count(*) FROM ledger"))
        first.send_signal(signal.SIGKILL)
        first.communicate()
        found["first_exit"] = first.returncode
        found["recorded_at_kill"] = int(scalar(db, "SELECT count(*) FROM classifications"))
        time.sleep(3.5)  # let the requests the dead run left in flight reach the stand-in's bill
        found["billed_after_kill"] = emu.stats()["billed_images"]
        requests_before = emu.stats()["requests"]
        third = spawn(emu, tmp, db, root, *flags)
        out3, err3 = third.communicate(timeout=120)
        found["rerun_exit"] = third.returncode
        found["rerun_requests"] = emu.stats()["requests"] - requests_before
        stats = emu.stats()
    charged, reserved = query(
        db,
        "SELECT coalesce(sum(CASE WHEN state = 'charged' THEN micro_neurons END), 0), "
        "coalesce(sum(CASE WHEN state = 'reserved' THEN micro_neurons END), 0) FROM ledger",
    )[0]
    same_day = datetime.now(UTC).date().isoformat() == day
    found.update(
        budget_neurons=budget,
        budget_images=limit // COST,
        billed_images=stats["billed_images"],
        billed_micro_neurons=stats["micro_neurons"],
        ledger_charged=int(charged),
        ledger_reserved=int(reserved),
        classified=int(scalar(db, "SELECT count(*) FROM classifications")),
        same_utc_day=same_day,
        ok={
            "stand-in billed <= budget": stats["micro_neurons"] <= limit or not same_day,
            "ledger charged + reserved <= budget": charged + reserved <= limit or not same_day,
            "second run exits 75 at once, naming the pid": (
                held
                and found["second_exit"] == 75
                and found["second_names_pid"]
                and found["second_seconds"] < 10
            ),
            "rerun after the kill stops on the budget (75)": found["rerun_exit"] == 75,
        },
    )
    return found


# -- 4. hostile files --------------------------------------------------------------------------


def soak_hostile(tmp: Path, seed: int) -> dict[str, Any]:
    root = tmp / "hostile"
    expected = make_hostile_tree(root)
    db = tmp / "hostile.db"
    started = time.perf_counter()
    with stand_in(EmulatorOptions(seed=seed)) as emu:
        proc = spawn(emu, tmp, db, root, "--json")
        out, err = proc.communicate(timeout=300)
        stats = emu.stats()
    seconds = time.perf_counter() - started
    stderr = err.decode(errors="replace")
    try:
        report = json.loads(out)
    except ValueError:
        report = {}
    scan = report.get("scan", {})
    failed = sorted(
        (os.path.basename(path), error or "")
        for path, error in query(
            db,
            "SELECT f.path, i.error FROM files f JOIN images i ON i.sha256 = f.sha256 "
            "WHERE i.status = 'failed'",
        )
    )
    done = int(scalar(db, "SELECT count(*) FROM images WHERE status = 'done'"))
    crashes = int(proc.returncode != 0) + int("Traceback" in stderr)
    non_utf8 = scan.get("non_utf8_names", 0)
    want_failed = sum(1 for v in expected.values() if v == "failed")
    want_done = sum(1 for v in expected.values() if v == "ok")
    return {
        "files_written": len(expected),
        "files_tried": scan.get("files", 0),
        "non_utf8_names": non_utf8,
        "classified": done,
        "failed": failed,
        "billed": stats["billed_images"],
        "exit": proc.returncode,
        "traceback": "Traceback" in stderr,
        "crashes": crashes,
        "seconds": round(seconds, 1),
        "stderr_tail": stderr[-1500:] if crashes else "",
        "ok": {
            "crashes = 0": crashes == 0,
            "every failure has a reason": all(reason for _, reason in failed) and len(failed) == want_failed,
            "every file tried": scan.get("files", 0) == len(expected),
            "every good file classified": done == want_done,
        },
    }


# -- report ------------------------------------------------------------------------------------


def markdown(results: dict[str, Any], quick: bool, seed: int, total: float) -> str:
    lines = [
        f"## Soak (fault suite){' (--quick)' if quick else ''}: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {machine_line()}. Seed {seed}. Whole suite: {total:.0f} s. The stand-in runs in the "
        "suite's process; every run under test is a `python -m cfclassify run` child process.",
        "",
    ]
    rows = []
    for name, res in results.items():
        for check, ok in res["ok"].items():
            rows.append([name, check, verdict(ok)])
    lines += [table(["scenario", "invariant", "verdict"], rows), ""]

    if "kills" in results:
        k = results["kills"]
        lines += [
            f"### kill -9: {k['kills']} kills at random moments, then one clean run",
            "",
            f"{k['images']} distinct 64 x 48 JPEGs, `--concurrency {k['concurrency']}`, stand-in latency "
            f"50-100 ms. Each kill lands a seeded uniform {(QUICK if quick else FULL).kill_window}"
            " s after the child starts (some during start-up or the scan, most mid-classify).",
            "",
            table(
                ["figure", "value", "goal"],
                [
                    ["results lost (billed, not in the DB at the end)", k["results_lost"], "0"],
                    ["images paid twice, worst kill", k["paid_twice_worst_kill"], f"<= {k['concurrency']}"],
                    ["images paid twice, all kills", k["paid_twice_total"], f"<= {k['concurrency']} x kills"],
                    [
                        "billed but not recorded at a kill, worst",
                        k["billed_not_recorded_worst_kill"],
                        f"<= {k['concurrency']}",
                    ],
                    ["duplicate rows", sum(k["duplicate_rows"].values()), "0"],
                    ["reservations left open", k["reservations_left"], "0"],
                    ["runs that finished before their kill", k["finished_before_kill"], "context"],
                    [
                        "final run exit / images classified",
                        f"{k['final_exit']} / {k['classified']}",
                        f"0 / {k['images']}",
                    ],
                    ["stand-in billed / distinct", f"{k['billed_images']} / {k['distinct_billed']}", ""],
                    ["runs by status", k["runs"], ""],
                    ["time", f"{k['seconds']} s", ""],
                ],
            ),
            "",
            table(
                [
                    "kill",
                    "after s",
                    "exit",
                    "requests this run",
                    "recorded",
                    "billed not recorded",
                    "paid twice by the rerun",
                ],
                [
                    [
                        x["kill"],
                        x["after_s"],
                        x["exit"],
                        x["sent_this_run"],
                        x["recorded"],
                        x["billed_not_recorded"],
                        x.get("paid_twice_growth", ""),
                    ]
                    for x in k["per_kill"]
                ],
            ),
            "",
        ]
    if "faults" in results:
        f = results["faults"]
        lines += [
            "### Fault mix",
            "",
            f"{f['images']} images, concurrency 8, stand-in latency 10 ms with 10 % HTTP 500, 10 % 429 "
            "(3040 / 3021 in turn) with `Retry-After: 0.1`, 3 % dropped connections, 1 % hangs of 1 s; "
            "client `cloudflare.read_timeout` 0.5 s, `run.backoff_base` 0.05 s, `run.max_retries` 6 "
            "(default).",
            "",
            table(
                ["figure", "value", "goal"],
                [
                    ["images classified", f"{f['classified']} / {f['images']}", "all"],
                    ["paid twice (stand-in)", f["paid_twice"], "0"],
                    ["reruns needed (exit 75: outcome unknown 3 times)", f["reruns"], "context"],
                    ["requests / billed", f"{f['requests']} / {f['billed_images']}", ""],
                    ["answers by status", f["status_counts"], ""],
                    ["errors by code", f["errors_by_code"], ""],
                    [
                        "dropped / hung (unknown outcomes kept as charges)",
                        f"{f['dropped']} / {f['hung']} ({f['unknown_outcomes']} unknown)",
                        "",
                    ],
                    [
                        "ledger charged (images' worth)",
                        f"{f['ledger_charged_images']:.0f}",
                        "billed + unknown",
                    ],
                    [
                        "runs",
                        "; ".join(f"exit {r['exit']} {r['stop']} {r['seconds']} s" for r in f["runs"]),
                        "",
                    ],
                    ["time", f"{f['seconds']} s", ""],
                ],
            ),
            "",
        ]
    if "budget" in results:
        b = results["budget"]
        lines += [
            "### Budget at concurrency 64 across a lock and a kill -9",
            "",
            f"`--budget {b['budget_neurons']:g}` ({b['budget_images']} images), "
            "stand-in latency 1.5-3 s so the first run is mid-flight when the second starts and when it "
            "is killed.",
            "",
            table(
                ["figure", "value", "goal"],
                [
                    [
                        "first run: reservations when the second started",
                        b["first_reserved_in_flight"],
                        f"<= {b['budget_images']}",
                    ],
                    [
                        "second run: exit, seconds, names the pid",
                        f"{b['second_exit']}, {b['second_seconds']} s, {b['second_names_pid']}",
                        "75, at once, yes",
                    ],
                    ["second run's message", b["second_message"], ""],
                    [
                        "first run killed -9: ledger rows / answers recorded",
                        f"{b['ledger_rows_at_kill']} / {b['recorded_at_kill']}",
                        f"<= {b['budget_images']} reserved",
                    ],
                    ["rerun: exit, requests sent", f"{b['rerun_exit']}, {b['rerun_requests']}", "75"],
                    [
                        "stand-in billed",
                        f"{b['billed_images']} images, {b['billed_micro_neurons']:,} micro-neurons",
                        f"<= {round(b['budget_neurons'] * 1e6):,}",
                    ],
                    [
                        "ledger charged + reserved",
                        f"{b['ledger_charged']:,} + {b['ledger_reserved']:,}",
                        f"<= {round(b['budget_neurons'] * 1e6):,}",
                    ],
                    ["classified (stored answers)", b["classified"], ""],
                ],
            ),
            "",
        ]
    if "hostile" in results:
        h = results["hostile"]
        lines += [
            "### Hostile corpus (`samples.make_hostile_tree`)",
            "",
            table(
                ["figure", "value", "goal"],
                [
                    ["files written", h["files_written"], ""],
                    ["files tried (image files found by the walk)", h["files_tried"], ""],
                    ["of which names that are not UTF-8 (classified like the rest)", h["non_utf8_names"], ""],
                    ["classified", h["classified"], ""],
                    ["failed, with reason", len(h["failed"]), ""],
                    ["crashes (exit != 0 or a traceback)", h["crashes"], "0"],
                    ["exit code", h["exit"], "0"],
                    ["time", f"{h['seconds']} s", ""],
                ],
            ),
            "",
            table(["failed file", "reason"], [[name, reason] for name, reason in h["failed"]]),
            "",
        ]
        if h["stderr_tail"]:
            lines += ["```", h["stderr_tail"], "```", ""]
    return "\n".join(lines)


SCENARIOS = ("kills", "faults", "budget", "hostile")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 kills, small corpora (< 60 s): for CI")
    parser.add_argument("--out", type=Path, help="put the Markdown section into this file (replacing it)")
    parser.add_argument("--json", type=Path, help="write every figure as JSON to this file")
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="run only these (repeatable)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    only = args.only or list(SCENARIOS)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="cfclassify-soak-"))
    (tmp / "empty.toml").write_text("")
    results: dict[str, Any] = {}
    try:
        for name in SCENARIOS:
            if name not in only:
                continue
            t = time.perf_counter()
            print(f"soak: {name}", file=sys.stderr)
            if name == "kills":
                results[name] = soak_kills(tmp, plan, args.seed)
            elif name == "faults":
                results[name] = soak_faults(tmp, plan, args.seed)
            elif name == "budget":
                results[name] = soak_budget(tmp, plan, args.seed)
            else:
                results[name] = soak_hostile(tmp, args.seed)
            print(
                f"soak: {name} done in {time.perf_counter() - t:.1f} s: {results[name]['ok']}",
                file=sys.stderr,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - started
    text = markdown(results, args.quick, args.seed, total)
    print(text)
    if args.out:
        write_section(args.out, "soak", text)
    if args.json:
        args.json.write_text(json.dumps({"seconds": total, **results}, indent=2, default=str))
    return 0 if all(all(r["ok"].values()) for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
