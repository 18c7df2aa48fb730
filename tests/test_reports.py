"""reports.py and export.py: status figures, search, label counts and the CSV / JSON Lines writers.

Most tests read one finished run against the stand-in (module scope); the exact-figure tests
build a small store by hand, so every number they assert is known in advance.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cfclassify.budget import MICRO
from cfclassify.config import Settings
from cfclassify.emulator import EmulatorOptions, start_emulator
from cfclassify.export import CSV_COLUMNS, write_csv, write_jsonl
from cfclassify.reports import label_query, render_status, search, status, top_labels
from cfclassify.runner import run
from cfclassify.samples import make_sample_tree
from cfclassify.store import FileRecord, LabelScore, Store

COST = 228_055
MODEL = "@cf/microsoft/resnet-50"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, dict[str, int]]]:
    """A sample tree (duplicates, one broken file) classified to the end against the stand-in."""
    base = tmp_path_factory.mktemp("finished")
    tree = make_sample_tree(base / "photos", unique=12, duplicates=6)
    with start_emulator(EmulatorOptions()) as emu:
        settings = Settings().replace(
            db=str(base / "cfclassify.db"),
            cloudflare__api_base=emu.api_base,
            cloudflare__account_id="acct",
            cloudflare__api_token="tok",
        )
        result = run(settings, [str(base / "photos")], handle_signals=False)
    assert result.exit_code == 0
    yield settings, tree


def sql(settings: Settings, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(settings.db)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- status ----------------------------------------------------------------------------------------


def test_status_agrees_with_the_ledger_after_a_real_run(finished: tuple[Settings, dict[str, int]]) -> None:
    settings, tree = finished
    with Store(settings.db) as store:
        report = status(store, settings)
    [(day, charged, reserved)] = sql(
        settings,
        "SELECT day, sum(CASE WHEN state='charged' THEN micro_neurons ELSE 0 END), "
        "sum(CASE WHEN state='reserved' THEN micro_neurons ELSE 0 END) FROM ledger GROUP BY day",
    )
    assert report.today.day == day
    assert (report.today.charged, report.today.reserved) == (charged, reserved)
    assert charged == tree["unique"] * COST
    assert report.today.left == 10_000 * MICRO - charged
    assert report.month_micro_neurons == charged
    assert report.usd_today == report.usd_month == 0.0  # far below the free 10,000
    assert report.images_left == 0 and report.days_needed == 0
    assert report.counts["done"] == tree["unique"]
    assert sum(n for _, n in report.failures) == tree["broken"] == 1
    assert [(r.command, r.status, r.exit_code) for r in report.runs] == [("run", "done", 0)]
    assert report.as_dict()["runs"][0]["classified"] == tree["unique"]


def _store_with_history(tmp_path: Path) -> Store:
    store = Store(tmp_path / "history.db")
    ledger_days = {
        "2026-02-28": [50_000],  # last month: not in March's total
        "2026-03-01": [12_000],
        "2026-03-02": [5_000],
        "2026-03-15": [10_000, 500],  # today
    }
    for day, amounts in ledger_days.items():
        for neurons in amounts:
            rid = store.reserve(day=day, cost=neurons * MICRO, limit=10**15, run_id=None, sha256=None)
            assert rid is not None
            store.settle(rid, state="charged", outcome="ok")
    # One reservation still open today: it counts as spent.
    assert store.reserve(day="2026-03-15", cost=1_000 * MICRO, limit=10**15, run_id=None, sha256=None)
    store.record_scan_batch(
        [
            FileRecord("/p/a.jpg", "/p", "/p", "a" * 64, 1, 1, 1, 1),
            FileRecord("/p/b.jpg", "/p", "/p", "b" * 64, 1, 1, 2, 1),
            FileRecord("/p/c.jpg", "/p", "/p", "b" * 64, 1, 1, 3, 1),
        ],
    )
    return store


def test_status_cost_is_per_day_over_the_free_allocation_summed_for_the_month(tmp_path: Path) -> None:
    with _store_with_history(tmp_path) as store:
        report = status(store, Settings(), clock=lambda: at("2026-03-15T18:00:00"))
    # March: 12,000 -> 2,000 over; 5,000 -> 0; today 10,000 + 500 + 1,000 reserved -> 1,500 over.
    assert report.usd_month == pytest.approx((2_000 + 1_500) * 0.011 / 1000)
    assert report.usd_today == pytest.approx(1_500 * 0.011 / 1000)
    assert report.month == "2026-03"
    assert report.month_micro_neurons == (12_000 + 5_000 + 11_500) * MICRO
    assert (report.today.charged, report.today.reserved) == (10_500 * MICRO, 1_000 * MICRO)
    assert report.today.left == 0
    assert report.resets_in_seconds == 6 * 3600
    assert report.images_left == 2  # two distinct images at three paths
    assert report.days_needed == 1  # nothing fits today: tomorrow


def test_status_days_needed_counts_what_fits_today(tmp_path: Path) -> None:
    settings = Settings().replace(budget__daily_neurons=10_500.5)  # 2 images' worth left today
    with _store_with_history(tmp_path) as store:
        pending = store.count_pending()
        report = status(store, settings, clock=lambda: at("2026-03-15T23:59:30"))
    assert pending == 2
    assert report.days_needed == 1
    assert report.resets_in_seconds == 30


def test_status_never_finishes_when_the_budget_pays_for_nothing(tmp_path: Path) -> None:
    settings = Settings().replace(budget__daily_neurons=0)
    with _store_with_history(tmp_path) as store:
        report = status(store, settings, clock=lambda: at("2026-03-20T00:00:00"))
    assert report.days_needed == -1
    assert any("never" in line for line in render_status(report))


def test_status_shows_an_exhausted_day(tmp_path: Path) -> None:
    with _store_with_history(tmp_path) as store:
        store.mark_day_exhausted("2026-03-20", "3036 daily free allocation used up")
        report = status(store, Settings(), clock=lambda: at("2026-03-20T12:00:00"))
    assert report.today.left == 0
    assert report.as_dict()["today"]["exhausted"] == "3036 daily free allocation used up"
    assert "quota used up" in render_status(report)[0]


def test_status_on_an_empty_database(tmp_path: Path) -> None:
    with Store(tmp_path / "empty.db") as store:
        report = status(store, Settings())
    data = report.as_dict()
    assert data["images"]["left"] == 0 and data["runs"] == [] and data["failures"] == {}
    assert data["today"]["left_neurons"] == 10_000
    assert len(render_status(report)) == 3  # no failure or run lines


# -- search and labels -----------------------------------------------------------------------------


@pytest.fixture
def labelled(tmp_path: Path) -> Iterator[Store]:
    """Three images at four paths (one missing), with labels whose scores are known."""
    store = Store(tmp_path / "labelled.db")
    files = [("/p/cat.jpg", "1"), ("/p/copy of cat.jpg", "1"), ("/p/dog.jpg", "2"), ("/p/gone.jpg", "3")]
    store.record_scan_batch(
        [FileRecord(p, "/p", "/p", s * 64, 1, 1, i, 1) for i, (p, s) in enumerate(files)],
    )
    answers = {
        "1": [LabelScore("TABBY", 0.8), LabelScore("TIGER CAT", 0.15)],
        "2": [LabelScore("GOLDEN RETRIEVER", 0.6), LabelScore("TABBY", 0.05)],
        "3": [LabelScore("TABBY", 0.9)],
    }
    for sha, labels in answers.items():
        store.record_classification(
            sha256=sha * 64, model=MODEL, labels=labels, micro_neurons=COST,
            cache_status="MISS", run_id=None, reservation_id=None,
        )  # fmt: skip
    store.record_scan_batch([], gone=["/p/gone.jpg"])  # as a rescan finds it gone
    yield store
    store.close()


@pytest.mark.parametrize("label", ["tabby", "TABBY", "Tabby", " tabby "])
def test_search_ignores_case_and_skips_missing_files(labelled: Store, label: str) -> None:
    paths = list(search(labelled, Settings(), label))
    assert paths == ["/p/cat.jpg", "/p/copy of cat.jpg", "/p/dog.jpg"]


def test_search_min_score_and_wildcards(labelled: Store) -> None:
    assert list(search(labelled, Settings(), "tabby", min_score=0.5)) == ["/p/cat.jpg", "/p/copy of cat.jpg"]
    assert list(search(labelled, Settings(), "*cat")) == ["/p/cat.jpg", "/p/copy of cat.jpg"]
    assert list(search(labelled, Settings(), "golden?retriever")) == ["/p/dog.jpg"]
    assert list(search(labelled, Settings(), "cat")) == []  # no wildcard: the whole label


def test_label_query_escapes_like_metacharacters() -> None:
    assert label_query("tabby") == ("tabby", False)
    assert label_query("*100%_off?") == ("%100\\%\\_off_", True)


def test_search_of_a_literal_percent_matches_nothing_else(labelled: Store) -> None:
    assert list(search(labelled, Settings(), "*%*")) == []


def test_top_labels_count_images_and_present_files(labelled: Store) -> None:
    counts = top_labels(labelled, Settings(), 10)
    # TABBY tops images 1 (two paths) and 3 (missing: not counted); GOLDEN RETRIEVER tops 2.
    # Equal image counts: more paths first.
    assert [(c.label, c.images, c.files) for c in counts] == [("TABBY", 1, 2), ("GOLDEN RETRIEVER", 1, 1)]
    assert len(top_labels(labelled, Settings(), 1)) == 1


def test_other_models_are_not_mixed_in(labelled: Store) -> None:
    other = Settings().replace(cloudflare__model="@cf/other/model")
    assert list(search(labelled, other, "tabby")) == []
    assert top_labels(labelled, other, 10) == []
    assert {r.status for r in labelled.iter_file_rows("@cf/other/model")} == {"done"}
    assert all(r.labels == () for r in labelled.iter_file_rows("@cf/other/model"))


# -- export writers --------------------------------------------------------------------------------


def test_csv_has_one_row_per_present_path_duplicates_included(
    finished: tuple[Settings, dict[str, int]],
) -> None:
    settings, tree = finished
    out = io.StringIO()
    with Store(settings.db) as store:
        written = write_csv(store.iter_file_rows(MODEL), out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert written == len(rows) == tree["image_files"]
    assert tuple(rows[0]) == CSV_COLUMNS
    assert sorted(r["path"] for r in rows) == sorted(p for (p,) in sql(settings, "SELECT path FROM files"))
    by_sha: dict[str, int] = {}
    for r in rows:
        by_sha[r["sha256"]] = by_sha.get(r["sha256"], 0) + 1
    assert sum(n - 1 for n in by_sha.values()) == tree["duplicates"]
    done = [r for r in rows if r["status"] == "done"]
    assert len(done) == tree["unique"] + tree["duplicates"]
    first = done[0]
    labels = [part.rsplit("=", 1) for part in first["labels"].split("; ")]
    assert labels[0] == [first["top_label"], first["top_score"]]
    assert float(first["neurons"]) == COST / MICRO
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"] and failed[0]["labels"] == ""


def test_jsonl_rows_match_the_database(finished: tuple[Settings, dict[str, int]]) -> None:
    settings, tree = finished
    out = io.StringIO()
    with Store(settings.db) as store:
        write_jsonl(store.iter_file_rows(MODEL), out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(records) == tree["image_files"]
    expected = dict(
        sql(settings, "SELECT f.path, c.labels FROM files f JOIN classifications c USING (sha256)")
    )
    for record in records:
        if record["status"] == "done":
            assert record["labels"] == json.loads(expected[record["path"]])
            assert record["top_label"] == record["labels"][0]["label"]
        else:
            assert record["labels"] == [] and record["neurons"] is None


def test_paging_is_complete_at_any_page_size(finished: tuple[Settings, dict[str, int]]) -> None:
    settings, _ = finished
    with Store(settings.db) as store:
        whole = [r.path for r in store.iter_file_rows(MODEL)]
        for page in (1, 2, 7):
            assert [r.path for r in store.iter_file_rows(MODEL, page=page)] == whole
    assert whole == sorted(whole) and len(set(whole)) == len(whole)


def test_export_skips_missing_files(labelled: Store) -> None:
    out = io.StringIO()
    write_jsonl(labelled.iter_file_rows(MODEL), out)
    paths = [json.loads(line)["path"] for line in out.getvalue().splitlines()]
    assert paths == ["/p/cat.jpg", "/p/copy of cat.jpg", "/p/dog.jpg"]
