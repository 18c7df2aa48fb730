"""``status``, ``export``, ``search`` and ``labels`` through the command line, on a real finished run.

The run is made once (module scope) with ``cfclassify run`` against the stand-in; each test then
reads the database through a command and checks the output against the database itself.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cfclassify.cli import cli
from cfclassify.emulator import EmulatorOptions, start_emulator
from cfclassify.samples import make_sample_tree

COST = 228_055
CLEAN = {"CFCLASSIFY_CONFIG": None, "CFCLASSIFY_DB": None}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, int]]]:
    base = tmp_path_factory.mktemp("cli-finished")
    tree = make_sample_tree(base / "photos", unique=10, duplicates=5)
    db = base / "cfclassify.db"
    with start_emulator(EmulatorOptions()) as emu:
        env = {"CLOUDFLARE_BASE_URL": emu.api_base, "CLOUDFLARE_ACCOUNT_ID": "a", "CLOUDFLARE_API_TOKEN": "t"}
        args = ["--config", str(_empty_config(base)), "--db", str(db), "run", "--quiet", str(base / "photos")]
        result = CliRunner().invoke(cli, args, env={**CLEAN, **env}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    yield db, tree


def _empty_config(base: Path) -> Path:
    path = base / "empty.toml"
    path.write_text("")
    return path


def cfc(db: Path, *args: str) -> Result:
    config = _empty_config(db.parent)
    return CliRunner().invoke(
        cli, ["--config", str(config), "--db", str(db), *args], env=CLEAN, catch_exceptions=False
    )


def sql(db: Path, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


def test_status_json_agrees_with_the_ledger(finished: tuple[Path, dict[str, int]]) -> None:
    db, tree = finished
    result = cfc(db, "status", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    [(day, charged)] = sql(
        db, "SELECT day, sum(micro_neurons) FROM ledger WHERE state = 'charged' GROUP BY day"
    )
    assert data["today"]["day"] == day
    assert data["today"]["charged_neurons"] == charged / 1e6 == tree["unique"] * COST / 1e6
    assert data["today"]["reserved_neurons"] == 0
    assert data["today"]["left_neurons"] == pytest.approx(10_000 - charged / 1e6)
    assert data["today"]["usd"] == data["month"]["usd"] == 0
    assert data["images"]["left"] == 0 and data["images"]["days_needed"] == 0
    assert data["images"]["done"] == tree["unique"]
    assert data["failures"] == dict(sql(db, "SELECT error, count(*) FROM images WHERE status = 'failed'"))
    assert [(r["command"], r["exit_code"]) for r in data["runs"]] == [("run", 0)]


def test_status_human(finished: tuple[Path, dict[str, int]]) -> None:
    db, tree = finished
    result = cfc(db, "status")
    assert result.exit_code == 0
    out = result.stdout
    assert f"{tree['unique']} classified, 1 failed, 0 left to classify" in out
    assert f"{tree['unique'] * COST / 1e6:.6f} neurons charged" in out
    assert "$0.0000 today" in out and "exit 0" in out and "resets " in out


def test_export_csv_one_row_per_path_duplicates_included(finished: tuple[Path, dict[str, int]]) -> None:
    db, tree = finished
    result = cfc(db, "export")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == tree["image_files"]
    assert sorted(r["path"] for r in rows) == sorted(p for (p,) in sql(db, "SELECT path FROM files"))
    shas = [r["sha256"] for r in rows if r["status"] == "done"]
    assert len(shas) - len(set(shas)) == tree["duplicates"]


def test_export_jsonl_to_a_file(finished: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    db, tree = finished
    out = tmp_path / "labels.jsonl"
    result = cfc(db, "export", "--format", "jsonl", "-o", str(out))
    assert result.exit_code == 0 and result.stdout == ""
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == tree["image_files"]
    top = dict(sql(db, "SELECT f.path, c.top_label FROM files f JOIN classifications c USING (sha256)"))
    assert {r["path"]: r["top_label"] for r in records if r["status"] == "done"} == top


def test_search_matches_regardless_of_case(finished: tuple[Path, dict[str, int]]) -> None:
    db, _ = finished
    [(label,)] = sql(db, "SELECT label FROM labels ORDER BY score DESC LIMIT 1")
    query = "SELECT DISTINCT f.path FROM files f JOIN labels l USING (sha256) WHERE l.label = ?"
    expected = sorted(p for (p,) in sql(db, query, (label,)))
    assert expected and label == label.upper()
    for query in (label.lower(), label.title(), label):
        result = cfc(db, "search", query)
        assert result.exit_code == 0
        assert result.stdout.splitlines() == expected


def test_search_min_score_print0_and_no_match(
    finished: tuple[Path, dict[str, int]], caplog: pytest.LogCaptureFixture
) -> None:
    db, _ = finished
    [(label, score)] = sql(db, "SELECT label, score FROM labels ORDER BY score DESC LIMIT 1")
    assert cfc(db, "search", label, "--min-score", str(min(1.0, score + 0.01))).stdout == ""
    result = cfc(db, "search", label.lower(), "--min-score", str(score), "-0")
    assert result.stdout.endswith("\0") and "\n" not in result.stdout
    missing = cfc(db, "search", "no such label")
    assert missing.exit_code == 0 and missing.stdout == "" and "no image is labelled" in caplog.text


def test_labels_counts_top_labels(finished: tuple[Path, dict[str, int]]) -> None:
    db, tree = finished
    result = cfc(db, "labels", "--top", "100", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert sum(d["images"] for d in data) == tree["unique"]
    assert sum(d["files"] for d in data) == tree["unique"] + tree["duplicates"]
    expected = dict(sql(db, "SELECT top_label, count(*) FROM classifications GROUP BY top_label"))
    assert {d["label"]: d["images"] for d in data} == expected
    human = cfc(db, "labels", "--top", "2").stdout.splitlines()
    assert human[0].split() == ["images", "files", "label"] and len(human) == 3


def test_export_xmp_writes_sidecars_and_option_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree = tmp_path / "photos"
    make_sample_tree(tree, unique=3, duplicates=1)
    db = tmp_path / "x.db"
    (tmp_path / "cfg.toml").write_text("[xmp]\nmin_score = 0.0\n")
    with start_emulator(EmulatorOptions()) as emu:
        env = {
            **CLEAN,
            "CLOUDFLARE_BASE_URL": emu.api_base,
            "CLOUDFLARE_ACCOUNT_ID": "a",
            "CLOUDFLARE_API_TOKEN": "t",
        }
        base = ["--config", str(tmp_path / "cfg.toml"), "--db", str(db)]
        assert CliRunner().invoke(cli, [*base, "run", "--quiet", str(tree)], env=env).exit_code == 0
        result = CliRunner().invoke(
            cli, [*base, "export", "--format", "xmp"], env=env, catch_exceptions=False
        )
    assert result.exit_code == 0, result.output
    assert "sidecars: 4 created" in result.stdout and "1 not classified" in result.stdout
    assert len(list(tree.rglob("*.xmp"))) == 4

    broken_sidecar = next(tree.rglob("*.xmp"))
    broken_sidecar.write_text("<nope")
    again = CliRunner().invoke(cli, [*base, "export", "--format", "xmp"], env=CLEAN)
    assert "3 unchanged" in again.stdout and "1 left alone" in again.stdout
    assert "--force replaces it" in caplog.text and broken_sidecar.read_text() == "<nope"
    forced = CliRunner().invoke(cli, [*base, "export", "--format", "xmp", "--force"], env=CLEAN)
    assert "1 replaced" in forced.stdout and "cfclassify|" in broken_sidecar.read_text()

    assert cfc(db, "export", "--format", "xmp", "-o", "x").exit_code == 2
    assert cfc(db, "export", "--force").exit_code == 2
    assert cfc(db, "export", "--min-score", "0.5").exit_code == 2


@pytest.mark.parametrize("command", [["status"], ["export"], ["search", "tabby"], ["labels"]])
def test_reports_on_a_missing_database_exit_1_and_create_nothing(tmp_path: Path, command: list[str]) -> None:
    db = tmp_path / "nowhere.db"
    result = cfc(db, *command)
    assert result.exit_code == 1
    assert "no database at" in result.stderr and "cfclassify run" in result.stderr
    assert not db.exists()
