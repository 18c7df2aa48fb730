"""The ``scan`` command and the global options, through click's CliRunner."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from cfclassify import __version__
from cfclassify.cli import cli
from cfclassify.store import Store


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def scan_json(*args: str) -> dict[str, object]:
    result = run(*args)
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads(result.stdout)
    return data


@pytest.fixture
def photos(tmp_tree: Callable[..., Path]) -> Path:
    spec: dict[str, bytes | str] = {f"a/img{i}.jpg": bytes([i]) * 10 for i in range(6)}
    spec.update({f"b/copy{i}.JPG": bytes([i]) * 10 for i in range(2)})  # 2 byte-copies
    spec.update({".cache/x.jpg": b"hidden", "@eaDir/t.jpg": b"thumb", "readme.txt": "hi"})
    return tmp_tree(spec, name="photos")


def test_scan_json_counts(clean_env: Path, photos: Path, tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    data = scan_json("--db", str(db), "scan", "--json", str(photos))
    assert data["files"] == 8
    assert data["new_images"] == 6
    assert data["known_images"] == 0
    assert data["duplicate_paths"] == 2
    assert data["hashed"] == 8
    assert data["skipped"] == {"hidden": 1, "excluded": 1, "symlinks": 0, "not_images": 1}
    assert data["problems"] == {"unreadable": 0, "vanished": 0, "broken_links": 0, "loops": 0}
    assert db.is_file()

    again = scan_json("--db", str(db), "scan", "--json", str(photos))
    assert (again["hashed"], again["cached"], again["new_images"], again["known_images"]) == (0, 8, 0, 6)


def test_scan_human_output(clean_env: Path, photos: Path, tmp_path: Path) -> None:
    result = run("--db", str(tmp_path / "x.db"), "scan", str(photos))
    assert result.exit_code == 0
    out = result.stdout
    assert "8 image files: 6 new images, 0 known images, 2 duplicate paths" in out
    assert "read 8 files, 0 unchanged, 0 moved; 0 missing since the last scan" in out
    assert "skipped: 1 hidden, 1 excluded, 0 symlinks, 1 not images" in out
    assert "problems" not in out


def test_db_from_config_file_and_env(
    clean_env: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'db = "{tmp_path / "from-config.db"}"\n', encoding="utf-8")
    assert run("--config", str(cfg), "scan", "--json", str(photos)).exit_code == 0
    assert (tmp_path / "from-config.db").is_file()
    monkeypatch.setenv("CFCLASSIFY_DB", str(tmp_path / "from-env.db"))
    assert run("--config", str(cfg), "scan", "--json", str(photos)).exit_code == 0
    assert (tmp_path / "from-env.db").is_file()


def test_default_db_is_in_the_current_folder(clean_env: Path, photos: Path) -> None:
    assert run("scan", "--json", str(photos)).exit_code == 0
    assert (clean_env / "cfclassify.db").is_file()


def test_walk_settings_come_from_config(clean_env: Path, photos: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[walk]\ninclude_hidden = true\nexclude = []\n", encoding="utf-8")
    data = scan_json("--config", str(cfg), "--db", str(tmp_path / "x.db"), "scan", "--json", str(photos))
    assert data["files"] == 10


def test_missing_path_is_reported_not_a_crash(clean_env: Path, photos: Path, tmp_path: Path) -> None:
    absent = tmp_path / "no-such-folder"
    result = run("--db", str(tmp_path / "x.db"), "scan", str(absent), str(photos))
    assert result.exit_code == 0
    assert "problems: 1 vanished" in result.stdout
    assert str(absent) in result.stderr
    data = scan_json("--db", str(tmp_path / "y.db"), "scan", "--json", str(absent))
    assert data["files"] == 0
    assert data["problems"]["vanished"] == 1  # type: ignore[index]


def test_bad_config_exits_1_naming_the_key(clean_env: Path, photos: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[run]\nconcurrency = 'lots'\n", encoding="utf-8")
    result = run("--config", str(cfg), "--db", str(tmp_path / "x.db"), "scan", str(photos))
    assert result.exit_code == 1
    assert "run.concurrency" in result.stderr
    assert str(cfg) in result.stderr
    assert not (tmp_path / "x.db").exists()


def test_unknown_config_key_exits_1(clean_env: Path, photos: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[walk]\nfollow_links = true\n", encoding="utf-8")
    result = run("--config", str(cfg), "scan", str(photos))
    assert result.exit_code == 1
    assert "walk.follow_links" in result.stderr


def test_token_in_config_exits_1_without_showing_it(clean_env: Path, photos: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[cloudflare]\napi_token = "hunter2-token"\n', encoding="utf-8")
    result = run("--config", str(cfg), "scan", str(photos))
    assert result.exit_code == 1
    assert "CLOUDFLARE_API_TOKEN" in result.stderr
    assert "hunter2-token" not in result.output


def test_non_sqlite_db_exits_1_with_a_clear_message(clean_env: Path, photos: Path, tmp_path: Path) -> None:
    db = tmp_path / "notes.txt"
    db.write_text("shopping list\n" * 200, encoding="utf-8")
    result = run("--db", str(db), "scan", str(photos))
    assert result.exit_code == 1
    assert str(db) in result.stderr
    assert "not a usable cfclassify database" in result.stderr
    assert "Traceback" not in result.output


def test_busy_db_exits_75(
    clean_env: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "x.db"
    Store(db).close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    original = Store.__init__

    def quick(self: Store, path: str | Path, *, busy_timeout: float = 10.0) -> None:
        original(self, path, busy_timeout=0.05)

    monkeypatch.setattr(Store, "__init__", quick)
    try:
        result = run("--db", str(db), "scan", str(photos))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.exit_code == 75
    assert "busy" in result.stderr


def test_scan_needs_a_path(clean_env: Path) -> None:
    result = run("scan")
    assert result.exit_code == 2
    assert "Missing argument" in result.output


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"cfclassify, version {__version__}"


def test_verbose_flag_is_accepted(clean_env: Path, photos: Path, tmp_path: Path) -> None:
    result = run("-vv", "--db", str(tmp_path / "x.db"), "scan", "--json", str(photos))
    assert result.exit_code == 0
    assert json.loads(result.stdout)["files"] == 8


def _all_commands(group: click.Group, prefix: str = "cfclassify") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = [(prefix, group)]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.extend(_all_commands(command, f"{prefix} {name}"))
        else:
            found.append((f"{prefix} {name}", command))
    return found


@pytest.mark.parametrize(
    ("name", "command"), _all_commands(cli), ids=lambda x: x if isinstance(x, str) else ""
)
def test_every_command_help_has_an_example(name: str, command: click.Command) -> None:
    assert command.help, f"{name} has no help text"
    assert "Example" in command.help, f"{name}'s help has no example"
    args = name.split()[1:] + ["--help"]
    result = run(*args)
    assert result.exit_code == 0
    assert "Example" in result.stdout
