"""WorkersAIClient against httpx.MockTransport: every row of WORKERS_AI.md's error table, retries,
backoff, Retry-After / RateLimit headers, pacing, the gateway, body forms and secret hygiene.

Sleeps and the clock are faked (``FakeTime``), so nothing here waits for real.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from cfclassify.client import Classification, Label, WorkersAIClient
from cfclassify.config import CloudflareSettings, RunSettings, Secret
from cfclassify.errors import (
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

ACCOUNT = "acc0123"
TOKEN = "tok-SECRET-9f8e7d6c5b"
GATEWAY_TOKEN = "gw-SECRET-1a2b3c"
API_BASE = "https://api.test/client/v4"
MODEL_PATH = "/client/v4/accounts/acc0123/ai/run/@cf/microsoft/resnet-50"
IMAGE = b"\xff\xd8\xff\xe0fake-jpeg-bytes"
RESULT = [
    {"label": "PEKINESE", "score": 0.2344},
    {"label": "PERSIAN CAT", "score": 0.4071},
    {"label": "FEATHER BOA", "score": 0.05},
]

Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class FakeTime:
    """A monotonic clock and a sleep that advances it instantly; records every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        target = self.now + seconds
        await asyncio.sleep(0)  # let other tasks run, as a real sleep would
        self.now = max(self.now, target)


class Server:
    """A scripted MockTransport: answers the replies in order, repeating the last one."""

    def __init__(self, *replies: Reply, time: FakeTime | None = None) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []
        self.time = time

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.time is not None:
            self.times.append(self.time.now)
        reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
        if isinstance(reply, Exception):
            raise reply
        if callable(reply):
            return reply(request)
        return reply


def ok(result: Any = RESULT, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"result": result, "success": True, "errors": [], "messages": []}
    return httpx.Response(200, json=body, headers=headers)


def fail(
    status: int, code: int | None = None, message: str = "boom", headers: dict[str, str] | None = None
) -> httpx.Response:
    error: dict[str, Any] = {"message": message}
    if code is not None:
        error["code"] = code
    body = {"success": False, "errors": [error], "messages": [], "result": None}
    return httpx.Response(status, json=body, headers=headers)


def cf_settings(**overrides: Any) -> CloudflareSettings:
    values: dict[str, Any] = {"account_id": ACCOUNT, "api_token": Secret(TOKEN), "api_base": API_BASE}
    return CloudflareSettings(**{**values, **overrides})


def run_settings(**overrides: Any) -> RunSettings:
    values: dict[str, Any] = {"max_retries": 3, "backoff_base": 0.5, "backoff_max": 60.0}
    return RunSettings(**{**values, **overrides})


def make_client(
    server: Server, time: FakeTime, cf: CloudflareSettings | None = None, run: RunSettings | None = None
) -> WorkersAIClient:
    return WorkersAIClient(
        cf or cf_settings(),
        run or run_settings(),
        transport=httpx.MockTransport(server),
        sleep=time.sleep,
        clock=time.clock,
        rng=random.Random(7),
    )


def classify(
    *replies: Reply, cf: CloudflareSettings | None = None, run: RunSettings | None = None,
    content_type: str = "image/jpeg",
) -> tuple[Classification | ApiError, Server, FakeTime, WorkersAIClient]:  # fmt: skip
    """One classify call; returns its result or the ApiError it raised."""
    time = FakeTime()
    server = Server(*replies, time=time)

    async def go() -> tuple[Classification | ApiError, WorkersAIClient]:
        async with make_client(server, time, cf, run) as client:
            try:
                return await client.classify(IMAGE, content_type=content_type), client
            except ApiError as exc:
                return exc, client

    outcome, client = asyncio.run(go())
    return outcome, server, time, client


# -- success, URL, headers, body forms -------------------------------------------------------------


def test_success_sorts_labels_and_sends_raw_bytes_with_bearer() -> None:
    outcome, server, time, client = classify(ok())
    assert isinstance(outcome, Classification)
    assert [label.label for label in outcome.labels] == ["PERSIAN CAT", "PEKINESE", "FEATHER BOA"]
    assert outcome.labels[0] == Label("PERSIAN CAT", 0.4071)
    assert outcome.cache_status is None and outcome.attempts == 1
    (request,) = server.requests
    assert request.method == "POST"
    assert str(request.url) == "https://api.test" + MODEL_PATH
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "image/jpeg"
    assert "cf-aig-cache-ttl" not in request.headers
    assert request.content == IMAGE
    assert not client.gateway
    assert time.sleeps == []
    assert client.stats.requests == 1 and client.stats.succeeded == 1


def test_content_type_is_passed_through() -> None:
    _, server, _, _ = classify(ok(), content_type="image/png")
    assert server.requests[0].headers["content-type"] == "image/png"


def test_json_body_form_sends_every_byte_as_an_integer() -> None:
    outcome, server, _, _ = classify(ok(), cf=cf_settings(body_form="json"))
    assert isinstance(outcome, Classification)
    request = server.requests[0]
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {"image": list(IMAGE)}


def test_gateway_url_headers_and_cache_status() -> None:
    cf = cf_settings(
        gateway_id="my-gw",
        gateway_base="https://gw.test/v1/",
        gateway_cache_ttl=3600,
        gateway_token=Secret(GATEWAY_TOKEN),
    )
    outcome, server, _, client = classify(ok(headers={"cf-aig-cache-status": "hit"}), cf=cf)
    assert client.gateway
    request = server.requests[0]
    assert str(request.url) == "https://gw.test/v1/acc0123/my-gw/workers-ai/@cf/microsoft/resnet-50"
    assert request.headers["cf-aig-cache-ttl"] == "3600"
    assert request.headers["cf-aig-authorization"] == f"Bearer {GATEWAY_TOKEN}"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert isinstance(outcome, Classification) and outcome.cache_status == "HIT"
    assert client.stats.cache_hits == 1


def test_gateway_without_ttl_or_token_sends_neither_header() -> None:
    outcome, server, _, _ = classify(
        ok(headers={"cf-aig-cache-status": "MISS"}), cf=cf_settings(gateway_id="gw")
    )
    request = server.requests[0]
    assert "cf-aig-cache-ttl" not in request.headers
    assert "cf-aig-authorization" not in request.headers
    assert isinstance(outcome, Classification) and outcome.cache_status == "MISS"


def test_missing_credentials_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="CLOUDFLARE_ACCOUNT_ID"):
        WorkersAIClient(cf_settings(account_id=None), run_settings())
    with pytest.raises(ConfigError, match="CLOUDFLARE_API_TOKEN"):
        WorkersAIClient(cf_settings(api_token=None), run_settings())


def test_pool_has_no_pool_timeout() -> None:
    client = WorkersAIClient(cf_settings(read_timeout=12.0), run_settings(concurrency=3))
    try:
        timeout = client._http.timeout
        assert timeout.pool is None and timeout.read == 12.0 and timeout.connect == 10.0
    finally:
        asyncio.run(client.aclose())


# -- the error table -------------------------------------------------------------------------------

FINAL_ROWS = [
    (429, 3036, "daily allocation", QuotaExceeded),
    (429, 4006, "you have used up your daily free allocation", QuotaExceeded),
    (429, None, "AiError: you have used up your daily free allocation of 10,000 neurons", QuotaExceeded),
    (400, 9999, "Daily Free Allocation exhausted", QuotaExceeded),
    (413, 3006, "Request is too large", PayloadTooLarge),
    (413, None, "too large", PayloadTooLarge),
    (400, 3003, "Bad input: missing body", BadImage),
    (400, 5004, "Invalid data", BadImage),
    (400, None, "bad request", BadImage),
    (400, 5007, "No such model", ModelError),
    (404, 3042, "Invalid model ID", ModelError),
    (403, 3023, "account blocked", AccountError),
    (403, 3041, "account not allowed", AccountError),
    (403, 5018, "not allowed", AccountError),
    (401, None, "Unauthorized", AuthError),
    (401, 10000, "Authentication error", AuthError),
    (403, None, "Forbidden", AuthError),
    (404, 7003, "Could not route", FatalApiError),
]


@pytest.mark.parametrize(("status", "code", "message", "error"), FINAL_ROWS)
def test_final_errors_are_not_retried(
    status: int, code: int | None, message: str, error: type[ApiError]
) -> None:
    outcome, server, time, _ = classify(fail(status, code, message), ok())
    assert type(outcome) is error
    assert len(server.requests) == 1 and time.sleeps == []
    assert outcome.status == status
    assert message in str(outcome)
    if code is not None and error is not FatalApiError:
        assert outcome.code == code


def test_auth_error_says_what_to_fix() -> None:
    outcome, *_ = classify(fail(401, None, "Unauthorized"))
    assert isinstance(outcome, AuthError)
    assert "CLOUDFLARE_API_TOKEN" in str(outcome) and "Workers AI Read and Edit" in str(outcome)


RETRIED_ROWS = [
    (429, 3040, RateLimited),
    (429, 3021, RateLimited),
    (429, None, RateLimited),
    (429, 1234, RateLimited),
    (408, 3007, RetryableApiError),
    (408, 3008, RetryableApiError),
    (408, None, RetryableApiError),
    (500, None, RetryableApiError),
    (502, None, RetryableApiError),
    (503, 1031, RetryableApiError),
]


@pytest.mark.parametrize(("status", "code", "error"), RETRIED_ROWS)
def test_passing_errors_are_retried_then_succeed(
    status: int, code: int | None, error: type[ApiError]
) -> None:
    outcome, server, time, client = classify(fail(status, code), fail(status, code), ok())
    assert isinstance(outcome, Classification) and outcome.attempts == 3
    assert len(server.requests) == 3
    assert client.stats.retries == 2


@pytest.mark.parametrize(("status", "code", "error"), RETRIED_ROWS)
def test_retries_exhausted_raise_with_attempts(status: int, code: int | None, error: type[ApiError]) -> None:
    outcome, server, time, _ = classify(fail(status, code), run=run_settings(max_retries=2))
    assert type(outcome) is error
    assert isinstance(outcome, RetryableApiError)
    assert outcome.attempts == 3 == len(server.requests)
    assert outcome.status == status
    assert "after 3 attempts" in str(outcome)


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    run = run_settings(max_retries=6, backoff_base=1.0, backoff_max=4.0)
    outcome, server, time, _ = classify(fail(503), run=run)
    assert isinstance(outcome, RetryableApiError) and outcome.attempts == 7
    assert len(time.sleeps) == 6
    caps = [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert all(0 <= slept <= cap for slept, cap in zip(time.sleeps, caps, strict=True))
    assert len(set(time.sleeps)) == 6  # jittered, not a fixed ladder


def test_html_5xx_body_is_retried() -> None:
    outcome, server, _, _ = classify(httpx.Response(502, text="<html>Bad gateway</html>"), ok())
    assert isinstance(outcome, Classification) and len(server.requests) == 2


def test_success_false_envelope_maps_by_code() -> None:
    outcome, *_ = classify(fail(200, 5004, "Invalid data"))
    assert isinstance(outcome, BadImage)


# -- Retry-After and RateLimit headers -------------------------------------------------------------


def test_retry_after_seconds_is_honoured() -> None:
    outcome, server, time, client = classify(fail(429, 3040, headers={"Retry-After": "3"}), ok())
    assert isinstance(outcome, Classification)
    assert time.sleeps[0] == 3.0
    assert sum(time.sleeps) == pytest.approx(3.0)
    assert server.times[1] - server.times[0] == pytest.approx(3.0)
    assert client.stats.rate_limited == 1


def test_retry_after_http_date_is_honoured() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    header = email.utils.format_datetime(when, usegmt=True)
    outcome, _, time, _ = classify(fail(503, None, headers={"Retry-After": header}), ok())
    assert isinstance(outcome, Classification)
    assert 27.0 <= time.sleeps[0] <= 31.0


def test_retry_after_in_the_past_means_no_extra_wait() -> None:
    header = email.utils.format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    outcome, _, time, _ = classify(fail(429, 3040, headers={"Retry-After": header}), ok())
    assert isinstance(outcome, Classification) and time.sleeps[0] <= 0.5


def test_retry_after_longer_than_backoff_max_gives_up() -> None:
    outcome, server, time, _ = classify(
        fail(429, 3021, headers={"Retry-After": "120"}), ok(), run=run_settings(backoff_max=60)
    )
    assert isinstance(outcome, RateLimited)
    assert outcome.retry_after == 120.0 and outcome.code == 3021
    assert len(server.requests) == 1 and time.sleeps == []


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"RateLimit": '"default";r=0;t=7'}, 7.0),
        ({"RateLimit": '"burst";r=5;t=1, "minute";r=0;t=9'}, 9.0),
        ({"RateLimit": "limit=100, remaining=0, reset=6"}, 6.0),
        ({"RateLimit-Remaining": "0", "RateLimit-Reset": "4"}, 4.0),
        ({"RateLimit": '"default";r=0;t=2', "Retry-After": "5"}, 5.0),
    ],
)
def test_ratelimit_headers_are_honoured(headers: dict[str, str], wait: float) -> None:
    outcome, _, time, _ = classify(fail(429, None, headers=headers), ok())
    assert isinstance(outcome, Classification)
    assert time.sleeps[0] == wait


def test_ratelimit_with_remaining_quota_adds_no_wait() -> None:
    outcome, _, time, _ = classify(fail(429, None, headers={"RateLimit": '"d";r=3;t=50'}), ok())
    assert isinstance(outcome, Classification) and time.sleeps[0] <= 0.5


def test_ratelimit_reset_beyond_backoff_max_gives_up() -> None:
    outcome, *_ = classify(fail(429, None, headers={"RateLimit": '"day";r=0;t=3600'}))
    assert isinstance(outcome, RateLimited) and outcome.retry_after == 3600.0


def test_ratelimit_policy_lowers_the_pace() -> None:
    time = FakeTime()
    server = Server(ok(headers={"RateLimit-Policy": '"default";q=30;w=60'}), time=time)

    async def go() -> None:
        async with make_client(server, time) as client:
            for _ in range(3):
                await client.classify(IMAGE)

    asyncio.run(go())
    assert [b - a for a, b in zip(server.times, server.times[1:], strict=False)] == [2.0, 2.0]


def test_exhausted_window_on_a_success_holds_the_next_request() -> None:
    time = FakeTime()
    server = Server(ok(headers={"RateLimit": '"default";r=0;t=5'}), ok(), time=time)

    async def go() -> None:
        async with make_client(server, time) as client:
            await client.classify(IMAGE)
            await client.classify(IMAGE)

    asyncio.run(go())
    assert server.times[1] - server.times[0] == pytest.approx(5.0)


# -- transport faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout])
def test_faults_before_sending_are_retried(fault: type[httpx.HTTPError]) -> None:
    outcome, server, _, client = classify(fault("refused"), fault("refused"), ok())
    assert isinstance(outcome, Classification) and outcome.attempts == 3
    assert client.stats.connect_errors == 2


@pytest.mark.parametrize("fault", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout])
def test_faults_before_sending_exhausted_raise_retryable(fault: type[httpx.HTTPError]) -> None:
    outcome, server, _, _ = classify(fault("refused"), run=run_settings(max_retries=2))
    assert type(outcome) is RetryableApiError
    assert outcome.attempts == 3 == len(server.requests)
    assert isinstance(outcome.__cause__, fault)
    assert "api.test" in str(outcome)


@pytest.mark.parametrize(
    "fault",
    [httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError,
     httpx.WriteTimeout, httpx.NetworkError],
)  # fmt: skip
def test_faults_after_sending_raise_outcome_unknown_at_once(fault: type[httpx.HTTPError]) -> None:
    outcome, server, time, client = classify(fault("lost"), ok())
    assert type(outcome) is OutcomeUnknown
    assert len(server.requests) == 1 and time.sleeps == []
    assert isinstance(outcome.__cause__, fault)
    assert client.stats.outcome_unknown == 1 and client.stats.failed == 1


def test_bad_url_is_a_config_error() -> None:
    time = FakeTime()

    async def go() -> None:
        async with WorkersAIClient(cf_settings(api_base="ftp://nowhere"), run_settings(),
                                   sleep=time.sleep, clock=time.clock) as client:  # fmt: skip
            await client.classify(IMAGE)

    with pytest.raises(ConfigError, match="CLOUDFLARE_BASE_URL"):
        asyncio.run(go())


# -- malformed success bodies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>captive portal</html>"),
        httpx.Response(200, content=b"\xff\xfe\x00garbage"),
        httpx.Response(200, json={"success": True}),
        httpx.Response(200, json={"result": "PERSIAN CAT"}),
        httpx.Response(200, json={"result": {"label": "A", "score": 0.5}}),
        httpx.Response(200, json={"result": ["PERSIAN CAT"]}),
        httpx.Response(200, json={"result": [{"label": 7, "score": 0.5}]}),
        httpx.Response(200, json={"result": [{"label": "", "score": 0.5}]}),
        httpx.Response(200, json={"result": [{"label": "A", "score": "high"}]}),
        httpx.Response(200, json={"result": [{"label": "A", "score": True}]}),
        httpx.Response(200, json={"result": [{"label": "A"}]}),
        httpx.Response(200, content=b'{"result": [{"label": "A", "score": NaN}]}'),
        httpx.Response(200, json=[1, 2, 3]),
    ],
)
def test_malformed_success_body_is_a_typed_error_not_a_crash(response: httpx.Response) -> None:
    # A 2xx means the model ran, so it was probably billed: OutcomeUnknown, never retried here.
    outcome, server, _, _ = classify(response, ok())
    assert isinstance(outcome, OutcomeUnknown)
    assert outcome.status == 200 and len(server.requests) == 1


def test_integer_scores_and_empty_results_are_accepted() -> None:
    outcome, *_ = classify(ok([{"label": "A", "score": 1}, {"label": "B", "score": 0.5}]))
    assert isinstance(outcome, Classification)
    assert outcome.labels == (Label("A", 1.0), Label("B", 0.5))
    outcome, *_ = classify(ok([]))
    assert isinstance(outcome, Classification) and outcome.labels == ()


# -- pacing ----------------------------------------------------------------------------------------


def test_requests_per_minute_spaces_concurrent_calls_evenly() -> None:
    time = FakeTime()
    server = Server(ok(), time=time)

    async def go() -> WorkersAIClient:
        async with make_client(server, time, run=run_settings(requests_per_minute=60,
                                                              concurrency=8)) as client:  # fmt: skip
            await asyncio.gather(*(client.classify(IMAGE) for _ in range(6)))
            return client

    client = asyncio.run(go())
    gaps = [b - a for a, b in zip(server.times, server.times[1:], strict=False)]
    assert gaps == [pytest.approx(1.0)] * 5
    assert client.stats.paced_seconds == pytest.approx(1 + 2 + 3 + 4 + 5)


def test_repeated_429s_slow_the_pace_and_successes_recover_it() -> None:
    time = FakeTime()
    server = Server(fail(429, 3040), fail(429, 3040), ok(), time=time)

    async def go() -> tuple[float, float]:
        run = run_settings(requests_per_minute=60, backoff_base=0.001)
        async with make_client(server, time, run=run) as client:
            await client.classify(IMAGE)
            slowed = client.rate_factor
            server.replies = [ok()]
            for _ in range(40):
                await client.classify(IMAGE)
            return slowed, client.rate_factor

    slowed, recovered = asyncio.run(go())
    # Each 429 halves the rate: slots 1 s apart at 60 rpm become 2 s, then 4 s apart.
    gaps = [b - a for a, b in zip(server.times, server.times[1:3], strict=False)]
    assert gaps == [pytest.approx(2.0), pytest.approx(4.0)]
    assert slowed == pytest.approx(0.25 + 1 / 32)
    assert recovered == 1.0


def test_a_burst_of_429s_to_concurrent_requests_halves_the_rate_once() -> None:
    time = FakeTime()
    arrived: list[httpx.Request] = []
    all_in = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        arrived.append(request)
        if len(arrived) <= 4:  # the first four are in flight together, then all get a 429
            if len(arrived) == 4:
                all_in.set()
            await all_in.wait()
            return fail(429, 3040)
        return ok()

    async def go() -> float:
        run = run_settings(requests_per_minute=600_000, concurrency=4, backoff_base=0.001)
        async with WorkersAIClient(cf_settings(), run, transport=httpx.MockTransport(handler),
                                   sleep=time.sleep, clock=time.clock) as client:  # fmt: skip
            results = await asyncio.gather(*(client.classify(IMAGE) for _ in range(4)))
            assert all(isinstance(r, Classification) for r in results)
            assert client.stats.rate_limited == 4
            return client.rate_factor

    # Halved once (0.5), then four successes each win back 1/32.
    assert asyncio.run(go()) == pytest.approx(0.5 + 4 / 32)


# -- secrets ---------------------------------------------------------------------------------------


def _echo_token(request: httpx.Request) -> httpx.Response:
    return fail(400, 5004, f"bad request with header {request.headers['authorization']}")


@pytest.mark.parametrize(
    "replies",
    [
        (fail(401, None, "Unauthorized"),),
        (fail(429, 3036, "daily free allocation"),),
        (fail(503),),
        (fail(429, 3040, headers={"Retry-After": "999"}),),
        (httpx.ConnectError(f"cannot connect with {TOKEN}"),),
        (httpx.ReadTimeout("timed out"),),
        (httpx.Response(200, text=f"echo {TOKEN}"),),
        (_echo_token,),
    ],
)
def test_token_never_appears_in_errors_reprs_or_logs(
    replies: tuple[Reply, ...], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cf = cf_settings(gateway_id="gw", gateway_token=Secret(GATEWAY_TOKEN), gateway_cache_ttl=60)
    outcome, _, _, client = classify(*replies, cf=cf, run=run_settings(max_retries=1))
    assert isinstance(outcome, ApiError)
    texts = [str(outcome), repr(outcome), repr(client), repr(cf), caplog.text, str(outcome.args)]
    cause = outcome.__cause__
    while cause is not None:
        if not isinstance(cause, httpx.ConnectError):  # our message names it; the cause is httpx's
            texts += [str(cause), repr(cause)]
        cause = cause.__cause__
    for text in texts:
        assert TOKEN not in text
        assert GATEWAY_TOKEN not in text
