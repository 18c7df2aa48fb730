"""What ``status``, ``search`` and ``labels`` show: pure functions over Store queries and the Ledger.

Figures come from the same ledger rows the budget is enforced with, so ``status`` cannot
disagree with what a run will allow. Money follows SPEC: a day costs
``max(0, neurons - free allocation) * usd_per_thousand / 1000`` on Workers Paid (``Ledger.usd_for``),
and the month is the sum of its days (the free allocation is per day, not per month). A day's
neurons are what the ledger counts as spent: charges, plus reservations still open (they may yet
be billed; a run that died has its reservations counted as charges by the next run).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .budget import MICRO, DayUsage, Ledger, utc_clock
from .config import Settings
from .store import LabelCount, RunRecord, Store

RECENT_RUNS = 5


@dataclass(frozen=True, slots=True)
class StatusReport:
    today: DayUsage
    resets_in_seconds: int
    usd_today: float
    month: str  # YYYY-MM, UTC
    month_micro_neurons: int
    usd_month: float
    images_left: int
    images_per_day: int
    days_needed: int  # -1: never (the budget cannot pay for one image)
    counts: dict[str, int]
    failures: list[tuple[str, int]]
    runs: list[RunRecord]

    def as_dict(self) -> dict[str, Any]:
        today = self.today
        return {
            "today": {
                **today.as_dict(),
                "resets_in_seconds": self.resets_in_seconds,
                "usd": self.usd_today,
            },
            "month": {
                "month": self.month,
                "neurons": self.month_micro_neurons / MICRO,
                "usd": self.usd_month,
            },
            "images": {
                "left": self.images_left,
                "per_day": self.images_per_day,
                "days_needed": self.days_needed,
                **self.counts,
            },
            "failures": dict(self.failures),
            "runs": [_run_dict(run) for run in self.runs],
        }


def status(
    store: Store,
    settings: Settings,
    *,
    clock: Callable[[], datetime] = utc_clock,
    recent_runs: int = RECENT_RUNS,
) -> StatusReport:
    """Today's budget, what is left to do and what it costs, failures and the last runs."""
    ledger = Ledger(store, settings.budget, settings.pricing, clock=clock)
    today = ledger.usage()
    month_days = store.day_totals(today.day[:8] + "01", today.day)
    left = store.count_pending()
    return StatusReport(
        today=today,
        resets_in_seconds=max(0, int((today.resets_at - clock()).total_seconds())),
        usd_today=round(ledger.usd_for(today.charged + today.reserved), 6),
        month=today.day[:7],
        month_micro_neurons=sum(d.charged + d.reserved for d in month_days),
        usd_month=round(sum(ledger.usd_for(d.charged + d.reserved) for d in month_days), 6),
        images_left=left,
        images_per_day=ledger.images_per_day(),
        days_needed=ledger.days_needed(left),
        counts=store.counts(),
        failures=store.failure_counts(),
        runs=store.recent_runs(recent_runs),
    )


def render_status(report: StatusReport) -> list[str]:
    """The human-readable ``status``, one line per item."""
    t = report.as_dict()["today"]
    hours, minutes = divmod(report.resets_in_seconds // 60, 60)
    exhausted = f" (quota used up: {t['exhausted']})" if t["exhausted"] else ""
    c = report.counts
    days = "never (the budget cannot pay for one image)" if report.days_needed < 0 else report.days_needed
    lines = [
        f"today ({t['day']} UTC): {t['charged_neurons']:.6f} neurons charged, "
        f"{t['reserved_neurons']:.6f} reserved, {t['left_neurons']:.6f} left of {t['limit_neurons']:g}"
        f"{exhausted}; resets {t['resets_at']} (in {hours}h {minutes:02d}m)",
        f"images: {c['done']} classified, {c['failed']} failed, {report.images_left} left to classify "
        f"({c['files']} files, {c['missing_files']} missing); {report.images_per_day} a day at this "
        f"budget; days to finish: {days}",
        f"cost on Workers Paid: ${report.usd_today:.4f} today, ${report.usd_month:.4f} this month "
        f"({report.month}, {report.month_micro_neurons / MICRO:.6f} neurons)",
    ]
    lines += [f"  failed: {count} x {reason}" for reason, count in report.failures]
    if report.runs:
        lines.append("last runs:")
    for run in report.runs:
        data = _run_dict(run)
        done = (
            f" ({data['classified']} classified, {data['failed']} failed)"
            if data["classified"] is not None
            else ""
        )
        code = "still running" if run.exit_code is None else f"exit {run.exit_code}"
        lines.append(
            f"  #{run.id} {run.command} {' '.join(run.roots)}: started {run.started_at}, "
            f"{run.status}, {code}{done}"
        )
    return lines


def _run_dict(run: RunRecord) -> dict[str, Any]:
    counts = run.counts.get("run") or {}
    return {
        "id": run.id,
        "command": run.command,
        "roots": list(run.roots),
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "status": run.status,
        "exit_code": run.exit_code,
        "classified": counts.get("classified"),
        "failed": counts.get("failed"),
    }


def label_query(label: str) -> tuple[str, bool]:
    """``search``'s LABEL as (text, is_pattern): ``*`` and ``?`` make a LIKE pattern, else exact."""
    if not re.search(r"[*?]", label):
        return label.strip(), False
    escaped = re.sub(r"([\\%_])", r"\\\1", label.strip())
    return escaped.replace("*", "%").replace("?", "_"), True


def search(store: Store, settings: Settings, label: str, *, min_score: float = 0.0) -> Iterator[str]:
    """Paths (present files, path order) whose image has ``label``, any case, at ``min_score``+."""
    text, pattern = label_query(label)
    return store.iter_paths_with_label(settings.cloudflare.model, text, min_score=min_score, pattern=pattern)


def top_labels(store: Store, settings: Settings, top: int) -> list[LabelCount]:
    """The ``top`` most frequent top labels, with how many images and files carry each."""
    return store.top_label_counts(settings.cloudflare.model, top)
