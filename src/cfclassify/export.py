"""``cfclassify export``: one row per file path as CSV or JSON Lines, or XMP sidecars beside images.

Rows come from ``Store.iter_file_rows``, which pages through ``files`` by path (keyset
pagination), and each row is written as soon as it is read: memory does not grow with the
archive, and no read transaction stays open while the output is slow to drain.

Only files present at the last scan are exported (a missing file has no path to tag). Every path
gets its own row, duplicates included: ``neurons`` is what its image cost, so two paths with the
same bytes show the same figure and a sum over paths counts that image twice.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from .budget import MICRO
from .config import Settings
from .store import FileLabels, Store
from .walker import display_path
from .xmp import Outcome, write_sidecar

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "path", "sha256", "status", "error", "top_label", "top_score", "labels", "neurons", "classified_at",
)  # fmt: skip


def row_dict(row: FileLabels) -> dict[str, Any]:
    """A file's row as plain data: the JSON Lines record, and the CSV row before flattening."""
    return {
        "path": display_path(row.path),  # text: a name that is not UTF-8 shows its bytes as \xNN
        "sha256": row.sha256,
        "status": row.status,
        "error": row.error,
        "top_label": row.top_label,
        "top_score": row.top_score,
        "labels": [{"label": x.label, "score": x.score} for x in row.labels],
        "neurons": None if row.micro_neurons is None else row.micro_neurons / MICRO,
        "classified_at": row.classified_at,
    }


def write_jsonl(rows: Iterable[FileLabels], out: IO[str]) -> int:
    """One JSON object per line; returns the number of rows."""
    count = 0
    for row in rows:
        out.write(json.dumps(row_dict(row), ensure_ascii=False) + "\n")
        count += 1
    return count


def write_csv(rows: Iterable[FileLabels], out: IO[str]) -> int:
    """A header, then one row per path; ``labels`` reads ``TABBY=0.81; TIGER CAT=0.12``."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    count = 0
    for row in rows:
        data = row_dict(row)
        data["labels"] = "; ".join(f"{x.label}={x.score:g}" for x in row.labels)
        writer.writerow("" if data[column] is None else data[column] for column in CSV_COLUMNS)
        count += 1
    return count


@dataclass
class XmpReport:
    counts: dict[str, int] = field(default_factory=lambda: {o.value: 0 for o in Outcome})
    not_classified: int = 0
    name_clashes: int = 0
    failed: int = 0  # could not be written (permissions, disk full): the only errors

    def as_dict(self) -> dict[str, int]:
        return {
            **self.counts,
            "not_classified": self.not_classified,
            "name_clashes": self.name_clashes,
            "failed": self.failed,
        }


def export_xmp(
    store: Store, settings: Settings, *, min_score: float | None = None, force: bool = False
) -> XmpReport:
    """Write or merge the sidecar of every classified file (rules in ``xmp.py``); never the image."""
    threshold = settings.xmp.min_score if min_score is None else min_score
    naming = settings.xmp.sidecar_name
    report = XmpReport()
    for row in store.iter_file_rows(settings.cloudflare.model):
        if row.status != "done" or row.classified_at is None:
            report.not_classified += 1
            continue
        if naming == "replace" and (other := _sidecar_clash(store, row)):
            # photo.jpg and photo.png would share photo.xmp: tagging either would mislabel the other.
            log.warning(
                '%s: not written: %s shares its sidecar name; use xmp.sidecar_name = "append"',
                row.path,
                other,
            )
            report.name_clashes += 1
            continue
        labels = [x.label for x in row.labels if x.score >= threshold]
        try:
            outcome, target = write_sidecar(
                row.path, labels, root_tag=settings.xmp.root_tag, naming=naming, force=force
            )
        except OSError as exc:
            log.warning("%s: cannot write its sidecar: %s", row.path, exc.strerror or exc)
            report.failed += 1
            continue
        if outcome is Outcome.UNREADABLE:
            log.warning("%s: left alone: not XMP we can merge into (--force replaces it)", target)
        report.counts[outcome.value] += 1
    return report


def _sidecar_clash(store: Store, row: FileLabels) -> str | None:
    stem = os.path.splitext(row.path)[0]
    for path in store.sibling_paths(row.dir, stem + "."):
        if path != row.path and os.path.splitext(path)[0] == stem:
            return path
    return None
