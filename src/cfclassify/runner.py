"""One ``cfclassify run``: take the run lock, scan, classify under the budget, record the run.

The order matters for the promises: the lock first (one run per database), then reservations
left by a run that died are settled as charges (we may have been billed for them), then the
scan brings the database up to date with the roots, then the pipeline spends. The run's row in
``runs`` gets its counts and exit code whatever happens; a killed run's row is found still
``running`` by the next run and marked ``killed``.

SIGINT / SIGTERM: the first asks the pipeline to stop (in-flight requests are recorded, bounded
by ``run.drain_timeout``) and the run exits 130 / 143; a second one ends the process at once
(its open reservations stay counted, as for kill -9).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from .budget import MICRO, Ledger, to_micro, utc_clock
from .client import WorkersAIClient
from .config import Settings
from .errors import EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, CfclassifyError
from .pipeline import Pipeline, Progress, RunReport
from .runlock import run_lock
from .scan import ScanReport, scan
from .store import Store

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    exit_code: int
    scan: ScanReport
    run: RunReport | None = None
    estimate: dict[str, Any] | None = None
    usage: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"exit_code": self.exit_code, "scan": self.scan.as_dict(), "today": self.usage}
        if self.run is not None:
            data["run"] = self.run.as_dict()
        if self.estimate is not None:
            data["dry_run"] = self.estimate
        return data


def run(
    settings: Settings,
    roots: Sequence[str],
    *,
    dry_run: bool = False,
    budget: float | None = None,
    max_images: int | None = None,
    scan_progress: Callable[[int], None] | None = None,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = utc_clock,
    transport: httpx.AsyncBaseTransport | None = None,
    handle_signals: bool = True,
) -> RunResult:
    """Scan ``roots`` and classify what is new, within the budget. Never raises for a bad image."""
    if not dry_run:
        settings.cloudflare.require_credentials()  # before any work: a missing token is exit 1
    with run_lock(settings.db), Store(settings.db) as store:
        abandoned = store.close_abandoned_runs()
        orphans = store.settle_orphaned_reservations()
        if abandoned or orphans:
            log.warning("a previous run was killed: %d reservation(s) it left are counted as spent", orphans)
        budget_micro = to_micro(budget) if budget is not None else None
        run_id = store.start_run("dry-run" if dry_run else "run", roots, os.getpid(), budget_micro)
        ledger = Ledger(
            store,
            settings.budget,
            settings.pricing,
            run_id=run_id,
            budget_override=budget,
            max_images=max_images,
            clock=clock,
        )
        result: RunResult | None = None
        try:
            scan_report = scan(roots, settings.walk, store, progress=scan_progress)
            if dry_run:
                result = RunResult(EXIT_OK, scan_report, estimate=_estimate(store, ledger, roots))
            else:
                report = asyncio.run(
                    _classify(store, settings, ledger, roots, run_id, progress, transport, handle_signals)
                )
                result = RunResult(report.exit_code, scan_report, run=report)
            result.usage = ledger.usage().as_dict()
            return result
        except CfclassifyError as exc:
            store.finish_run(run_id, "failed", exc.exit_code, {"error": str(exc)})
            raise
        finally:
            if result is not None:
                status = result.run.stop_reason if result.run else "dry-run"
                store.finish_run(run_id, status, result.exit_code, result.as_dict())


async def _classify(
    store: Store,
    settings: Settings,
    ledger: Ledger,
    roots: Sequence[str],
    run_id: int,
    progress: Progress | None,
    transport: httpx.AsyncBaseTransport | None,
    handle_signals: bool,
) -> RunReport:
    async with WorkersAIClient(settings.cloudflare, settings.run, transport=transport) as client:
        pipeline = Pipeline(store, settings, client, ledger, roots=roots, run_id=run_id, progress=progress)
        with _signals(pipeline) if handle_signals else contextlib.nullcontext():
            return await pipeline.run()


@contextlib.contextmanager
def _signals(pipeline: Pipeline) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    codes = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM}

    def on_signal(signum: signal.Signals) -> None:
        if pipeline.stopping.is_set() and pipeline.stop_reason == "interrupted":
            log.warning("second %s: aborting now; open reservations stay counted", signum.name)
            os._exit(codes[signum])
        log.warning("%s: finishing the requests in flight, then stopping (again to abort)", signum.name)
        pipeline.request_stop("interrupted", codes[signum], f"interrupted by {signum.name}")

    for signum in codes:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield
    finally:
        for signum in codes:
            loop.remove_signal_handler(signum)


def _estimate(store: Store, ledger: Ledger, roots: Sequence[str]) -> dict[str, Any]:
    """What a real run would send, and what it would cost, without calling anything."""
    pending = store.count_pending([os.path.abspath(r) for r in roots])
    usage = ledger.usage()
    spent = usage.charged + usage.reserved
    cost = pending * ledger.cost
    return {
        "new_images": pending,
        "neurons": cost / MICRO,
        "images_today": min(pending, usage.left // ledger.cost),
        "images_per_day": ledger.images_per_day(),
        "days_needed": ledger.days_needed(pending),
        # On Workers Paid, if everything went out today: only neurons past the free allocation cost.
        "usd_if_sent_today": round(ledger.usd_for(spent + cost) - ledger.usd_for(spent), 6),
    }
