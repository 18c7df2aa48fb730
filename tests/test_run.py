"""`cfclassify run` end to end against the stand-in on loopback: the four promises.

Never pay twice, never overspend, lose nothing, and stop cleanly (exit codes) — each checked
against what the stand-in says it billed, not only against what the database says.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cfclassify.cli import cli
from cfclassify.config import Settings, load_settings
from cfclassify.emulator import EmulatorOptions, RunningEmulator, start_emulator
from cfclassify.errors import RunLocked
from cfclassify.runlock import run_lock
from cfclassify.runner import run
from cfclassify.samples import make_hostile_tree, make_photo

TOKEN = "tok-SECRET-0123456789abcdef"
COST = 228_055


@pytest.fixture
def emulators() -> Iterator[Callable[..., RunningEmulator]]:
    started: list[RunningEmulator] = []

    def start(clock: Callable[[], datetime] | None = None, **options: Any) -> RunningEmulator:
        emu = start_emulator(EmulatorOptions(**options), clock=clock)
        started.append(emu)
        return emu

    yield start
    for emu in started:
        emu.stop()


def env_for(emu: RunningEmulator) -> dict[str, str]:
    return {
        "CLOUDFLARE_BASE_URL": emu.api_base,
        "CLOUDFLARE_ACCOUNT_ID": "acct",
        "CLOUDFLARE_API_TOKEN": TOKEN,
    }


def settings_for(emu: RunningEmulator, db: Path, **overrides: Any) -> Settings:
    defaults = {"db": str(db), "run__backoff_base": 0.001, "run__backoff_max": 0.05}
    return load_settings(None, env=env_for(emu), overrides={**defaults, **overrides})


def photos(root: Path, count: int, *, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / f"img_{i:03d}.jpg").write_bytes(make_photo(seed + i, (64, 48)))
    return root


def db_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_budget_10_bills_exactly_43_then_nothing_then_the_rest_once(
    tmp_path: Path, clean_env: Path, emulators: Callable[..., RunningEmulator]
) -> None:
    emu = emulators()
    root = photos(tmp_path / "photos", 100)
    db = tmp_path / "c.db"

    first = run(settings_for(emu, db), [str(root)], budget=10, handle_signals=False)
    assert first.exit_code == 75
    assert first.run is not None and first.run.stop_reason == "budget"
    assert emu.stats()["billed_images"] == 43
    assert first.run.left == 57

    again = run(settings_for(emu, db), [str(root)], budget=10, handle_signals=False)
    assert again.exit_code == 75
    assert emu.stats()["requests"] == 43  # nothing sent

    rest = run(settings_for(emu, db), [str(root)], handle_signals=False)
    assert rest.exit_code == 0
    stats = emu.stats()
    assert stats["billed_images"] == 100 and stats["distinct_billed"] == 100 and stats["paid_twice"] == 0
    assert db_rows(db, "SELECT count(*) FROM classifications") == [(100,)]
    assert db_rows(db, "SELECT sum(micro_neurons) FROM ledger WHERE state = 'charged'") == [(100 * COST,)]


def test_quota_error_stops_the_run_for_the_utc_day_without_retrying(
    tmp_path: Path, clean_env: Path, emulators: Callable[..., RunningEmulator]
) -> None:
    now = {"t": datetime(2026, 11, 23, 10, 0, tzinfo=UTC)}
    clock = lambda: now["t"]  # noqa: E731 - shared by the stand-in and the ledger
    emu = emulators(clock=clock, daily_neurons=2)  # 8 images fit, the 9th gets 3036
    root = photos(tmp_path / "photos", 20)
    db = tmp_path / "c.db"
    settings = settings_for(emu, db, run__concurrency=1)

    result = run(settings, [str(root)], clock=clock, handle_signals=False)
    assert result.exit_code == 75 and result.run is not None
    assert result.run.stop_reason == "quota"
    stats = emu.stats()
    assert stats["billed_images"] == 8
    assert stats["errors_by_code"] == {"3036": 1}  # asked once, never retried
    assert stats["requests"] == 9
    assert db_rows(db, "SELECT count(*) FROM ledger_days WHERE day = '2026-11-23'") == [(1,)]

    # Same UTC day: not one request, even with budget left in the ledger.
    assert run(settings, [str(root)], clock=clock, handle_signals=False).exit_code == 75
    assert emu.stats()["requests"] == 9

    # After 00:00 UTC both the account and the ledger start afresh.
    now["t"] = datetime(2026, 11, 24, 0, 0, 5, tzinfo=UTC)
    result = run(settings, [str(root)], clock=clock, handle_signals=False)
    assert emu.stats()["billed_images"] == 16
    assert result.exit_code == 75


def test_fault_mix_ends_with_everything_classified_and_nothing_paid_twice(
    tmp_path: Path, clean_env: Path, emulators: Callable[..., RunningEmulator]
) -> None:
    emu = emulators(error_rate=0.1, rate_limit_rate=0.1, drop_rate=0.05, retry_after=0, seed=7)
    root = photos(tmp_path / "photos", 80)
    db = tmp_path / "c.db"
    result = run(settings_for(emu, db, run__max_retries=10), [str(root)], handle_signals=False)
    assert result.exit_code == 0, result.as_dict()
    stats = emu.stats()
    assert stats["distinct_billed"] == 80 and stats["paid_twice"] == 0
    assert stats["errors_by_code"].get("3040", 0) + stats["errors_by_code"].get("3021", 0) > 0
    assert stats["status_counts"].get("500", 0) > 0
    assert db_rows(db, "SELECT count(*) FROM images WHERE status = 'done'") == [(80,)]
    # Dropped connections were counted as spent (we could not know), so the ledger is >= billed.
    charged = db_rows(db, "SELECT sum(micro_neurons) FROM ledger WHERE state = 'charged'")[0][0]
    assert charged == (80 + result.run.unknown_outcomes) * COST  # type: ignore[union-attr]
    assert result.run.unknown_outcomes == stats["dropped"]  # type: ignore[union-attr]


def test_midnight_utc_crossed_mid_run_switches_to_the_new_days_budget(
    tmp_path: Path, clean_env: Path, emulators: Callable[..., RunningEmulator]
) -> None:
    emu = emulators()
    root = photos(tmp_path / "photos", 12)
    db = tmp_path / "c.db"
    calls = {"n": 0}

    def clock() -> datetime:
        # The ledger reads the clock once per reservation: the fifth one lands after midnight.
        calls["n"] += 1
        if calls["n"] <= 4:
            return datetime(2026, 11, 23, 23, 59, 59, tzinfo=UTC)
        return datetime(2026, 11, 24, 0, 0, 1, tzinfo=UTC)

    # 1 neuron a day pays for 4 images.
    result = run(
        settings_for(emu, db, run__concurrency=1), [str(root)], budget=1, clock=clock, handle_signals=False
    )
    assert result.exit_code == 75
    rows = db_rows(db, "SELECT day, count(*) FROM ledger WHERE state = 'charged' GROUP BY day ORDER BY day")
    assert rows == [("2026-11-23", 4), ("2026-11-24", 4)]
    assert emu.stats()["billed_images"] == 8


def test_hostile_files_fail_with_reasons_and_the_rest_completes(
    tmp_path: Path, clean_env: Path, emulators: Callable[..., RunningEmulator]
) -> None:
    emu = emulators()
    root = tmp_path / "hostile"
    expected = make_hostile_tree(root)
    db = tmp_path / "c.db"
    result = run(settings_for(emu, db), [str(root)], handle_signals=False)
    assert result.exit_code == 0
    rows = db_rows(db, "SELECT f.path, i.status, i.error FROM files f JOIN images i ON i.sha256 = f.sha256")
    # Paths come back as stored: TEXT, or the raw bytes of a name that is not UTF-8.
    outcome = {os.path.basename(os.fsdecode(path)): (status, error) for path, status, error in rows}
    assert {n: s for n, (s, _) in outcome.items()} == {
        n: ("done" if want == "ok" else "failed") for n, want in expected.items()
    }
    assert all(error for status, error in outcome.values() if status == "failed")
    assert result.scan.walk.non_utf8_names == sum(not _is_utf8(n) for n in expected)
    assert emu.stats()["billed_images"] == sum(want == "ok" for want in expected.values())


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def test_pixel_identical_files_are_sent_once(
    tmp_path: Path, clean_env: Path, emulators: Callable[..., RunningEmulator]
) -> None:
    from PIL import Image, PngImagePlugin

    emu = emulators()
    root = tmp_path / "photos"
    root.mkdir()
    im = Image.effect_noise((300, 200), 40).convert("RGB")
    im.save(root / "plain.png")
    meta = PngImagePlugin.PngInfo()
    meta.add_text("Comment", "same pixels, other bytes")
    im.save(root / "tagged.png", pnginfo=meta)
    assert (root / "plain.png").read_bytes() != (root / "tagged.png").read_bytes()
    db = tmp_path / "c.db"
    result = run(settings_for(emu, db), [str(root)], handle_signals=False)
    assert result.exit_code == 0 and result.run is not None
    assert emu.stats()["requests"] == 1
    assert result.run.reused == 1
    assert db_rows(db, "SELECT cache_status, micro_neurons FROM classifications ORDER BY cache_status") == [
        (None, COST),
        ("LOCAL", 0),
    ]


def test_gateway_route_hits_on_identical_uploads_from_another_database(
    tmp_path: Path, clean_env: Path, emulators: Callable[..., RunningEmulator]
) -> None:
    emu = emulators()
    root = photos(tmp_path / "photos", 5)
    gw = {
        "cloudflare__gateway_id": "gw",
        "cloudflare__gateway_base": emu.gateway_base,
        "cloudflare__gateway_cache_ttl": 3600,
    }
    first = run(settings_for(emu, tmp_path / "a.db", **gw), [str(root)], handle_signals=False)
    second = run(settings_for(emu, tmp_path / "b.db", **gw), [str(root)], handle_signals=False)
    assert first.run is not None and second.run is not None
    assert (first.run.cache_hits, second.run.cache_hits) == (0, 5)
    assert emu.stats()["billed_images"] == 5
    assert db_rows(tmp_path / "b.db", "SELECT sum(micro_neurons) FROM ledger WHERE state = 'charged'") == [
        (0,)
    ]
    assert db_rows(tmp_path / "b.db", "SELECT count(*) FROM classifications WHERE cache_status = 'HIT'") == [
        (5,)
    ]


def test_token_appears_nowhere_in_the_database_or_the_output(
    tmp_path: Path, clean_env: Path, emulators: Callable[..., RunningEmulator]
) -> None:
    emu = emulators(error_rate=0.2, seed=3)
    root = photos(tmp_path / "photos", 10)
    (root / "broken.jpg").write_bytes(b"not an image")
    db = tmp_path / "c.db"
    runner = CliRunner()
    env = {**env_for(emu), "CFCLASSIFY_RUN_BACKOFF_BASE": "0.001"}
    out = runner.invoke(cli, ["-vv", "--db", str(db), "run", "--json", str(root)], env=env)
    assert out.exit_code == 0, out.output
    wrong = runner.invoke(
        cli, ["-vv", "--db", str(db), "run", str(root)], env={**env, "CLOUDFLARE_API_TOKEN": TOKEN + "x"}
    )
    status = runner.invoke(cli, ["--db", str(db), "scan", "--json", str(root)], env=env)
    texts = [out.output, wrong.output, status.output]
    assert all(TOKEN not in t for t in texts)
    for path in tmp_path.glob("c.db*"):
        assert TOKEN.encode() not in path.read_bytes(), path


def test_wrong_token_exits_1_and_says_what_to_fix(
    tmp_path: Path, clean_env: Path, emulators: Callable[..., RunningEmulator]
) -> None:
    emu = emulators(token=TOKEN)
    root = photos(tmp_path / "photos", 3)
    env = {**env_for(emu), "CLOUDFLARE_API_TOKEN": "wrong"}
    out = CliRunner().invoke(cli, ["--db", str(tmp_path / "c.db"), "run", str(root)], env=env)
    assert out.exit_code == 1
    assert "CLOUDFLARE_API_TOKEN" in out.output
    assert db_rows(tmp_path / "c.db", "SELECT count(*) FROM ledger WHERE state != 'released'") == [(0,)]


def test_missing_credentials_exit_1_naming_the_variable(tmp_path: Path, clean_env: Path) -> None:
    root = photos(tmp_path / "photos", 1)
    out = CliRunner().invoke(cli, ["--db", str(tmp_path / "c.db"), "run", str(root)], env={})
    assert out.exit_code == 1
    assert "CLOUDFLARE_ACCOUNT_ID" in out.output


def test_a_second_run_exits_75_naming_the_holder(
    tmp_path: Path, clean_env: Path, emulators: Callable[..., RunningEmulator]
) -> None:
    emu = emulators()
    root = photos(tmp_path / "photos", 2)
    db = tmp_path / "c.db"
    with run_lock(str(db)):
        with pytest.raises(RunLocked) as info:
            run(settings_for(emu, db), [str(root)], handle_signals=False)
        out = CliRunner().invoke(cli, ["--db", str(db), "run", str(root)], env=env_for(emu))
    assert info.value.exit_code == 75 and info.value.pid == os.getpid()
    assert out.exit_code == 75 and f"pid {os.getpid()}" in out.output
    assert emu.stats()["requests"] == 0


def test_dry_run_calls_nothing_and_estimates(
    tmp_path: Path, clean_env: Path, emulators: Callable[..., RunningEmulator]
) -> None:
    emu = emulators()
    root = photos(tmp_path / "photos", 50)
    (root / "copy.jpg").write_bytes((root / "img_000.jpg").read_bytes())
    out = CliRunner().invoke(
        cli,
        ["--db", str(tmp_path / "c.db"), "run", "--dry-run", "--json", "--budget", "5", str(root)],
        env={},
    )
    assert out.exit_code == 0, out.output
    import json

    data = json.loads(out.output)
    assert data["dry_run"]["new_images"] == 50
    assert data["scan"]["duplicate_paths"] == 1
    assert data["dry_run"]["neurons"] == pytest.approx(50 * 0.228055)
    assert data["dry_run"]["images_today"] == 21
    assert data["dry_run"]["days_needed"] == 3
    assert emu.stats()["requests"] == 0


def _spawn_run(emu: RunningEmulator, db: Path, root: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **env_for(emu), "CFCLASSIFY_RUN_BACKOFF_BASE": "0.001"}
    return subprocess.Popen(
        [sys.executable, "-m", "cfclassify", "--db", str(db), "run", "--quiet", *extra, str(root)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for_classifications(
    db: Path, at_least: int, proc: subprocess.Popen[bytes], timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if db.exists():
            try:
                if db_rows(db, "SELECT count(*) FROM classifications")[0][0] >= at_least:
                    return
            except sqlite3.OperationalError:
                pass  # schema not created yet
        time.sleep(0.02)
    raise AssertionError("the run made no progress")


@pytest.mark.slow
def test_kill_9_mid_run_loses_nothing_and_pays_twice_at_most_concurrency(
    tmp_path: Path, clean_env: Path, emulators: Callable[..., RunningEmulator]
) -> None:
    emu = emulators(latency_ms=40, jitter_ms=40)
    root = photos(tmp_path / "photos", 60)
    db = tmp_path / "c.db"
    concurrency = 4
    proc = _spawn_run(emu, db, root, "--concurrency", str(concurrency))
    _wait_for_classifications(db, 15, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    recorded = db_rows(db, "SELECT count(*) FROM classifications")[0][0]
    assert 15 <= recorded < 60
    # Every answer the database holds was billed; at most `concurrency` were billed but not recorded.
    assert 0 <= emu.stats()["billed_images"] - recorded <= concurrency

    again = _spawn_run(emu, db, root, "--concurrency", str(concurrency))
    assert again.wait(60) == 0, again.communicate()
    stats = emu.stats()
    assert db_rows(db, "SELECT count(*) FROM classifications") == [(60,)]
    assert db_rows(db, "SELECT count(*), count(DISTINCT sha256) FROM labels WHERE rank = 1") == [(60, 60)]
    assert stats["distinct_billed"] == 60
    assert stats["paid_twice"] <= concurrency
    # The killed run's open reservations were counted as spent by the next one.
    assert db_rows(db, "SELECT count(*) FROM ledger WHERE state = 'reserved'") == [(0,)]
    assert db_rows(db, "SELECT status FROM runs ORDER BY id") == [("killed",), ("done",)]


@pytest.mark.slow
def test_sigint_records_in_flight_requests_and_exits_130(
    tmp_path: Path, clean_env: Path, emulators: Callable[..., RunningEmulator]
) -> None:
    emu = emulators(latency_ms=150)
    root = photos(tmp_path / "photos", 60)
    db = tmp_path / "c.db"
    proc = _spawn_run(emu, db, root, "--concurrency", "4")
    _wait_for_classifications(db, 8, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130
    recorded = db_rows(db, "SELECT count(*) FROM classifications")[0][0]
    assert recorded < 60
    # Everything the stand-in billed was recorded: the in-flight requests were drained.
    assert emu.stats()["billed_images"] == recorded
    assert db_rows(db, "SELECT count(*) FROM ledger WHERE state = 'reserved'") == [(0,)]
    assert db_rows(db, "SELECT status, exit_code FROM runs") == [("interrupted", 130)]


def test_too_large_upload_is_re_encoded_smaller_once(
    tmp_path: Path, clean_env: Path, emulators: Callable[..., RunningEmulator]
) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(3):
        (root / f"big_{i}.jpg").write_bytes(make_photo(50 + i, (800, 600)))
    probe = emulators()
    sizes = []
    from cfclassify.images import prepare_upload, shrink_upload

    for path in sorted(root.iterdir()):
        first = prepare_upload(path)
        sizes.append((len(first.data), len(shrink_upload(path, first).data)))
    probe.stop()
    limit = max(small for _, small in sizes) + 1
    assert all(big > limit for big, _ in sizes)  # every first upload is refused, every shrunk one fits
    emu = emulators(max_bytes=limit)
    db = tmp_path / "c.db"
    result = run(settings_for(emu, db), [str(root)], handle_signals=False)
    assert result.exit_code == 0
    stats = emu.stats()
    assert stats["errors_by_code"] == {"3006": 3}
    assert stats["billed_images"] == 3
    # The refused attempts were released, not charged.
    assert db_rows(db, "SELECT state, count(*) FROM ledger GROUP BY state ORDER BY state") == [
        ("charged", 3),
        ("released", 3),
    ]


def test_max_images_caps_the_run_and_exits_75(
    tmp_path: Path, clean_env: Path, emulators: Callable[..., RunningEmulator]
) -> None:
    emu = emulators()
    root = photos(tmp_path / "photos", 10)
    result = run(settings_for(emu, tmp_path / "c.db"), [str(root)], max_images=4, handle_signals=False)
    assert result.exit_code == 75 and result.run is not None
    assert result.run.stop_reason == "max_images"
    assert emu.stats()["billed_images"] == 4 and result.run.left == 6


def test_run_is_limited_to_the_paths_given(
    tmp_path: Path, clean_env: Path, emulators: Callable[..., RunningEmulator]
) -> None:
    emu = emulators()
    a = photos(tmp_path / "a", 3)
    b = photos(tmp_path / "b", 4, seed=100)
    db = tmp_path / "c.db"
    CliRunner().invoke(cli, ["--db", str(db), "scan", str(a), str(b)])
    result = run(settings_for(emu, db), [str(a)], handle_signals=False)
    assert result.exit_code == 0 and result.run is not None
    assert result.run.classified == 3 and emu.stats()["billed_images"] == 3


def test_a_name_that_is_not_utf8_is_classified_searched_exported_and_tagged(
    tmp_path: Path, clean_env: Path, emulators: Callable[..., RunningEmulator]
) -> None:
    import json

    emu = emulators()
    root = tmp_path / "photos"
    root.mkdir()
    raw = os.fsencode(str(root)) + b"/caf\xe9.jpg"
    with open(raw, "wb") as fh:
        fh.write(make_photo(7, (64, 48)))
    db = tmp_path / "c.db"
    assert run(settings_for(emu, db), [str(root)], handle_signals=False).exit_code == 0
    (top,) = db_rows(db, "SELECT top_label FROM classifications")
    runner = CliRunner()
    found = runner.invoke(cli, ["--db", str(db), "search", "-0", top[0]])
    assert found.exit_code == 0 and found.stdout_bytes == raw + b"\0"
    exported = runner.invoke(cli, ["--db", str(db), "export", "--format", "jsonl"])
    assert exported.exit_code == 0
    assert json.loads(exported.output)["path"].endswith("caf\\xe9.jpg")
    tagged = runner.invoke(cli, ["--db", str(db), "export", "--format", "xmp", "--min-score", "0"])
    assert tagged.exit_code == 0, tagged.output
    assert os.path.exists(raw + b".xmp")
