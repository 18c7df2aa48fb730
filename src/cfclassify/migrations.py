"""The database schema, as numbered migrations run once each by ``Store`` when it opens.

``sqlite_utils.Migrations`` records each applied migration in ``_sqlite_migrations`` and runs it
inside a transaction with that record. Rules: never edit a migration that has shipped, never
reuse a number; a schema change is a new function at the bottom.

Tables (names chosen to read well in ``datasette cfclassify.db``):

- ``files``: one row per path seen: its image (sha256), size, mtime_ns, inode and device for the
  stat cache, the folder it is in (for one-query-per-folder lookups), when it was first and last
  seen, and whether it is missing now.
- ``images``: one row per distinct content (sha256): size, format, dimensions, status
  (``pending`` / ``done`` / ``failed``), error, attempts, and the SHA-256 of the prepared upload
  (identical uploads are sent once).
- ``classifications``: one row per image and model: all labels as JSON, the top label and score,
  micro-neurons charged, cache status (``MISS``, ``HIT``, or ``LOCAL`` for an answer reused from
  an identical upload), when, and by which run.
- ``labels``: one row per image, model and label, for search and facets.
- ``ledger``: one row per reservation, in micro-neurons: ``reserved`` then ``charged`` or
  ``released``, with its UTC day, run and outcome. ``ledger_days`` marks a day exhausted by a
  quota error.
- ``runs``: each command run: start, end, roots, counts, exit code.
- views ``file_labels`` (path → top label and all labels) and ``file_label_rows`` (path, label,
  score: one row per pair, handy for facets).
"""

from __future__ import annotations

import sqlite3

from sqlite_utils import Database, Migrations

migrations = Migrations("cfclassify")


@migrations(name="0001_initial")
def m0001_initial(db: Database) -> None:
    _run_statements(
        db,
        """
        CREATE TABLE files (
            path TEXT PRIMARY KEY,
            dir TEXT NOT NULL,
            root TEXT NOT NULL,
            sha256 TEXT,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            inode INTEGER NOT NULL,
            device INTEGER NOT NULL,
            first_seen TEXT NOT NULL,
            last_seen TEXT NOT NULL,
            missing INTEGER NOT NULL DEFAULT 0,
            error TEXT
        );
        CREATE INDEX files_dir ON files(dir);
        CREATE INDEX files_sha256 ON files(sha256);
        CREATE INDEX files_inode ON files(device, inode);

        CREATE TABLE images (
            sha256 TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            format TEXT,
            width INTEGER,
            height INTEGER,
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'done', 'failed')),
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            upload_sha256 TEXT,
            upload_bytes INTEGER,
            first_seen TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX images_status ON images(status);
        CREATE INDEX images_upload ON images(upload_sha256);

        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            command TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            pid INTEGER,
            roots TEXT,
            budget_micro INTEGER,
            status TEXT NOT NULL DEFAULT 'running',
            exit_code INTEGER,
            counts TEXT
        );

        CREATE TABLE classifications (
            sha256 TEXT NOT NULL REFERENCES images(sha256),
            model TEXT NOT NULL,
            labels TEXT NOT NULL,
            top_label TEXT,
            top_score REAL,
            micro_neurons INTEGER NOT NULL,
            cache_status TEXT,
            classified_at TEXT NOT NULL,
            run_id INTEGER REFERENCES runs(id),
            PRIMARY KEY (sha256, model)
        );
        CREATE INDEX classifications_top ON classifications(top_label);

        CREATE TABLE labels (
            sha256 TEXT NOT NULL,
            model TEXT NOT NULL,
            label TEXT NOT NULL COLLATE NOCASE,
            score REAL NOT NULL,
            rank INTEGER NOT NULL,
            PRIMARY KEY (sha256, model, label)
        );
        CREATE INDEX labels_label ON labels(label COLLATE NOCASE, score);

        CREATE TABLE ledger (
            id INTEGER PRIMARY KEY,
            day TEXT NOT NULL,
            run_id INTEGER REFERENCES runs(id),
            sha256 TEXT,
            micro_neurons INTEGER NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('reserved', 'charged', 'released')),
            outcome TEXT,
            created_at TEXT NOT NULL,
            settled_at TEXT
        );
        CREATE INDEX ledger_day_state ON ledger(day, state);

        CREATE TABLE ledger_days (
            day TEXT PRIMARY KEY,
            exhausted_at TEXT,
            exhausted_reason TEXT
        );

        CREATE VIEW file_labels AS
            SELECT f.path, f.sha256, f.missing, i.status, i.error,
                   c.model, c.top_label, c.top_score, c.labels, c.micro_neurons,
                   c.cache_status, c.classified_at
            FROM files f
            LEFT JOIN images i ON i.sha256 = f.sha256
            LEFT JOIN classifications c ON c.sha256 = f.sha256;

        CREATE VIEW file_label_rows AS
            SELECT f.path, l.label, l.score, l.rank, l.model
            FROM files f
            JOIN labels l ON l.sha256 = f.sha256
            WHERE f.missing = 0;
        """,
    )


def _run_statements(db: Database, script: str) -> None:
    # executescript() would COMMIT first and so escape the migration's transaction. Statements
    # are cut where sqlite3 says one is complete, so triggers (with ";" inside) stay whole.
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    if statement.strip():
        db.execute(statement)


@migrations(name="0002_ledger_day_totals")
def m0002_ledger_day_totals(db: Database) -> None:
    """Running charged / reserved totals per UTC day, kept by triggers on ``ledger``.

    Checking the budget used to sum every ledger row of the day, so each reservation got slower as
    the day filled (6 ms at 40,000 rows). The triggers keep the totals in the same transaction as
    the row change, so the check reads one row however full the day is.
    """
    _run_statements(
        db,
        """
        CREATE TABLE ledger_totals (
            day TEXT PRIMARY KEY,
            charged INTEGER NOT NULL DEFAULT 0,
            reserved INTEGER NOT NULL DEFAULT 0
        );
        INSERT INTO ledger_totals (day, charged, reserved)
            SELECT day,
                   coalesce(sum(CASE WHEN state = 'charged' THEN micro_neurons END), 0),
                   coalesce(sum(CASE WHEN state = 'reserved' THEN micro_neurons END), 0)
            FROM ledger GROUP BY day;
        CREATE TRIGGER ledger_totals_insert AFTER INSERT ON ledger BEGIN
            INSERT INTO ledger_totals (day) VALUES (NEW.day) ON CONFLICT(day) DO NOTHING;
            UPDATE ledger_totals SET
                charged = charged + CASE WHEN NEW.state = 'charged' THEN NEW.micro_neurons ELSE 0 END,
                reserved = reserved + CASE WHEN NEW.state = 'reserved' THEN NEW.micro_neurons ELSE 0 END
            WHERE day = NEW.day;
        END;
        CREATE TRIGGER ledger_totals_update AFTER UPDATE OF state, micro_neurons, day ON ledger BEGIN
            UPDATE ledger_totals SET
                charged = charged - CASE WHEN OLD.state = 'charged' THEN OLD.micro_neurons ELSE 0 END,
                reserved = reserved - CASE WHEN OLD.state = 'reserved' THEN OLD.micro_neurons ELSE 0 END
            WHERE day = OLD.day;
            INSERT INTO ledger_totals (day) VALUES (NEW.day) ON CONFLICT(day) DO NOTHING;
            UPDATE ledger_totals SET
                charged = charged + CASE WHEN NEW.state = 'charged' THEN NEW.micro_neurons ELSE 0 END,
                reserved = reserved + CASE WHEN NEW.state = 'reserved' THEN NEW.micro_neurons ELSE 0 END
            WHERE day = NEW.day;
        END;
        CREATE TRIGGER ledger_totals_delete AFTER DELETE ON ledger BEGIN
            UPDATE ledger_totals SET
                charged = charged - CASE WHEN OLD.state = 'charged' THEN OLD.micro_neurons ELSE 0 END,
                reserved = reserved - CASE WHEN OLD.state = 'reserved' THEN OLD.micro_neurons ELSE 0 END
            WHERE day = OLD.day;
        END;
        """,
    )
