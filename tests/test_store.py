"""store.py + migrations.py: opening, migrations, WAL, error conversion, ledger, classifications."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfclassify.errors import EXIT_FATAL, EXIT_TEMPFAIL, DatabaseBusy, StoreError
from cfclassify.migrations import migrations
from cfclassify.store import FileRecord, LabelScore, Store

DAY = "2026-01-02"
COST = 228_055


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "test.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store(db_path) as s:
        yield s


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def add_image(store: Store, sha: str, path: str = "/p/a.jpg") -> None:
    record = FileRecord(path=path, dir="/p", root="/p", sha256=sha, size=3, mtime_ns=1, inode=1, device=1)
    store.record_scan_batch([record])


# -- opening and migrations --------------------------------------------------------------------


def test_new_database_has_the_schema_and_wal(store: Store, db_path: Path) -> None:
    tables = {r[0] for r in rows(db_path, "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    assert {
        "files", "images", "classifications", "labels", "ledger", "ledger_days", "runs",
        "file_labels", "file_label_rows", "_sqlite_migrations",
    } <= tables  # fmt: skip
    assert rows(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert store.conn.execute("PRAGMA foreign_keys").fetchone() == (1,)


def test_migrations_are_applied_once(db_path: Path) -> None:
    Store(db_path).close()
    first = rows(db_path, "SELECT migration_set, name, applied_at FROM _sqlite_migrations")
    assert [(r[0], r[1]) for r in first] == [("cfclassify", m.name) for m in migrations._migrations]
    Store(db_path).close()
    Store(db_path).close()
    assert rows(db_path, "SELECT migration_set, name, applied_at FROM _sqlite_migrations") == first


def test_data_survives_reopening(db_path: Path) -> None:
    with Store(db_path) as s:
        add_image(s, "aa")
    with Store(db_path) as s:
        assert s.counts()["images"] == 1
        assert rows(db_path, "SELECT sha256 FROM images") == [("aa",)]


def test_newer_schema_is_refused(db_path: Path) -> None:
    Store(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
        "VALUES ('cfclassify', '9999_from_the_future', '2099-01-01')"
    )
    conn.commit()
    conn.close()
    with pytest.raises(StoreError) as info:
        Store(db_path)
    assert "newer cfclassify" in str(info.value)
    assert "9999_from_the_future" in str(info.value)
    assert info.value.exit_code == EXIT_FATAL


@pytest.mark.parametrize(
    "content",
    [b"this is a text file, not a database\n" * 100, b"PNG\x89" + bytes(range(256)) * 20],
)
def test_non_sqlite_file_is_a_store_error(db_path: Path, content: bytes) -> None:
    db_path.write_bytes(content)
    with pytest.raises(StoreError) as info:
        Store(db_path)
    assert not isinstance(info.value, DatabaseBusy)
    assert info.value.exit_code == EXIT_FATAL
    assert str(db_path) in str(info.value)
    assert "not a usable cfclassify database" in str(info.value)
    assert db_path.read_bytes() == content  # left alone


def test_missing_folder_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist") as info:
        Store(tmp_path / "no" / "such" / "x.db")
    assert info.value.exit_code == EXIT_FATAL


def test_a_directory_as_database_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        Store(tmp_path)
    assert info.value.exit_code == EXIT_FATAL


def test_busy_database_is_database_busy_exit_75(db_path: Path) -> None:
    Store(db_path).close()
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with Store(db_path, busy_timeout=0.05) as s:
            with pytest.raises(DatabaseBusy) as info:
                add_image(s, "aa")
        assert info.value.exit_code == EXIT_TEMPFAIL
        assert "busy" in str(info.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with Store(db_path) as s:  # usable again once the holder let go
        add_image(s, "aa")
        assert s.counts()["images"] == 1


def test_busy_database_while_migrating_is_exit_75(db_path: Path) -> None:
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(DatabaseBusy) as info:
            Store(db_path, busy_timeout=0.05)
        assert info.value.exit_code == EXIT_TEMPFAIL
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# -- the ledger --------------------------------------------------------------------------------


def test_reserve_refuses_past_the_limit(store: Store) -> None:
    limit = 3 * COST + COST // 2
    ids = [store.reserve(day=DAY, cost=COST, limit=limit, run_id=None, sha256=f"s{i}") for i in range(5)]
    assert all(isinstance(i, int) for i in ids[:3])
    assert ids[3:] == [None, None]
    assert store.day_usage(DAY) == (0, 3 * COST)


def test_reserve_exactly_at_the_limit_is_allowed(store: Store) -> None:
    assert store.reserve(day=DAY, cost=COST, limit=2 * COST, run_id=None, sha256="a") is not None
    assert store.reserve(day=DAY, cost=COST, limit=2 * COST, run_id=None, sha256="b") is not None
    assert store.reserve(day=DAY, cost=1, limit=2 * COST, run_id=None, sha256="c") is None


def test_released_reservation_frees_room_and_charges_count(store: Store) -> None:
    limit = 2 * COST
    first = store.reserve(day=DAY, cost=COST, limit=limit, run_id=None, sha256="a")
    second = store.reserve(day=DAY, cost=COST, limit=limit, run_id=None, sha256="b")
    assert first and second
    store.settle(first, state="released", outcome="error")
    store.settle(second, state="charged", outcome="ok")
    assert store.day_usage(DAY) == (COST, 0)
    assert store.reserve(day=DAY, cost=COST, limit=limit, run_id=None, sha256="c") is not None
    assert store.reserve(day=DAY, cost=COST, limit=limit, run_id=None, sha256="d") is None


def test_days_are_separate(store: Store) -> None:
    assert store.reserve(day=DAY, cost=COST, limit=COST, run_id=None, sha256="a")
    assert store.reserve(day=DAY, cost=COST, limit=COST, run_id=None, sha256="b") is None
    assert store.reserve(day="2026-01-03", cost=COST, limit=COST, run_id=None, sha256="b")


def test_exhausted_day_refuses_everything(store: Store) -> None:
    store.mark_day_exhausted(DAY, "3036")
    assert store.day_exhausted(DAY) == "3036"
    assert store.day_exhausted("2026-01-03") is None
    assert store.reserve(day=DAY, cost=1, limit=10**12, run_id=None, sha256="a") is None


def test_orphaned_reservations_become_charges(store: Store) -> None:
    assert store.reserve(day=DAY, cost=COST, limit=10 * COST, run_id=None, sha256="a")
    assert store.settle_orphaned_reservations() == 1
    assert store.day_usage(DAY) == (COST, 0)


def test_reservations_across_two_connections_never_pass_the_limit(db_path: Path) -> None:
    with Store(db_path) as a, Store(db_path) as b:
        got = []
        for i in range(6):
            s = a if i % 2 else b
            got.append(s.reserve(day=DAY, cost=COST, limit=4 * COST, run_id=None, sha256=str(i)))
        assert sum(x is not None for x in got) == 4


# -- images and classifications ----------------------------------------------------------------


def test_record_classification_settles_and_stores_labels(store: Store) -> None:
    add_image(store, "aa")
    run_id = store.start_run("run", ["/p"], 1, None)
    reservation = store.reserve(day=DAY, cost=COST, limit=10 * COST, run_id=run_id, sha256="aa")
    store.record_classification(
        sha256="aa",
        model="m",
        labels=[LabelScore("TABBY", 0.2), LabelScore("TIGER CAT", 0.7)],
        micro_neurons=COST,
        cache_status="MISS",
        run_id=run_id,
        reservation_id=reservation,
    )
    assert store.day_usage(DAY) == (COST, 0)
    assert store.conn.execute(
        "SELECT sum(micro_neurons) FROM ledger WHERE run_id = ? AND state = 'charged'", (run_id,)
    ).fetchone() == (COST,)
    cls = store.conn.execute(
        "SELECT top_label, top_score, micro_neurons, cache_status, labels FROM classifications"
    ).fetchone()
    assert cls[:4] == ("TIGER CAT", 0.7, COST, "MISS")
    assert '"TIGER CAT"' in cls[4]
    ranked = store.conn.execute("SELECT label, rank FROM labels ORDER BY rank").fetchall()
    assert ranked == [("TIGER CAT", 1), ("TABBY", 2)]
    assert store.counts()["done"] == 1
    assert store.pending_images("m") == []


def test_gateway_hit_outcome(store: Store) -> None:
    add_image(store, "aa")
    reservation = store.reserve(day=DAY, cost=COST, limit=10 * COST, run_id=None, sha256="aa")
    store.record_classification(
        sha256="aa", model="m", labels=[LabelScore("X", 1.0)], micro_neurons=0,
        cache_status="HIT", run_id=None, reservation_id=reservation,
    )  # fmt: skip
    assert store.conn.execute("SELECT state, outcome, micro_neurons FROM ledger").fetchone() == (
        "charged",
        "hit",
        0,
    )


def test_copy_classification_costs_nothing(store: Store) -> None:
    add_image(store, "aa", "/p/a.jpg")
    add_image(store, "bb", "/p/b.jpg")
    store.record_classification(
        sha256="aa", model="m", labels=[LabelScore("TABBY", 0.9)], micro_neurons=COST,
        cache_status="MISS", run_id=None, reservation_id=None,
    )  # fmt: skip
    assert store.copy_classification(source_sha256="aa", sha256="bb", model="m", run_id=None)
    row = store.conn.execute(
        "SELECT top_label, micro_neurons, cache_status FROM classifications WHERE sha256 = 'bb'"
    ).fetchone()
    assert row == ("TABBY", 0, "LOCAL")
    assert not store.copy_classification(source_sha256="zz", sha256="bb", model="m", run_id=None)
    assert store.counts()["done"] == 2


def test_pending_and_failed_images(store: Store) -> None:
    add_image(store, "aa", "/p/a.jpg")
    add_image(store, "bb", "/p/b.jpg")
    assert [p.sha256 for p in store.pending_images("m")] == ["aa", "bb"]
    assert store.count_pending() == 2
    reservation = store.reserve(day=DAY, cost=COST, limit=10 * COST, run_id=None, sha256="aa")
    store.mark_failed("aa", "cannot identify image", reservation_id=reservation)
    assert [p.sha256 for p in store.pending_images("m")] == ["bb"]
    assert store.day_usage(DAY) == (0, 0)
    assert store.counts()["failed"] == 1


def test_failed_write_rolls_back(store: Store) -> None:
    with pytest.raises(RuntimeError), store._write() as conn:
        conn.execute(
            "INSERT INTO ledger (day, micro_neurons, state, created_at) VALUES (?, 1, 'reserved', 'x')",
            (DAY,),
        )
        raise RuntimeError("boom")
    assert store.day_usage(DAY) == (0, 0)


def test_runs_are_recorded(store: Store) -> None:
    run_id = store.start_run("scan", ["/a", "/b"], 42, None)
    store.finish_run(run_id, "done", 0, {"files": 3})
    row = store.conn.execute("SELECT command, roots, status, exit_code, counts FROM runs").fetchone()
    assert row == ("scan", '["/a", "/b"]', "done", 0, '{"files": 3}')
