"""The classify stage of ``cfclassify run``: pending images → prepare → reserve → classify → store.

Three kinds of asyncio task joined by bounded queues, so memory holds a few uploads, never the
archive:

- one **feeder** pages through the database's pending images under the run's roots;
- **preparers** (one per core) turn each file into its upload on a thread pool (Pillow releases
  the GIL) and fail the undecodable ones at no cost;
- ``concurrency`` **senders** each reserve the image's neurons, send it, and commit the answer
  with the charge before taking the next image.

Identical uploads (byte-identical files are one image already; files whose decoded pixels give
the same upload bytes are caught here) are sent once: a sender that finds its upload's SHA-256
in flight waits for it, then reuses the answer at no cost.

Stopping: any sender can end the run (budget spent, quota error, retries exhausted, a fatal
error, a signal). The feeder and preparers stop taking work; senders finish and record the
request they have in flight (bounded by ``run.drain_timeout``); what was queued stays pending.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from .budget import Ledger, Refusal, Reservation
from .client import Classification, WorkersAIClient
from .config import Settings
from .errors import (
    EXIT_FATAL,
    EXIT_OK,
    EXIT_TEMPFAIL,
    ApiError,
    BadImage,
    FatalApiError,
    ImageError,
    OutcomeUnknown,
    PayloadTooLarge,
    QuotaExceeded,
    RetryableApiError,
)
from .hashing import sha256_bytes
from .images import Upload, prepare_upload, shrink_upload
from .store import LabelScore, PendingImage, Store, UploadInfo

log = logging.getLogger(__name__)

# A request whose outcome is unknown is sent again at most this many times in one run.
MAX_UNKNOWN_RETRIES = 2


@dataclass
class RunReport:
    pending_at_start: int = 0
    requests: int = 0  # requests that reached a final answer or an unknown outcome
    classified: int = 0  # images that got labels this run (sent, cache hits, or reused)
    cache_hits: int = 0
    reused: int = 0  # identical upload already classified: no request
    failed: int = 0
    unknown_outcomes: int = 0
    micro_neurons: int = 0  # charged by this run, unknown outcomes included
    upload_bytes: int = 0
    original_bytes: int = 0
    left: int = 0
    stop_reason: str = "done"
    stop_message: str = ""
    exit_code: int = EXIT_OK
    seconds: float = 0.0
    neurons_left: float = 0.0  # today's budget left, kept current for progress displays
    failures: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["neurons"] = self.micro_neurons / 1_000_000
        return data


Progress = Callable[[RunReport], None]


@dataclass
class _Job:
    image: PendingImage
    upload: Upload
    upload_sha256: str
    unknown_retries: int = 0


class _Stop(Exception):
    """Raised inside a sender to end the run with a reason and exit code."""

    def __init__(self, reason: str, exit_code: int, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.exit_code = exit_code
        self.message = message


class Pipeline:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        client: WorkersAIClient,
        ledger: Ledger,
        *,
        roots: Sequence[str],
        run_id: int | None,
        progress: Progress | None = None,
        prepare_workers: int | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.client = client
        self.ledger = ledger
        self.roots = [os.path.abspath(r) for r in roots]
        self.run_id = run_id
        self.progress = progress
        self.model = settings.cloudflare.model
        self.report = RunReport()
        self.stopping = asyncio.Event()
        self.prepare_workers = prepare_workers or max(1, os.cpu_count() or 1)
        self._inflight: dict[str, asyncio.Event] = {}
        self._stop: _Stop | None = None

    @property
    def stop_reason(self) -> str | None:
        return self._stop.reason if self._stop else None

    def request_stop(self, reason: str, exit_code: int, message: str = "") -> None:
        """End the run (first reason wins): no new work, in-flight requests are recorded."""
        if self._stop is None:
            self._stop = _Stop(reason, exit_code, message)
            log.info("stopping: %s", message or reason)
        self.stopping.set()

    async def run(self) -> RunReport:
        started = time.monotonic()
        concurrency = self.settings.run.concurrency
        self.report.pending_at_start = self.store.count_pending(self.roots)
        prep_q: asyncio.Queue[PendingImage | None] = asyncio.Queue(maxsize=2 * concurrency)
        send_q: asyncio.Queue[_Job | None] = asyncio.Queue(maxsize=concurrency)
        pool = ThreadPoolExecutor(max_workers=self.prepare_workers, thread_name_prefix="prepare")
        feeder = asyncio.create_task(self._feed(prep_q))
        preparers = [
            asyncio.create_task(self._prepare(prep_q, send_q, pool)) for _ in range(self.prepare_workers)
        ]
        senders = [asyncio.create_task(self._send(send_q)) for _ in range(concurrency)]

        async def end_of_input() -> None:
            # Each stage hears "no more" once the stage before it has finished.
            await feeder
            for _ in preparers:
                await prep_q.put(None)
            await asyncio.gather(*preparers)
            for _ in senders:
                await send_q.put(None)

        closer = asyncio.create_task(end_of_input())
        stages = [closer, feeder, *preparers, *senders]
        watchdog = asyncio.create_task(self._cancel_after_stop(stages))
        try:
            results = await asyncio.gather(closer, *senders, return_exceptions=True)
        finally:
            watchdog.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
        self.report.left = self.store.count_pending(self.roots)
        if self._stop is not None:
            self.report.stop_reason = self._stop.reason
            self.report.stop_message = self._stop.message
            self.report.exit_code = self._stop.exit_code
        elif self.report.left:
            # Nothing stopped us, yet images are left: they failed transiently this run.
            self.report.stop_reason = "incomplete"
            self.report.exit_code = EXIT_TEMPFAIL
        self.report.seconds = time.monotonic() - started
        return self.report

    async def _put(self, queue: asyncio.Queue[Any], item: Any) -> None:
        """Queue work, unless the run is stopping: then the image simply stays pending."""
        if not self.stopping.is_set():
            await queue.put(item)

    async def _cancel_after_stop(self, stages: list[asyncio.Task[None]]) -> None:
        """Once the run is stopping, give in-flight requests ``drain_timeout`` seconds, then cancel.

        A cancelled request keeps its reservation as a charge (the body may have gone out).
        """
        await self.stopping.wait()
        await asyncio.sleep(self.settings.run.drain_timeout)
        if any(not t.done() for t in stages):
            log.warning(
                "requests still in flight after %.0f s: abandoning them", self.settings.run.drain_timeout
            )
        for task in stages:
            task.cancel()

    # -- stages ---------------------------------------------------------------------------------

    async def _feed(self, prep_q: asyncio.Queue[PendingImage | None]) -> None:
        after = ""
        while not self.stopping.is_set():
            page = self.store.pending_images(self.model, self.roots, after=after)
            if not page:
                return
            for image in page:
                if self.stopping.is_set():
                    return
                await self._put(prep_q, image)
            after = page[-1].sha256

    async def _prepare(
        self,
        prep_q: asyncio.Queue[PendingImage | None],
        send_q: asyncio.Queue[_Job | None],
        pool: ThreadPoolExecutor,
    ) -> None:
        loop = asyncio.get_running_loop()
        up = self.settings.upload
        while True:
            image = await prep_q.get()
            if image is None:
                return
            if self.stopping.is_set():
                continue
            try:
                upload = await loop.run_in_executor(
                    pool,
                    functools.partial(
                        prepare_upload,
                        image.path,
                        short_side=up.short_side,
                        quality=up.quality,
                        max_pixels=up.max_pixels,
                    ),
                )
            except ImageError as exc:
                self._fail(image, exc.reason)
                continue
            await self._put(send_q, _Job(image, upload, sha256_bytes(upload.data)))

    async def _send(self, send_q: asyncio.Queue[_Job | None]) -> None:
        while True:
            job = await send_q.get()
            if job is None:
                return
            if self.stopping.is_set():
                continue
            try:
                await self._classify_once(job)
            except _Stop as stop:
                self.request_stop(stop.reason, stop.exit_code, stop.message)
            except Exception:
                # A bug, not a service error: stop feeding work, let the caller see the traceback.
                self.request_stop("crashed", EXIT_FATAL)
                raise
            if self.progress:
                self.report.neurons_left = self.ledger.usage().left / 1_000_000
                self.progress(self.report)

    # -- one image ------------------------------------------------------------------------------

    async def _classify_once(self, job: _Job) -> None:
        # Identical upload in flight in another sender: wait for its answer, then reuse it.
        while (event := self._inflight.get(job.upload_sha256)) is not None:
            await event.wait()
        if self._reuse(job):
            return
        event = asyncio.Event()
        self._inflight[job.upload_sha256] = event
        try:
            await self._request(job)
        finally:
            del self._inflight[job.upload_sha256]
            event.set()

    def _reuse(self, job: _Job) -> bool:
        source = self.store.classification_for_upload(job.upload_sha256, self.model)
        if source is None or source == job.image.sha256:
            return False
        self.store.copy_classification(
            source_sha256=source,
            sha256=job.image.sha256,
            model=self.model,
            run_id=self.run_id,
            upload=self._upload_info(job),
        )
        self.report.reused += 1
        self.report.classified += 1
        return True

    async def _request(self, job: _Job) -> None:
        shrunk = False
        while True:
            if self.stopping.is_set():
                return
            reservation = self.ledger.reserve(job.image.sha256)
            if reservation is None:
                raise self._refusal_stop()
            try:
                answer = await self.client.classify(job.upload.data, content_type=job.upload.content_type)
            except QuotaExceeded as exc:
                self.ledger.release(reservation, "quota")
                self.ledger.mark_exhausted(f"code {exc.code}: {exc}")
                raise _Stop(
                    "quota", EXIT_TEMPFAIL, f"the account's daily neuron allocation is used up ({exc})"
                ) from None
            except OutcomeUnknown as exc:
                self._count_request(reservation.micro_neurons)
                self.ledger.keep(reservation, "unknown")
                self.report.unknown_outcomes += 1
                job.unknown_retries += 1
                if job.unknown_retries > MAX_UNKNOWN_RETRIES:
                    self.store.note_attempt(job.image.sha256, f"outcome unknown: {exc}")
                    return
                continue
            except PayloadTooLarge as exc:
                self.ledger.release(reservation, "too_large")
                if shrunk:
                    self._fail(job.image, f"too large for the service even re-encoded smaller ({exc})")
                    return
                shrunk = True
                if not await self._shrink(job):
                    return
                continue
            except BadImage as exc:
                self.ledger.release(reservation, "bad_image")
                self._fail(job.image, f"rejected by the service: {exc}")
                return
            except FatalApiError as exc:
                self.ledger.release(reservation, "fatal")
                raise _Stop("fatal", EXIT_FATAL, str(exc)) from None
            except RetryableApiError as exc:
                self.ledger.release(reservation, "transient")
                self.store.note_attempt(job.image.sha256, str(exc))
                raise _Stop(
                    "transient", EXIT_TEMPFAIL, f"transient errors persisted past the retries: {exc}"
                ) from None
            except ApiError as exc:  # an ApiError subclass this loop does not know: be careful
                self.ledger.keep(reservation, "unknown")
                raise _Stop("fatal", EXIT_FATAL, str(exc)) from None
            except BaseException:
                # Cancelled or crashed mid-request: the body may have gone out, keep the charge.
                self.ledger.keep(reservation, "aborted")
                raise
            self._record(job, reservation, answer)
            return

    async def _shrink(self, job: _Job) -> bool:
        up = self.settings.upload
        loop = asyncio.get_running_loop()
        try:
            smaller = await loop.run_in_executor(
                None,
                lambda: shrink_upload(
                    job.image.path, job.upload, quality=up.quality, max_pixels=up.max_pixels
                ),
            )
        except ImageError as exc:
            self._fail(job.image, exc.reason)
            return False
        job.upload = smaller
        # The identity used for reuse stays the first upload's: its answer applies to both.
        return True

    def _record(self, job: _Job, reservation: Reservation, answer: Classification) -> None:
        charged = self.ledger.charge_for(answer.cache_status)
        self.store.record_classification(
            sha256=job.image.sha256,
            model=self.model,
            labels=[LabelScore(x.label, x.score) for x in answer.labels],
            micro_neurons=charged,
            cache_status=answer.cache_status,
            run_id=self.run_id,
            reservation_id=reservation.id,
            upload=self._upload_info(job),
        )
        self._count_request(charged)
        self.report.classified += 1
        self.report.upload_bytes += len(job.upload.data)
        self.report.original_bytes += job.image.size
        if answer.cache_status == "HIT":
            self.report.cache_hits += 1

    @staticmethod
    def _upload_info(job: _Job) -> UploadInfo:
        u = job.upload
        return UploadInfo(job.upload_sha256, len(u.data), u.format, u.width, u.height)

    def _count_request(self, micro_neurons: int) -> None:
        self.report.requests += 1
        self.report.micro_neurons += micro_neurons

    def _fail(self, image: PendingImage, reason: str) -> None:
        log.warning("failed %s: %s", image.path, reason)
        self.store.mark_failed(image.sha256, reason)
        self.report.failed += 1
        key = reason.split(":")[0].split("(")[0].strip()
        self.report.failures[key] = self.report.failures.get(key, 0) + 1

    def _refusal_stop(self) -> _Stop:
        refusal = self.ledger.last_refusal
        if refusal is Refusal.MAX_IMAGES:
            return _Stop("max_images", EXIT_TEMPFAIL, f"--max-images {self.ledger.max_images} reached")
        if refusal is Refusal.QUOTA:
            return _Stop("quota", EXIT_TEMPFAIL, "the daily allocation is used up until 00:00 UTC")
        usage = self.ledger.usage()
        return _Stop(
            "budget",
            EXIT_TEMPFAIL,
            f"the neuron budget for {usage.day} is spent "
            f"({(usage.charged + usage.reserved) / 1e6:.6f} of {usage.limit / 1e6:g} neurons); "
            f"it resets at {usage.resets_at:%Y-%m-%d %H:%M} UTC",
        )
