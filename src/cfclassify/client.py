"""The Workers AI client: the one place cfclassify talks HTTP to Cloudflare.

``WorkersAIClient.classify(data)`` sends one image to ``@cf/microsoft/resnet-50`` (directly, or
through an AI Gateway) and returns a validated ``Classification``, or raises one error of the
``ApiError`` tree in ``errors.py``. Every httpx exception and every error envelope is converted
here, in ``classify``, and nowhere else.

Design, following ``WORKERS_AI.md``:

* **What is retried.** Only failures that cannot have cost anything: error envelopes that mean
  "try later" (429 without a quota code, 3040, 3021, 408/3007/3008, 5xx) and transport errors
  raised before the body left (connect errors, pool timeouts). Anything after the body may have
  been sent (read timeout, connection dropped, a 2xx whose body cannot be read) raises
  ``OutcomeUnknown`` at once: the caller counts it as possibly billed, and retrying here would
  risk paying twice without anyone seeing it. Quota errors (3036/4006, or the "daily free
  allocation" message) are never retried: the official SDK retries them, this project must not.
* **Backoff.** Exponential with full jitter (``run.backoff_base`` doubling, capped at
  ``run.backoff_max``), never shorter than what the server asked for through ``Retry-After``
  (seconds or HTTP-date) or the ``RateLimit`` headers (the IETF draft's structured
  ``"name";r=0;t=30`` form, its older ``limit=, remaining=, reset=`` form, and the split
  ``RateLimit-Remaining`` / ``RateLimit-Reset`` headers). A server asking for longer than
  ``run.backoff_max`` ends the call with ``RateLimited(retry_after=...)``: sleeping for minutes
  inside one call would stall the whole run without telling anyone.
* **Pacing.** A ``_Pacer`` shared by every concurrent ``classify`` spaces requests evenly at
  ``run.requests_per_minute`` (a burst-free token bucket; no lock is needed because reserving a
  slot does not await). A 429 halves the rate in use (once per congestion event: answers to
  requests sent before the last halving do not halve again) and pushes the next slot past the
  server's wait, so every task backs off together; each success wins back a little (AIMD, as TCP
  does). A ``RateLimit-Policy`` header slower than the configured cap lowers the cap.
* **Secrets.** The token is revealed only while building request headers. No message, log line
  or repr built here contains headers, so the token cannot leak through them.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import httpx

from . import __version__
from .config import CloudflareSettings, RunSettings
from .errors import (
    AccountError,
    ApiError,
    AuthError,
    BadImage,
    ConfigError,
    FatalApiError,
    ModelError,
    OutcomeUnknown,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimited,
    RetryableApiError,
)

logger = logging.getLogger(__name__)

QUOTA_CODES = frozenset({3036, 4006})
RATE_LIMIT_CODES = frozenset({3040, 3021})
TIMEOUT_CODES = frozenset({3007, 3008})
TOO_LARGE_CODES = frozenset({3006})
BAD_INPUT_CODES = frozenset({3003, 5004})
MODEL_CODES = frozenset({5007, 3042})
ACCOUNT_CODES = frozenset({3023, 3041, 5018})
QUOTA_MESSAGE = "daily free allocation"

_MIN_RATE_FACTOR = 1 / 64  # never slow below 1/64 of the cap: 3000 rpm -> ~47 rpm
_RECOVERY_STEP = 1 / 32  # share of the cap won back per success


@dataclass(frozen=True, slots=True)
class Label:
    label: str
    score: float


@dataclass(frozen=True, slots=True)
class Classification:
    labels: tuple[Label, ...]  # validated, highest score first, all that came
    cache_status: str | None  # "HIT" / "MISS" from cf-aig-cache-status, else None
    attempts: int  # HTTP attempts this call took


@dataclass(slots=True)
class ClientStats:
    """Counters over the client's life. ``requests`` counts HTTP attempts, not images."""

    requests: int = 0
    succeeded: int = 0
    retries: int = 0
    rate_limited: int = 0  # 429-family answers (quota errors are counted in ``failed``)
    server_errors: int = 0  # 5xx and 408-family answers
    connect_errors: int = 0
    outcome_unknown: int = 0
    failed: int = 0  # calls that ended in an error
    cache_hits: int = 0
    paced_seconds: float = 0.0  # time spent waiting for a slot under the rate cap
    backoff_seconds: float = 0.0  # time spent sleeping between retries


class WorkersAIClient:
    """Classify images with Workers AI over one pooled ``httpx.AsyncClient``.

    Use as ``async with WorkersAIClient(settings.cloudflare, settings.run) as client:``. The caller
    must not have more than ``run.concurrency`` calls in flight; the pool holds that many.
    """

    def __init__(
        self,
        cloudflare: CloudflareSettings,
        run: RunSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        account_id, token = cloudflare.require_credentials()
        self._cloudflare = cloudflare
        self._run = run
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._stats = ClientStats()
        self._pacer = _Pacer(run.requests_per_minute, clock)
        secrets = (token, cloudflare.gateway_token)
        self._secrets = tuple(s.reveal() for s in secrets if s is not None and s.reveal())
        model = cloudflare.model.strip("/")
        if cloudflare.gateway_id:
            base = cloudflare.gateway_base.rstrip("/")
            self._url = f"{base}/{account_id}/{cloudflare.gateway_id}/workers-ai/{model}"
        else:
            self._url = f"{cloudflare.api_base.rstrip('/')}/accounts/{account_id}/ai/run/{model}"
        headers = {
            "Authorization": f"Bearer {token.reveal()}",
            "Accept": "application/json",
            "User-Agent": f"cfclassify/{__version__}",
        }
        if cloudflare.gateway_id:
            if cloudflare.gateway_cache_ttl > 0:
                headers["cf-aig-cache-ttl"] = str(cloudflare.gateway_cache_ttl)
            if cloudflare.gateway_token is not None and cloudflare.gateway_token.reveal():
                headers["cf-aig-authorization"] = f"Bearer {cloudflare.gateway_token.reveal()}"
        # The pool holds exactly the caller's concurrency, so a request never queues for a
        # connection; pool=None removes httpx's 5 s pool timeout in case one briefly does.
        self._http = httpx.AsyncClient(
            headers=headers,
            transport=transport,
            limits=httpx.Limits(max_connections=run.concurrency, max_keepalive_connections=run.concurrency),
            timeout=httpx.Timeout(
                connect=cloudflare.connect_timeout,
                read=cloudflare.read_timeout,
                write=cloudflare.read_timeout,
                pool=None,
            ),
        )

    def __repr__(self) -> str:
        return f"<WorkersAIClient {self._url} gateway={self.gateway}>"

    @property
    def gateway(self) -> bool:
        return bool(self._cloudflare.gateway_id)

    @property
    def url(self) -> str:
        return self._url

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the counters."""
        return replace(self._stats)

    @property
    def rate_factor(self) -> float:
        """Share of ``run.requests_per_minute`` currently in use (1.0 until a 429 arrives)."""
        return self._pacer.factor

    async def __aenter__(self) -> WorkersAIClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def classify(self, data: bytes, *, content_type: str = "image/jpeg") -> Classification:
        """Classify one image, retrying passing faults; raise an ``ApiError`` otherwise."""
        try:
            return await self._classify(data, content_type)
        except ApiError:
            self._stats.failed += 1
            raise

    async def _classify(self, data: bytes, content_type: str) -> Classification:
        if self._cloudflare.body_form == "json":
            # Joining the digits is several times faster than json.dumps over a list of ints.
            content = b'{"image":[' + ",".join(map(str, data)).encode("ascii") + b"]}"
            headers = {"Content-Type": "application/json"}
        else:
            content = data
            headers = {"Content-Type": content_type}
        attempts = 0
        while True:
            waited = await self._pace()  # not `+= await`: that would add to a stale total
            self._stats.paced_seconds += waited
            attempts += 1
            self._stats.requests += 1
            sent_at = self._clock()
            try:
                response = await self._http.post(self._url, content=content, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Nothing was sent: a clear failure, safe to retry.
                self._stats.connect_errors += 1
                failure: RetryableApiError = RetryableApiError(
                    f"cannot reach Workers AI at {self._host()}: {self._describe(exc)}",
                    attempts=attempts,
                )
                cause: BaseException | None = exc
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                raise ConfigError(
                    f"bad Workers AI URL {self._url}: {self._describe(exc)}; check CLOUDFLARE_BASE_URL "
                    "(cloudflare.api_base) or cloudflare.gateway_base"
                ) from exc
            except httpx.HTTPError as exc:
                # The body may have reached the model: we may have been billed.
                self._stats.outcome_unknown += 1
                raise OutcomeUnknown(
                    f"no answer from Workers AI after sending the image: {self._describe(exc)}",
                    attempts=attempts,
                ) from exc
            else:
                outcome = self._interpret(response, attempts, sent_at)
                if isinstance(outcome, Classification):
                    self._stats.succeeded += 1
                    self._pacer.recovered()
                    return outcome
                failure, cause = outcome, None
            if attempts > self._run.max_retries:
                raise failure from cause
            delay = self._backoff(attempts)
            if failure.retry_after is not None:
                if failure.retry_after > self._run.backoff_max:
                    raise RateLimited(
                        f"Workers AI asks to wait {failure.retry_after:.0f} s, longer than "
                        f"run.backoff_max ({self._run.backoff_max:g} s): {failure.args[0]}",
                        status=failure.status,
                        code=failure.code,
                        attempts=attempts,
                        retry_after=failure.retry_after,
                    ) from cause
                delay = max(delay, failure.retry_after)
            self._stats.retries += 1
            self._stats.backoff_seconds += delay
            logger.info("retrying in %.2f s after attempt %d: %s", delay, attempts, failure)
            await self._sleep(delay)

    async def _pace(self) -> float:
        wait = self._pacer.reserve()
        if wait > 0:
            await self._sleep(wait)
        return wait

    def _backoff(self, attempts: int) -> float:
        cap = min(self._run.backoff_max, self._run.backoff_base * 2 ** (attempts - 1))
        return self._rng.uniform(0, cap)

    def _clean(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "********")
        return text

    def _describe(self, exc: BaseException) -> str:
        text = str(exc)
        return self._clean(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)

    def _host(self) -> str:
        return httpx.URL(self._url).host

    def _interpret(
        self, response: httpx.Response, attempts: int, sent_at: float
    ) -> Classification | RetryableApiError:
        """Turn an answer into a result, a retryable failure to return, or a raised error."""
        status = response.status_code
        wait = _server_wait(response.headers)
        policy_interval = _policy_interval(response.headers)
        if policy_interval is not None:
            self._pacer.limit_interval(policy_interval)
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        envelope = body if isinstance(body, dict) else {}
        if 200 <= status < 300 and envelope.get("success", True) is not False:
            if wait is not None and 0 < wait <= self._run.backoff_max:
                self._pacer.hold(wait)  # the window is spent: let every task wait it out
            return self._parse_success(response, body, attempts)
        codes, message = _errors_of(envelope)
        if not message:
            text = _preview_text(response)
            message = text if text and not text.startswith("<") else ""
            message = message or f"HTTP {status} {response.reason_phrase}".strip()
        message = self._clean(message)  # a server echoing our headers must not leak the token
        code = next(iter(codes), None)
        context: dict[str, Any] = {"status": status, "attempts": attempts}

        def first(known: frozenset[int]) -> int | None:
            return next((c for c in codes if c in known), None)

        if codes & QUOTA_CODES or QUOTA_MESSAGE in message.lower():
            raise QuotaExceeded(
                f"Workers AI daily free allocation used up until 00:00 UTC: {message}",
                code=first(QUOTA_CODES) or code,
                **context,
            )
        if codes & MODEL_CODES:
            raise ModelError(
                f"Workers AI does not know model {self._cloudflare.model!r} (check "
                f"cloudflare.model): {message}",
                code=first(MODEL_CODES),
                **context,
            )
        if codes & ACCOUNT_CODES:
            raise AccountError(
                "the Cloudflare account may not use Workers AI (blocked or not allowed; check "
                f"CLOUDFLARE_ACCOUNT_ID and the account): {message}",
                code=first(ACCOUNT_CODES),
                **context,
            )
        if codes & TOO_LARGE_CODES or status == 413:
            raise PayloadTooLarge(
                f"image too large for Workers AI: {message}", code=first(TOO_LARGE_CODES), **context
            )
        if codes & BAD_INPUT_CODES:
            raise BadImage(
                f"Workers AI rejected the image: {message}", code=first(BAD_INPUT_CODES), **context
            )
        if codes & RATE_LIMIT_CODES or status == 429:
            self._stats.rate_limited += 1
            self._pacer.throttled(wait or 0.0, sent_at)
            return RateLimited(
                f"Workers AI rate limit: {message}",
                code=first(RATE_LIMIT_CODES) or code,
                retry_after=wait,
                **context,
            )
        if codes & TIMEOUT_CODES or status == 408 or status >= 500:
            self._stats.server_errors += 1
            return RetryableApiError(
                f"Workers AI server error: {message}",
                code=first(TIMEOUT_CODES) or code,
                retry_after=wait,
                **context,
            )
        if status in (401, 403):
            where = " (and the AI Gateway token, CFCLASSIFY_CLOUDFLARE_GATEWAY_TOKEN)" if self.gateway else ""
            raise AuthError(
                f"Cloudflare rejected the credentials: check CLOUDFLARE_API_TOKEN (it needs the "
                f"Workers AI Read and Edit permissions) and CLOUDFLARE_ACCOUNT_ID{where}: {message}",
                code=code,
                **context,
            )
        if status == 400:
            raise BadImage(f"Workers AI rejected the image: {message}", code=code, **context)
        if 200 <= status < 300:  # success: false with no code we know: a clear, passing failure
            return RetryableApiError(f"Workers AI failed: {message}", code=code, **context)
        raise FatalApiError(
            f"unexpected answer from {self._url} (check CLOUDFLARE_ACCOUNT_ID, "
            f"CLOUDFLARE_BASE_URL and cloudflare.model): {message}",
            code=code,
            **context,
        )

    def _parse_success(self, response: httpx.Response, body: Any, attempts: int) -> Classification:
        labels = _labels_of(body)
        if labels is None:
            # The model ran (2xx), so this was probably billed; retrying could pay twice.
            self._stats.outcome_unknown += 1
            raise OutcomeUnknown(
                "Workers AI answered HTTP "
                f"{response.status_code} with an unreadable body ({self._clean(_preview(response))})",
                status=response.status_code,
                attempts=attempts,
            )
        cache_status = response.headers.get("cf-aig-cache-status")
        cache_status = cache_status.strip().upper() if cache_status else None
        if cache_status == "HIT":
            self._stats.cache_hits += 1
        return Classification(labels=labels, cache_status=cache_status, attempts=attempts)


class _Pacer:
    """Even spacing of request starts, shared by every task of one client (see module doc)."""

    def __init__(self, requests_per_minute: int, clock: Callable[[], float]) -> None:
        self._interval = 60.0 / requests_per_minute
        self._policy_interval = 0.0
        self._clock = clock
        self._last = -math.inf  # the latest slot handed out
        self._next = -math.inf  # the earliest the next slot may start
        self._slowed_at = -math.inf  # when the rate was last halved
        self.factor = 1.0

    def spacing(self) -> float:
        return max(self._interval / self.factor, self._policy_interval)

    def reserve(self) -> float:
        """Take the next slot; return how long the caller must wait for it."""
        now = self._clock()
        slot = max(now, self._next)
        self._last, self._next = slot, slot + self.spacing()
        return slot - now

    def hold(self, seconds: float) -> None:
        self._next = max(self._next, self._clock() + seconds)

    def throttled(self, wait: float, sent_at: float) -> None:
        # Requests sent before the last slow-down met the same congestion: halving again for
        # each of them would collapse the rate by 2**concurrency after one burst of 429s.
        if sent_at > self._slowed_at:
            self.factor = max(_MIN_RATE_FACTOR, self.factor / 2)
            self._slowed_at = self._clock()
            self._respace()
        self.hold(wait)

    def recovered(self) -> None:
        self.factor = min(1.0, self.factor + _RECOVERY_STEP)

    def limit_interval(self, interval: float) -> None:
        self._policy_interval = interval
        self._respace()

    def _respace(self) -> None:
        # A slower pace applies from the slot already handed out, not one slot later.
        self._next = max(self._next, self._last + self.spacing())


def _labels_of(body: Any) -> tuple[Label, ...] | None:
    """The validated labels, highest score first, or None when the body is not the contract's."""
    if not isinstance(body, dict) or not isinstance(body.get("result"), list):
        return None
    labels = []
    for item in body["result"]:
        if not isinstance(item, dict):
            return None
        label, score = item.get("label"), item.get("score")
        if not isinstance(label, str) or not label.strip():
            return None
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            return None
        labels.append(Label(label=label, score=float(score)))
    labels.sort(key=lambda item: item.score, reverse=True)
    return tuple(labels)


def _errors_of(envelope: Mapping[str, Any]) -> tuple[set[int], str]:
    """The error codes and the joined messages of an error envelope, tolerating any shape."""
    codes: set[int] = set()
    messages: list[str] = []
    errors = envelope.get("errors")
    for error in errors if isinstance(errors, list) else []:
        if not isinstance(error, dict):
            continue
        raw_code = error.get("code")
        if isinstance(raw_code, int | str) and str(raw_code).strip().isdigit():
            codes.add(int(raw_code))
        if isinstance(error.get("message"), str):
            messages.append(error["message"])
    return codes, "; ".join(messages)[:300]


def _server_wait(headers: httpx.Headers) -> float | None:
    """Seconds the server asks us to wait (Retry-After or RateLimit headers), or None."""
    waits = [w for w in (_retry_after(headers), _ratelimit_reset(headers)) if w is not None]
    return max(waits) if waits else None


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _ratelimit_reset(headers: httpx.Headers) -> float | None:
    """Seconds until an exhausted RateLimit window resets; None when not exhausted or absent."""
    waits: list[float] = []
    for member in _sf_members(headers.get("ratelimit", "")):
        params = member[1]
        remaining = params.get("r", params.get("remaining"))
        reset = params.get("t", params.get("reset"))
        if remaining is not None and reset is not None and remaining <= 0:
            waits.append(reset)
    remaining_header = _number(headers.get("ratelimit-remaining"))
    reset_header = _number(headers.get("ratelimit-reset"))
    if remaining_header is not None and reset_header is not None and remaining_header <= 0:
        waits.append(reset_header)
    return max(waits) if waits else None


def _policy_interval(headers: httpx.Headers) -> float | None:
    """Seconds between requests that the tightest ``RateLimit-Policy`` allows, or None."""
    intervals: list[float] = []
    for item, params in _sf_members(headers.get("ratelimit-policy", "")):
        quota = params.get("q", _number(item))
        window = params.get("w")
        if quota is not None and quota > 0 and window is not None and window > 0:
            intervals.append(window / quota)
    return max(intervals) if intervals else None


def _sf_members(value: str) -> list[tuple[str, dict[str, float]]]:
    """Parse ``"a";r=0;t=30, "b";q=5`` and ``limit=5, remaining=0, reset=3`` leniently.

    The second (older draft) form has no item names: its keys are gathered into one member.
    """
    members: list[tuple[str, dict[str, float]]] = []
    loose: dict[str, float] = {}
    for raw in value.split(","):
        parts = [p.strip() for p in raw.split(";") if p.strip()]
        if not parts:
            continue
        item, params = parts[0], {}
        if "=" in item and len(parts) == 1:
            key, _, number = item.partition("=")
            if (parsed := _number(number)) is not None:
                loose[key.strip().lower()] = parsed
            continue
        for part in parts[1:]:
            key, _, number = part.partition("=")
            if (parsed := _number(number)) is not None:
                params[key.strip().lower()] = parsed
        members.append((item.strip('"'), params))
    if loose:
        members.append(("", loose))
    return members


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip().strip('"'))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _preview_text(response: httpx.Response) -> str:
    try:
        return response.text[:200].strip()
    except (UnicodeDecodeError, LookupError, httpx.HTTPError):
        return ""


def _preview(response: httpx.Response) -> str:
    text = _preview_text(response)
    return repr(text[:80]) if text else "empty or not text"
