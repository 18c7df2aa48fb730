"""All of cfclassify's SQL: the SQLite database behind scans, runs, the ledger and the reports.

Opening a ``Store`` checks that the file is SQLite, switches on WAL, and applies pending
migrations (``migrations.py``), so every command sees the current schema. Writes go through
``_write()``, a ``BEGIN IMMEDIATE`` transaction: the write lock is taken up front, so two
processes never deadlock upgrading a read lock, and a busy database waits ``busy_timeout``
seconds before ``DatabaseBusy`` (exit 75). ``synchronous=FULL`` makes each commit durable
before the next decision: a paid answer is on disk before the next request is reserved.

sqlite3 errors are converted into the project's error tree here and nowhere else.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from sqlite_utils import Database

from .errors import DatabaseBusy, StoreError
from .migrations import migrations

PAGE = 500


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class KnownFile(NamedTuple):
    """A recorded file, as the stat cache compares it (a tuple: built 100,000 times a rescan)."""

    path: str
    sha256: str | None
    size: int
    mtime_ns: int
    inode: int
    device: int
    missing: int


@dataclass(frozen=True, slots=True)
class FileRecord:
    path: str
    dir: str
    root: str
    sha256: str
    size: int
    mtime_ns: int
    inode: int
    device: int


@dataclass(frozen=True, slots=True)
class PendingImage:
    sha256: str
    path: str
    size: int
    attempts: int


@dataclass(frozen=True, slots=True)
class UploadInfo:
    sha256: str
    size: int
    format: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class LabelScore:
    label: str
    score: float


def to_db_path(path: str) -> str | bytes:
    """A path as stored: TEXT when it is valid UTF-8, else its raw bytes as a BLOB.

    Linux file names are bytes; one that is not UTF-8 (an old Latin-1 archive, say) comes from
    ``os.scandir`` with surrogate escapes, which SQLite's TEXT cannot hold. Stored as its bytes it
    stays exact, so the file can be opened, hashed, classified and tagged like any other.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def from_db_path(value: str | bytes) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _known(row: tuple[Any, ...]) -> KnownFile:
    # Built 100,000 times on a rescan of 100,000 files: only a bytes path pays for a new tuple.
    if isinstance(row[0], bytes):
        return KnownFile(from_db_path(row[0]), *row[1:])
    return KnownFile._make(row)


def _under_roots(roots: Sequence[str]) -> tuple[str, list[Any]]:
    """A WHERE clause on ``f.path`` matching files at or under any of ``roots``.

    Compared as bytes (``CAST(... AS BLOB)`` gives a TEXT path's UTF-8), so paths stored either
    way match.
    """
    if not roots:
        return "1", []
    clauses, params = [], []
    for root in roots:
        prefix = os.fsencode(root.rstrip("/") + "/")
        clauses.append("(CAST(f.path AS BLOB) = ? OR substr(CAST(f.path AS BLOB), 1, ?) = ?)")
        params += [os.fsencode(root), len(prefix), prefix]
    return "(" + " OR ".join(clauses) + ")", params


@contextlib.contextmanager
def _converted(path: str) -> Iterator[None]:
    """The one boundary where sqlite3 errors become cfclassify errors."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            raise DatabaseBusy(
                f"database {path} is busy: another cfclassify process is writing to it; "
                "try again when it has finished"
            ) from exc
        raise StoreError(f"database {path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise StoreError(
            f"{path} is not a usable cfclassify database ({exc}); "
            "point --db at another file or move this one away"
        ) from exc


class Store:
    """The cfclassify database. One per process; not shared across threads."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            parent = Path(self.path).expanduser().resolve().parent
            if not parent.is_dir():
                raise StoreError(f"cannot create database {self.path}: folder {parent} does not exist")
        with _converted(self.path):
            try:
                conn = sqlite3.connect(self.path, timeout=busy_timeout, check_same_thread=False)
            except sqlite3.OperationalError as exc:
                raise StoreError(f"cannot open database {self.path}: {exc}") from exc
            self.db = Database(conn)
            # The first statement that reads the file is where a non-SQLite file shows itself.
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()

    @property
    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection = self.db.conn
        return conn

    def _migrate(self) -> None:
        known = {m.name for m in migrations._migrations}
        applied = {m.name for m in migrations.applied(self.db)}
        if applied - known:
            raise StoreError(
                f"database {self.path} was written by a newer cfclassify "
                f"(unknown migrations: {', '.join(sorted(applied - known))}); upgrade cfclassify"
            )
        if migrations.pending(self.db):
            migrations.apply(self.db)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with _converted(self.path):
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with _converted(self.path):
            cursor = self.conn.execute(sql, params)
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = self._read(sql, params)
        return rows[0][0] if rows else None

    # -- scan: the stat cache -------------------------------------------------------------------

    def known_files_in_dir(self, directory: str) -> dict[str, KnownFile]:
        with _converted(self.path):
            rows = self.conn.execute(
                "SELECT path, sha256, size, mtime_ns, inode, device, missing FROM files WHERE dir = ?",
                (to_db_path(directory),),
            ).fetchall()
        return {known.path: known for known in map(_known, rows)}

    def find_moved(self, device: int, inode: int, size: int, mtime_ns: int, path: str) -> KnownFile | None:
        """A recorded file with this identity at another path: a move or rename within the roots."""
        rows = self._read(
            "SELECT path, sha256, size, mtime_ns, inode, device, missing FROM files "
            "WHERE device = ? AND inode = ? AND size = ? AND mtime_ns = ? AND path != ? "
            "AND sha256 IS NOT NULL LIMIT 1",
            (device, inode, size, mtime_ns, to_db_path(path)),
        )
        return _known(tuple(rows[0])) if rows else None

    def has_files(self) -> bool:
        return self._scalar("SELECT 1 FROM files LIMIT 1") is not None

    def record_scan_batch(
        self,
        changed: Sequence[FileRecord],
        *,
        gone: Sequence[str] = (),
        returned: Sequence[str] = (),
    ) -> int:
        """Record one batch of a scan; returns how many of ``changed`` brought a new image.

        ``changed``: new, modified or moved files (written in full, present). ``gone``: recorded
        paths no longer on disk (marked missing, labels kept). ``returned``: unchanged files that
        were missing and are back. Unchanged files are not written at all, so a rescan of an
        unchanged tree writes nothing.
        """
        now = utc_now()
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO images (sha256, size, status, first_seen, updated_at) "
                "VALUES (?, ?, 'pending', ?, ?)",
                ((f.sha256, f.size, now, now) for f in changed),
            )
            new_images = conn.total_changes - before
            conn.executemany(
                "INSERT INTO files (path, dir, root, sha256, size, mtime_ns, inode, device, "
                "first_seen, last_seen, missing) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0) "
                "ON CONFLICT(path) DO UPDATE SET dir=excluded.dir, root=excluded.root, "
                "sha256=excluded.sha256, size=excluded.size, mtime_ns=excluded.mtime_ns, "
                "inode=excluded.inode, device=excluded.device, last_seen=excluded.last_seen, "
                "missing=0, error=NULL",
                (
                    (
                        to_db_path(f.path),
                        to_db_path(f.dir),
                        to_db_path(f.root),
                        f.sha256,
                        f.size,
                        f.mtime_ns,
                        f.inode,
                        f.device,
                        now,
                        now,
                    )
                    for f in changed
                ),
            )
            conn.executemany("UPDATE files SET missing = 1 WHERE path = ?", ((to_db_path(p),) for p in gone))
            conn.executemany(
                "UPDATE files SET missing = 0, last_seen = ? WHERE path = ?",
                ((now, to_db_path(p)) for p in returned),
            )
        return new_images

    def finish_scan(self, roots: Iterable[str], visited_dirs: Collection[str]) -> int:
        """Mark missing the files of recorded folders under ``roots`` that the walk never reached.

        (Files that vanished from folders it did reach were marked batch by batch.)
        """
        roots = list(roots)
        if not roots:
            return 0
        where, params = _under_roots(roots)
        dirs = [
            row[0]  # as stored: the UPDATE below matches it exactly
            for row in self._read(f"SELECT DISTINCT dir FROM files f WHERE f.missing = 0 AND {where}", params)
            if from_db_path(row[0]) not in visited_dirs
        ]
        if not dirs:
            return 0
        with self._write() as conn:
            return sum(
                conn.execute("UPDATE files SET missing = 1 WHERE dir = ? AND missing = 0", (d,)).rowcount
                for d in dirs
            )

    # -- runs -----------------------------------------------------------------------------------

    def start_run(self, command: str, roots: Sequence[str], pid: int, budget_micro: int | None) -> int:
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO runs (command, started_at, pid, roots, budget_micro) VALUES (?, ?, ?, ?, ?)",
                (command, utc_now(), pid, json.dumps(list(roots)), budget_micro),
            )
            return int(cursor.lastrowid or 0)

    def finish_run(self, run_id: int, status: str, exit_code: int, counts: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE runs SET finished_at = ?, status = ?, exit_code = ?, counts = ? WHERE id = ?",
                (utc_now(), status, exit_code, json.dumps(counts), run_id),
            )

    def close_abandoned_runs(self) -> int:
        """Runs still marked running were killed: the run lock says no other is alive."""
        with self._write() as conn:
            return conn.execute("UPDATE runs SET status = 'killed' WHERE status = 'running'").rowcount

    # -- the ledger -----------------------------------------------------------------------------

    def settle_orphaned_reservations(self) -> int:
        """Reservations left by a run that died count as charges: we may have been billed."""
        with self._write() as conn:
            return conn.execute(
                "UPDATE ledger SET state = 'charged', outcome = 'orphaned', settled_at = ? "
                "WHERE state = 'reserved'",
                (utc_now(),),
            ).rowcount

    def day_usage(self, day: str) -> tuple[int, int]:
        """(charged, reserved) micro-neurons for a UTC day (totals kept by triggers on ``ledger``)."""
        rows = self._read("SELECT charged, reserved FROM ledger_totals WHERE day = ?", (day,))
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    def day_exhausted(self, day: str) -> str | None:
        """The reason the day was marked exhausted by a quota error, or None."""
        value = self._scalar("SELECT exhausted_reason FROM ledger_days WHERE day = ?", (day,))
        return str(value) if value is not None else None

    def mark_day_exhausted(self, day: str, reason: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO ledger_days (day, exhausted_at, exhausted_reason) VALUES (?, ?, ?) "
                "ON CONFLICT(day) DO UPDATE SET exhausted_at = excluded.exhausted_at, "
                "exhausted_reason = excluded.exhausted_reason",
                (day, utc_now(), reason),
            )

    def reserve(
        self, *, day: str, cost: int, limit: int, run_id: int | None, sha256: str | None
    ) -> int | None:
        """Atomically reserve ``cost`` micro-neurons on ``day`` if it stays within ``limit``.

        Returns the reservation id, or None when the day is exhausted or the budget is full.
        The check and the insert share one IMMEDIATE transaction, so concurrent reservers (in
        this process or another) can never together pass the limit.
        """
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM ledger_days WHERE day = ?", (day,)).fetchone():
                return None
            row = conn.execute(
                "SELECT charged + reserved FROM ledger_totals WHERE day = ?", (day,)
            ).fetchone()
            used = row[0] if row else 0
            if used + cost > limit:
                return None
            cursor = conn.execute(
                "INSERT INTO ledger (day, run_id, sha256, micro_neurons, state, created_at) "
                "VALUES (?, ?, ?, ?, 'reserved', ?)",
                (day, run_id, sha256, cost, utc_now()),
            )
            return int(cursor.lastrowid or 0)

    def settle(
        self, reservation_id: int, *, state: str, outcome: str, micro_neurons: int | None = None
    ) -> None:
        """Turn a reservation into a charge or release it (outside a classification)."""
        with self._write() as conn:
            self._settle(conn, reservation_id, state, outcome, micro_neurons)

    @staticmethod
    def _settle(
        conn: sqlite3.Connection, reservation_id: int, state: str, outcome: str, micro_neurons: int | None
    ) -> None:
        conn.execute(
            "UPDATE ledger SET state = ?, outcome = ?, settled_at = ?, "
            "micro_neurons = coalesce(?, micro_neurons) WHERE id = ? AND state = 'reserved'",
            (state, outcome, utc_now(), micro_neurons, reservation_id),
        )

    # -- images and classifications --------------------------------------------------------------

    def pending_images(
        self, model: str, roots: Sequence[str] = (), *, after: str = "", limit: int = PAGE
    ) -> list[PendingImage]:
        """Pending images under ``roots`` (all when empty), sha256 order from ``after``, one path each."""
        where, params = _under_roots(roots)
        rows = self._read(
            "SELECT i.sha256, (SELECT min(f.path) FROM files f WHERE f.sha256 = i.sha256 "
            f"AND f.missing = 0 AND {where}) AS path, i.size, i.attempts FROM images i "
            "WHERE i.status = 'pending' AND i.sha256 > ? AND path IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM classifications c WHERE c.sha256 = i.sha256 AND c.model = ?) "
            "ORDER BY i.sha256 LIMIT ?",
            (*params, after, model, limit),
        )
        return [PendingImage(r[0], from_db_path(r[1]), r[2], r[3]) for r in rows]

    def count_pending(self, roots: Sequence[str] = ()) -> int:
        where, params = _under_roots(roots)
        return int(
            self._scalar(
                "SELECT count(*) FROM images i WHERE i.status = 'pending' AND EXISTS "
                f"(SELECT 1 FROM files f WHERE f.sha256 = i.sha256 AND f.missing = 0 AND {where})",
                params,
            )
        )

    @staticmethod
    def _set_upload(conn: sqlite3.Connection, sha256: str, upload: UploadInfo) -> None:
        conn.execute(
            "UPDATE images SET upload_sha256 = ?, upload_bytes = ?, format = ?, width = ?, "
            "height = ? WHERE sha256 = ?",
            (upload.sha256, upload.size, upload.format, upload.width, upload.height, sha256),
        )

    def classification_for_upload(self, upload_sha256: str, model: str) -> str | None:
        """The sha256 of a classified image whose upload bytes were identical, if any."""
        value = self._scalar(
            "SELECT c.sha256 FROM images i JOIN classifications c ON c.sha256 = i.sha256 "
            "WHERE i.upload_sha256 = ? AND c.model = ? LIMIT 1",
            (upload_sha256, model),
        )
        return str(value) if value is not None else None

    def record_classification(
        self,
        *,
        sha256: str,
        model: str,
        labels: Sequence[LabelScore],
        micro_neurons: int,
        cache_status: str | None,
        run_id: int | None,
        reservation_id: int | None,
        upload: UploadInfo | None = None,
    ) -> None:
        """Labels, image status, upload details and the ledger charge, in one transaction."""
        now = utc_now()
        ordered = sorted(labels, key=lambda item: item.score, reverse=True)
        top = ordered[0] if ordered else None
        with self._write() as conn:
            if reservation_id is not None:
                outcome = "hit" if cache_status == "HIT" else "ok"
                self._settle(conn, reservation_id, "charged", outcome, micro_neurons)
            conn.execute(
                "INSERT OR REPLACE INTO classifications (sha256, model, labels, top_label, top_score, "
                "micro_neurons, cache_status, classified_at, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sha256,
                    model,
                    json.dumps([{"label": x.label, "score": x.score} for x in ordered]),
                    top.label if top else None,
                    top.score if top else None,
                    micro_neurons,
                    cache_status,
                    now,
                    run_id,
                ),
            )
            conn.execute("DELETE FROM labels WHERE sha256 = ? AND model = ?", (sha256, model))
            conn.executemany(
                "INSERT OR REPLACE INTO labels (sha256, model, label, score, rank) VALUES (?, ?, ?, ?, ?)",
                ((sha256, model, x.label, x.score, rank) for rank, x in enumerate(ordered, 1)),
            )
            conn.execute(
                "UPDATE images SET status = 'done', error = NULL, attempts = attempts + 1, "
                "updated_at = ? WHERE sha256 = ?",
                (now, sha256),
            )
            if upload is not None:
                self._set_upload(conn, sha256, upload)

    def copy_classification(
        self,
        *,
        source_sha256: str,
        sha256: str,
        model: str,
        run_id: int | None,
        upload: UploadInfo | None = None,
    ) -> bool:
        """Reuse the answer of an identical upload for another image, at no cost."""
        rows = self._read(
            "SELECT labels FROM classifications WHERE sha256 = ? AND model = ?", (source_sha256, model)
        )
        if not rows:
            return False
        labels = [LabelScore(x["label"], x["score"]) for x in json.loads(rows[0][0])]
        self.record_classification(
            sha256=sha256,
            model=model,
            labels=labels,
            micro_neurons=0,
            cache_status="LOCAL",
            run_id=run_id,
            reservation_id=None,
            upload=upload,
        )
        return True

    def mark_failed(self, sha256: str, reason: str, *, reservation_id: int | None = None) -> None:
        with self._write() as conn:
            if reservation_id is not None:
                self._settle(conn, reservation_id, "released", "failed", None)
            conn.execute(
                "UPDATE images SET status = 'failed', error = ?, attempts = attempts + 1, "
                "updated_at = ? WHERE sha256 = ?",
                (reason, utc_now(), sha256),
            )

    def note_attempt(self, sha256: str, error: str) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE images SET attempts = attempts + 1, error = ?, updated_at = ? WHERE sha256 = ?",
                (error, utc_now(), sha256),
            )

    def counts(self) -> dict[str, int]:
        rows = self._read(
            "SELECT (SELECT count(*) FROM files), (SELECT count(*) FROM files WHERE missing = 1), "
            "(SELECT count(*) FROM images), "
            "(SELECT count(*) FROM images WHERE status = 'pending'), "
            "(SELECT count(*) FROM images WHERE status = 'done'), "
            "(SELECT count(*) FROM images WHERE status = 'failed'), "
            "(SELECT count(*) FROM classifications)"
        )
        keys = ("files", "missing_files", "images", "pending", "done", "failed", "classifications")
        return dict(zip(keys, (int(v) for v in rows[0]), strict=True))

    # -- reports: status, export, search, labels ---------------------------------------------------

    def _stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[sqlite3.Row]:
        """Rows one batch at a time from one cursor: memory stays flat however many match."""
        with _converted(self.path):
            cursor = self.conn.execute(sql, params)
            cursor.row_factory = sqlite3.Row
            try:
                while batch := cursor.fetchmany(PAGE):
                    yield from batch
            finally:
                cursor.close()

    def day_totals(self, first_day: str, last_day: str) -> list[DayTotal]:
        """Charged and reserved micro-neurons per UTC day from ``first_day`` to ``last_day``."""
        rows = self._read(
            "SELECT day, coalesce(sum(CASE WHEN state = 'charged' THEN micro_neurons END), 0), "
            "coalesce(sum(CASE WHEN state = 'reserved' THEN micro_neurons END), 0) "
            "FROM ledger WHERE day BETWEEN ? AND ? GROUP BY day ORDER BY day",
            (first_day, last_day),
        )
        return [DayTotal(r[0], int(r[1]), int(r[2])) for r in rows]

    def failure_counts(self) -> list[tuple[str, int]]:
        """Failed images by reason, most frequent first."""
        rows = self._read(
            "SELECT coalesce(error, 'unknown') AS reason, count(*) AS n FROM images "
            "WHERE status = 'failed' GROUP BY reason ORDER BY n DESC, reason"
        )
        return [(str(r[0]), int(r[1])) for r in rows]

    def recent_runs(self, limit: int) -> list[RunRecord]:
        """The last ``limit`` runs, newest first."""
        rows = self._read(
            "SELECT id, command, started_at, finished_at, roots, status, exit_code, counts "
            "FROM runs ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [
            RunRecord(
                id=r["id"],
                command=r["command"],
                started_at=r["started_at"],
                finished_at=r["finished_at"],
                roots=tuple(json.loads(r["roots"] or "[]")),
                status=r["status"],
                exit_code=r["exit_code"],
                counts=json.loads(r["counts"]) if r["counts"] else {},
            )
            for r in rows
        ]

    def file_rows_page(self, model: str, *, after: str = "", limit: int = PAGE) -> list[FileLabels]:
        """Present files in path order after ``after``, each with its image's labels for ``model``."""
        rows = self._read(
            "SELECT f.path, f.dir, f.sha256, i.status, i.error, c.top_label, c.top_score, c.labels, "
            "c.micro_neurons, c.classified_at FROM files f "
            "LEFT JOIN images i ON i.sha256 = f.sha256 "
            "LEFT JOIN classifications c ON c.sha256 = f.sha256 AND c.model = ? "
            "WHERE f.missing = 0 AND f.path > ? ORDER BY f.path LIMIT ?",
            (model, to_db_path(after), limit),
        )
        return [
            FileLabels(
                path=from_db_path(r["path"]),
                dir=from_db_path(r["dir"]),
                sha256=r["sha256"],
                status=r["status"],
                error=r["error"],
                top_label=r["top_label"],
                top_score=r["top_score"],
                labels=tuple(LabelScore(x["label"], x["score"]) for x in json.loads(r["labels"] or "[]")),
                micro_neurons=r["micro_neurons"],
                classified_at=r["classified_at"],
            )
            for r in rows
        ]

    def iter_file_rows(self, model: str, *, page: int = PAGE) -> Iterator[FileLabels]:
        """Every present file with its labels, paged by path (keyset): constant memory, no long read."""
        after = ""
        while rows := self.file_rows_page(model, after=after, limit=page):
            yield from rows
            after = rows[-1].path

    def sibling_paths(self, directory: str, prefix: str) -> list[str]:
        """Present files in ``directory`` whose path starts with ``prefix`` (sidecar name clashes)."""
        rows = self._read(
            "SELECT path FROM files WHERE dir = ? AND missing = 0 AND substr(CAST(path AS BLOB), 1, ?) = ?",
            (to_db_path(directory), len(os.fsencode(prefix)), os.fsencode(prefix)),
        )
        return [from_db_path(r[0]) for r in rows]

    def iter_paths_with_label(
        self, model: str, label: str, *, min_score: float = 0.0, pattern: bool = False
    ) -> Iterator[str]:
        """Present paths whose image carries ``label`` (any case) at ``min_score`` or more.

        With ``pattern``, ``label`` is a LIKE pattern (``%`` and ``_``, ``\\`` escapes).
        """
        match = "l.label LIKE ? ESCAPE '\\'" if pattern else "l.label = ?"
        for row in self._stream(
            "SELECT DISTINCT f.path FROM labels l JOIN files f ON f.sha256 = l.sha256 "
            f"WHERE l.model = ? AND {match} AND l.score >= ? AND f.missing = 0 ORDER BY f.path",
            (model, label, min_score),
        ):
            yield from_db_path(row[0])

    def top_label_counts(self, model: str, limit: int) -> list[LabelCount]:
        """The most frequent top labels: distinct images and present files carrying each."""
        rows = self._read(
            "SELECT min(c.top_label) AS label, count(DISTINCT c.sha256) AS images, count(*) AS files "
            "FROM classifications c JOIN files f ON f.sha256 = c.sha256 AND f.missing = 0 "
            "WHERE c.model = ? AND c.top_label IS NOT NULL "
            "GROUP BY c.top_label COLLATE NOCASE ORDER BY images DESC, files DESC, label LIMIT ?",
            (model, limit),
        )
        return [LabelCount(str(r[0]), int(r[1]), int(r[2])) for r in rows]


# Records returned by the report queries above.


@dataclass(frozen=True, slots=True)
class DayTotal:
    day: str
    charged: int  # micro-neurons
    reserved: int


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    command: str
    started_at: str
    finished_at: str | None
    roots: tuple[str, ...]
    status: str
    exit_code: int | None
    counts: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FileLabels:
    """One present file and what its image was classified as (None: not classified yet)."""

    path: str
    dir: str
    sha256: str | None
    status: str | None
    error: str | None
    top_label: str | None
    top_score: float | None
    labels: tuple[LabelScore, ...]  # highest score first
    micro_neurons: int | None
    classified_at: str | None


@dataclass(frozen=True, slots=True)
class LabelCount:
    label: str
    images: int
    files: int
