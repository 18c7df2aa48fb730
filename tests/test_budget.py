"""The neuron ledger: integer micro-neurons, UTC days, reservations and their settlement."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from cfclassify.budget import Ledger, Refusal, to_micro
from cfclassify.config import BudgetSettings, PricingSettings
from cfclassify.store import Store

COST = 228_055


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "ledger.db")
    yield s
    s.close()


def fixed_clock(when: str):
    moment = datetime.fromisoformat(when).replace(tzinfo=UTC)
    return lambda: moment


def make_ledger(store: Store, **kwargs) -> Ledger:
    budget = kwargs.pop("budget", BudgetSettings())
    return Ledger(
        store,
        budget,
        PricingSettings(),
        clock=kwargs.pop("clock", fixed_clock("2026-11-23T12:00:00")),
        **kwargs,
    )


def fill(ledger: Ledger) -> int:
    count = 0
    while ledger.reserve() is not None:
        count += 1
    return count


def test_default_budget_fits_exactly_the_images_whose_cost_stays_within_10000_neurons(store: Store) -> None:
    ledger = make_ledger(store)
    assert ledger.limit == 10_000 * 1_000_000
    per_day = ledger.images_per_day()
    # floor(10^10 / 228055): the last image that fits leaves 16,305 micro-neurons unspent.
    assert per_day == 43_849
    assert per_day * COST <= 10**10 < (per_day + 1) * COST


def test_budget_10_takes_exactly_43_images(store: Store) -> None:
    ledger = make_ledger(store, budget_override=10)
    assert fill(ledger) == 43
    assert ledger.last_refusal is Refusal.BUDGET
    charged, reserved = store.day_usage("2026-11-23")
    assert (charged, reserved) == (0, 43 * COST)


def test_reserve_neurons_leave_headroom(store: Store) -> None:
    ledger = make_ledger(store, budget=BudgetSettings(daily_neurons=10, reserve_neurons=5))
    assert ledger.limit == to_micro(5)
    assert fill(ledger) == 21


def test_release_frees_room_and_keep_does_not(store: Store) -> None:
    ledger = make_ledger(store, budget_override=COST * 2 / 1e6)
    first = ledger.reserve()
    second = ledger.reserve()
    assert first and second and ledger.reserve() is None
    ledger.release(first)
    third = ledger.reserve()
    assert third is not None
    ledger.keep(second)  # outcome unknown: counts as spent
    assert ledger.reserve() is None
    assert store.day_usage("2026-11-23") == (COST, COST)


def test_orphaned_reservations_count_as_charges(store: Store) -> None:
    ledger = make_ledger(store)
    for _ in range(3):
        assert ledger.reserve() is not None
    assert store.settle_orphaned_reservations() == 3
    assert store.day_usage("2026-11-23") == (3 * COST, 0)


def test_exhausted_day_refuses_everything_until_midnight_utc(store: Store) -> None:
    now = {"t": datetime(2026, 11, 23, 23, 59, 59, tzinfo=UTC)}
    ledger = make_ledger(store, clock=lambda: now["t"])
    ledger.mark_exhausted("code 3036")
    assert ledger.reserve() is None
    assert ledger.last_refusal is Refusal.QUOTA
    assert ledger.usage().left == 0
    now["t"] = datetime(2026, 11, 24, 0, 0, 1, tzinfo=UTC)
    assert ledger.reserve() is not None


def test_day_follows_the_clock_in_utc_not_local_time(store: Store) -> None:
    from datetime import timedelta, timezone

    # 01:30 in UTC+3 on the 24th is 22:30 UTC on the 23rd.
    local = datetime(2026, 11, 24, 1, 30, tzinfo=timezone(timedelta(hours=3)))
    ledger = make_ledger(store, clock=lambda: local)
    assert ledger.today() == "2026-11-23"


def test_max_images_caps_a_run(store: Store) -> None:
    ledger = make_ledger(store, max_images=5)
    assert fill(ledger) == 5
    assert ledger.last_refusal is Refusal.MAX_IMAGES


def test_cache_hit_is_charged_nothing(store: Store) -> None:
    ledger = make_ledger(store)
    assert ledger.charge_for("HIT") == 0
    assert ledger.charge_for("MISS") == COST
    assert ledger.charge_for(None) == COST


def test_usd_only_above_the_free_allocation(store: Store) -> None:
    ledger = make_ledger(store)
    assert ledger.usd_for(to_micro(9_999)) == 0
    assert ledger.usd_for(to_micro(12_000)) == pytest.approx(2_000 * 0.011 / 1000)


def test_days_needed(store: Store) -> None:
    ledger = make_ledger(store, budget_override=10)  # 43 images a day
    assert ledger.days_needed(0) == 0
    assert ledger.days_needed(43) == 1
    assert ledger.days_needed(44) == 2
    assert ledger.days_needed(43 * 3) == 3
    fill(ledger)  # nothing left today: tomorrow starts the count
    assert ledger.days_needed(43) == 1
    assert make_ledger(store, budget_override=0.1).days_needed(1) == -1


def test_two_ledgers_on_one_database_never_pass_the_limit_together(tmp_path: Path) -> None:
    """Two processes' worth of reservers interleaved: the limit holds across connections."""
    path = tmp_path / "shared.db"
    a, b = Store(path), Store(path)
    try:
        la, lb = make_ledger(a, budget_override=10), make_ledger(b, budget_override=10)
        got = 0
        for _ in range(60):
            got += la.reserve() is not None
            got += lb.reserve() is not None
        assert got == 43
    finally:
        a.close()
        b.close()


def test_day_totals_kept_by_triggers_agree_with_the_ledger_rows(store: Store) -> None:
    now = {"t": datetime(2026, 11, 23, 23, 0, tzinfo=UTC)}
    ledger = make_ledger(store, clock=lambda: now["t"])
    held = [ledger.reserve() for _ in range(6)]
    ledger.release(held[0])
    ledger.keep(held[1])
    store.settle(held[2].id, state="charged", outcome="hit", micro_neurons=0)
    now["t"] = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)
    ledger.reserve()
    store.settle_orphaned_reservations()
    ledger.reserve()
    summed = dict(
        ((day, state), total)
        for day, state, total in store.conn.execute(
            "SELECT day, state, sum(micro_neurons) FROM ledger GROUP BY day, state"
        )
    )
    for day in ("2026-11-23", "2026-11-24"):
        expected = (summed.get((day, "charged"), 0), summed.get((day, "reserved"), 0))
        assert store.day_usage(day) == expected
    assert store.day_usage("2026-11-23") == (4 * COST, 0)
    assert store.day_usage("2026-11-24") == (COST, COST)


def test_day_totals_are_backfilled_when_an_old_database_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    from cfclassify.migrations import migrations

    path = tmp_path / "old.db"
    with Store(path) as s:
        make_ledger(s).reserve()
        make_ledger(s).reserve()
    conn = sqlite3.connect(path)
    # Roll the database back to how 0001 left it, with its ledger rows.
    conn.executescript(
        "DROP TRIGGER ledger_totals_insert; DROP TRIGGER ledger_totals_update; "
        "DROP TRIGGER ledger_totals_delete; DROP TABLE ledger_totals; "
        "DELETE FROM _sqlite_migrations WHERE name = '0002_ledger_day_totals';"
    )
    conn.close()
    with Store(path) as s:
        assert [m.name for m in migrations.applied(s.db)][-1] == "0002_ledger_day_totals"
        assert s.day_usage("2026-11-23") == (0, 2 * COST)
