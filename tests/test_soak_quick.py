"""The fault suite in its short form (``bench/soak.py --quick``): kill -9, a fault mix, the budget
under a lock and a kill, hostile files. It runs in a child process, as CI runs it, and the test
reads its JSON figures: each invariant is asserted here by itself, so a failure names it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"


@pytest.mark.slow
def test_soak_quick_keeps_every_promise(tmp_path: Path) -> None:
    figures = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(SOAK), "--quick", "--json", str(figures)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert figures.exists(), proc.stderr[-3000:]
    data = json.loads(figures.read_text())

    kills = data["kills"]
    assert kills["kills"] == 3
    assert kills["results_lost"] == 0
    assert kills["paid_twice_worst_kill"] <= kills["concurrency"]
    assert kills["billed_not_recorded_worst_kill"] <= kills["concurrency"]
    assert kills["duplicate_rows"] and not any(kills["duplicate_rows"].values()), kills["duplicate_rows"]
    assert kills["final_exit"] == 0, kills["final_stderr"]
    assert kills["classified"] == kills["images"]
    assert kills["distinct_billed"] == kills["images"]
    assert kills["reservations_left"] == 0

    faults = data["faults"]
    assert faults["classified"] == faults["images"]
    assert faults["paid_twice"] == 0
    assert faults["status_counts"].get("500", 0) > 0 and faults["status_counts"].get("429", 0) > 0

    budget = data["budget"]
    limit = round(budget["budget_neurons"] * 1_000_000)
    if budget["same_utc_day"]:  # a run that crosses 00:00 UTC rightly gets a new day's budget
        assert budget["billed_micro_neurons"] <= limit
        assert budget["ledger_charged"] + budget["ledger_reserved"] <= limit
    assert budget["second_exit"] == 75 and budget["second_names_pid"], budget["second_message"]
    assert budget["rerun_exit"] == 75

    hostile = data["hostile"]
    assert hostile["crashes"] == 0, hostile["stderr_tail"]
    assert hostile["exit"] == 0
    assert hostile["failed"] and all(reason for _, reason in hostile["failed"])

    assert proc.returncode == 0, proc.stdout[-3000:]
    assert data["seconds"] < 60
