"""The Workers AI stand-in, seen from the outside: curl-style posts (plain httpx) and the official
``cloudflare`` SDK get the envelopes WORKERS_AI.md documents, and the counters add up.

Every server runs on 127.0.0.1 with a free port and is stopped after its test.
"""

from __future__ import annotations

import io
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import cloudflare
import httpx
import pytest
from PIL import Image

from cfclassify.emulator import (
    MICRO_NEURONS_PER_IMAGE,
    EmulatorOptions,
    RunningEmulator,
    imagenet_labels,
    is_image,
    labels_for,
    serve,
    start_emulator,
)

TOKEN = "emu-token-123"
ACCOUNT = "acc42"
MODEL = "@cf/microsoft/resnet-50"
RUN_PATH = f"/client/v4/accounts/{ACCOUNT}/ai/run/{MODEL}"
GATEWAY_PATH = f"/gateway/v1/{ACCOUNT}/my-gateway/workers-ai/{MODEL}"


def make_png(color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "PNG")
    return buf.getvalue()


PNG = make_png()
JPEG_HEADER = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def emu() -> Iterator[RunningEmulator]:
    with start_emulator(EmulatorOptions(token=TOKEN)) as running:
        yield running


def post(
    emu: RunningEmulator, body: bytes, *, path: str = RUN_PATH, token: str | None = TOKEN,
    content_type: str = "image/png", headers: dict[str, str] | None = None,
    client: httpx.Client | None = None,
) -> httpx.Response:  # fmt: skip
    sent = {"Content-Type": content_type, **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if client is not None:
        return client.post(emu.url + path, content=body, headers=sent)
    return httpx.post(emu.url + path, content=body, headers=sent, timeout=5)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["success"] is False and body["result"] is None and body["messages"] == []
    (error,) = body["errors"]
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


# -- success ---------------------------------------------------------------------------------------


def test_raw_post_gets_the_documented_envelope(emu: RunningEmulator) -> None:
    response = post(emu, PNG)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["success"] is True and body["errors"] == [] and body["messages"] == []
    result = body["result"]
    assert len(result) == 5
    assert len({item["label"] for item in result}) == 5
    assert all(item["label"] == item["label"].upper() for item in result)
    assert all(item["label"] in imagenet_labels() for item in result)
    scores = [item["score"] for item in result]
    assert scores == sorted(scores, reverse=True)
    assert all(0 < s < 1 for s in scores) and sum(scores) <= 1
    assert "cf-aig-cache-status" not in response.headers


def test_labels_are_deterministic_per_image(emu: RunningEmulator) -> None:
    first = post(emu, PNG).json()["result"]
    assert post(emu, PNG).json()["result"] == first == labels_for(PNG)
    assert post(emu, make_png("blue")).json()["result"] != first


def test_json_body_form_gets_the_same_labels(emu: RunningEmulator) -> None:
    response = httpx.post(
        emu.url + RUN_PATH, json={"image": list(PNG)}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 200
    assert response.json()["result"] == labels_for(PNG)


def test_curl_default_content_type_is_raw(emu: RunningEmulator) -> None:
    # curl --data-binary @file.png sends application/x-www-form-urlencoded unless told otherwise.
    assert post(emu, PNG, content_type="application/x-www-form-urlencoded").status_code == 200


def test_official_sdk_gets_labels(emu: RunningEmulator) -> None:
    client = cloudflare.Cloudflare(api_token=TOKEN, base_url=emu.api_base, max_retries=0)
    result = client.ai.run(MODEL, account_id=ACCOUNT, image=list(PNG))
    assert isinstance(result, list) and len(result) == 5
    got = [(getattr(item, "label", None), getattr(item, "score", None)) for item in result]
    assert got == [(item["label"], item["score"]) for item in labels_for(PNG)]
    assert emu.stats()["billed_images"] == 1


def test_official_sdk_wrong_token_is_an_authentication_error(emu: RunningEmulator) -> None:
    client = cloudflare.Cloudflare(api_token="wrong", base_url=emu.api_base, max_retries=0)
    with pytest.raises(cloudflare.AuthenticationError):
        client.ai.run(MODEL, account_id=ACCOUNT, image=list(PNG))
    assert emu.stats()["billed_images"] == 0


@pytest.mark.parametrize(
    "data",
    [
        JPEG_HEADER + b"rest",
        b"GIF89a" + b"\x00" * 10,
        b"GIF87a" + b"\x00" * 10,
        b"RIFF\x10\x00\x00\x00WEBPVP8 ",
        b"BM" + b"\x00" * 20,
        b"II*\x00" + b"\x00" * 8,
        b"MM\x00*" + b"\x00" * 8,
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00",
        b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00",
        b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00",
    ],
)
def test_every_image_format_is_recognised_by_magic_bytes(data: bytes) -> None:
    assert is_image(data)


@pytest.mark.parametrize(
    "data", [b"hello", b"%PDF-1.7", b"\x00\x00\x00\x18ftypisom\x00\x00", b"RIFF\x00\x00\x00\x00WAVE"]
)
def test_non_images_are_not_recognised(data: bytes) -> None:
    assert not is_image(data)


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["Bearer wrong", "Bearer", "Basic dXNlcjpwYXNz", None])
def test_wrong_or_missing_token_is_401(emu: RunningEmulator, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    response = post(emu, PNG, token=None, headers=headers)
    assert response.status_code == 401
    assert error_of(response)["code"] == 10000
    assert emu.stats()["billed_images"] == 0


def test_any_bearer_passes_when_no_token_is_set() -> None:
    with start_emulator(EmulatorOptions()) as emu:
        assert post(emu, PNG, token="whatever").status_code == 200
        assert post(emu, PNG, token=None).status_code == 401


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"not an image at all", "application/octet-stream", 400, 5004),
        (b"", "image/png", 400, 3003),
        (b'{"image": [1, 2, 300]}', "application/json", 400, 5004),
        (b'{"image": "abc"}', "application/json", 400, 5004),
        (b'{"picture": [1, 2]}', "application/json", 400, 5004),
        (b"{not json", "application/json", 400, 5004),
        (b'{"image": [104, 105]}', "application/json", 400, 5004),
        (b'{"image": []}', "application/json", 400, 3003),
        (b'{"image": 1000000000000}', "application/json", 400, 5004),
        (b"[1, 2, 3]", "application/json", 400, 5004),
    ],
)
def test_bad_bodies_get_documented_codes(
    emu: RunningEmulator, body: bytes, content_type: str, status: int, code: int
) -> None:
    response = post(emu, body, content_type=content_type)
    assert response.status_code == status
    assert error_of(response)["code"] == code
    assert emu.stats()["billed_images"] == 0
    assert emu.stats()["errors_by_code"] == {str(code): 1}


def test_unknown_model_is_5007(emu: RunningEmulator) -> None:
    response = post(emu, PNG, path=f"/client/v4/accounts/{ACCOUNT}/ai/run/@cf/meta/llama-3")
    assert response.status_code == 400 and error_of(response)["code"] == 5007


def test_unknown_route_is_404(emu: RunningEmulator) -> None:
    assert post(emu, PNG, path="/client/v4/nothing/here").status_code == 404
    assert httpx.get(emu.url + "/elsewhere").status_code == 404


def test_body_over_max_bytes_is_413_and_the_connection_survives() -> None:
    with start_emulator(EmulatorOptions(max_bytes=1000)) as emu, httpx.Client() as client:
        response = post(emu, JPEG_HEADER + b"x" * 5000, token="t", client=client)
        assert response.status_code == 413 and error_of(response)["code"] == 3006
        assert post(emu, PNG, token="t", client=client).status_code == 200
        assert emu.stats()["status_counts"] == {"413": 1, "200": 1}


def test_chunked_bodies_are_read() -> None:
    with start_emulator(EmulatorOptions(max_bytes=1000)) as emu:
        url = emu.url + RUN_PATH
        headers = {"Authorization": "Bearer t", "Content-Type": "image/png"}
        assert httpx.post(url, content=iter([PNG[:10], PNG[10:]]), headers=headers).status_code == 200
        big = iter([JPEG_HEADER, b"x" * 2000])
        assert httpx.post(url, content=big, headers=headers).status_code == 413
        assert emu.stats()["billed_images"] == 1


def test_daily_cap_answers_3036_and_resets_at_midnight_utc() -> None:
    clock = FakeClock(datetime(2025, 3, 1, 23, 59, 0, tzinfo=UTC))
    # Room for two images: 2 x 0.228055 = 0.45611 <= 0.5 < 3 x 0.228055.
    options = EmulatorOptions(daily_neurons=0.5)
    with start_emulator(options, clock=clock) as emu:
        assert post(emu, PNG, token="t").status_code == 200
        assert post(emu, make_png("blue"), token="t").status_code == 200
        response = post(emu, make_png("green"), token="t")
        assert response.status_code == 429
        error = error_of(response)
        assert error["code"] == 3036 and "daily free allocation" in error["message"]
        clock.now += timedelta(minutes=1)  # 00:00 UTC: a new allocation
        assert post(emu, make_png("green"), token="t").status_code == 200
        stats = emu.stats()
        assert stats["billed_images"] == 3
        assert stats["micro_neurons"] == 3 * MICRO_NEURONS_PER_IMAGE
        assert stats["micro_neurons_today"] == MICRO_NEURONS_PER_IMAGE
        assert stats["day"] == "2025-03-02"


def test_per_minute_limit_answers_3021_with_retry_after() -> None:
    clock = FakeClock(datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC))
    with start_emulator(EmulatorOptions(rpm=3), clock=clock) as emu:
        for _ in range(3):
            assert post(emu, PNG, token="t").status_code == 200
        clock.now += timedelta(seconds=20)
        response = post(emu, PNG, token="t")
        assert response.status_code == 429 and error_of(response)["code"] == 3021
        assert response.headers["retry-after"] == "40"
        clock.now += timedelta(seconds=41)
        assert post(emu, PNG, token="t").status_code == 200
        assert emu.stats()["billed_images"] == 4


def test_injected_500s_and_429s() -> None:
    with start_emulator(EmulatorOptions(error_rate=1.0)) as emu:
        response = post(emu, PNG, token="t")
        assert response.status_code == 500 and "code" not in error_of(response)
    with start_emulator(EmulatorOptions(rate_limit_rate=1.0, retry_after=2.5)) as emu:
        codes = []
        for _ in range(4):
            response = post(emu, PNG, token="t")
            assert response.status_code == 429 and response.headers["retry-after"] == "2.5"
            codes.append(error_of(response)["code"])
        assert codes == [3040, 3021, 3040, 3021]
        assert emu.stats()["billed_images"] == 0


def test_dropped_connections_bill_nothing() -> None:
    with start_emulator(EmulatorOptions(drop_rate=1.0)) as emu:
        with pytest.raises(httpx.RemoteProtocolError):
            post(emu, PNG, token="t")
        stats = emu.stats()
        assert stats["dropped"] == 1 and stats["billed_images"] == 0 and stats["requests"] == 1


def test_hangs_bill_nothing_and_stop_promptly() -> None:
    with start_emulator(EmulatorOptions(hang_rate=1.0, hang_seconds=30)) as emu:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(emu.url + RUN_PATH, content=PNG, headers={"Authorization": "Bearer t"},
                       timeout=httpx.Timeout(5, read=0.05))  # fmt: skip
        assert emu.stats()["hung"] == 1 and emu.stats()["billed_images"] == 0
    # Leaving the block woke the hung handler instead of waiting 30 s: this test is fast.


def test_latency_is_added() -> None:
    with start_emulator(EmulatorOptions(latency_ms=30, jitter_ms=5, seed=1)) as emu:
        response = post(emu, PNG, token="t")
        assert response.status_code == 200
        assert response.elapsed >= timedelta(milliseconds=30)


def test_fault_draws_are_reproducible_with_a_seed() -> None:
    def statuses() -> list[int]:
        with start_emulator(EmulatorOptions(error_rate=0.5, seed=3)) as emu, httpx.Client() as c:
            return [post(emu, PNG, token="t", client=c).status_code for _ in range(20)]

    first = statuses()
    assert first == statuses()
    assert set(first) == {200, 500}


# -- gateway ---------------------------------------------------------------------------------------


def test_gateway_miss_then_hit_bills_once(emu: RunningEmulator) -> None:
    headers = {"cf-aig-cache-ttl": "3600"}
    first = post(emu, PNG, path=GATEWAY_PATH, headers=headers)
    second = post(emu, PNG, path=GATEWAY_PATH, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.headers["cf-aig-cache-status"] == "MISS"
    assert second.headers["cf-aig-cache-status"] == "HIT"
    assert first.json() == second.json()
    stats = emu.stats()
    assert stats["billed_images"] == 1 and stats["micro_neurons"] == MICRO_NEURONS_PER_IMAGE
    assert stats["cache_hits"] == 1 and stats["cache_misses"] == 1 and stats["requests"] == 2


def test_gateway_without_cache_header_bills_every_time(emu: RunningEmulator) -> None:
    for _ in range(2):
        response = post(emu, PNG, path=GATEWAY_PATH)
        assert response.status_code == 200 and "cf-aig-cache-status" not in response.headers
    assert emu.stats()["billed_images"] == 2 and emu.stats()["paid_twice"] == 1


def test_gateway_skip_cache_and_expiry() -> None:
    clock = FakeClock(datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC))
    with start_emulator(EmulatorOptions(), clock=clock) as emu:
        ttl = {"cf-aig-cache-ttl": "60"}
        assert post(emu, PNG, path=GATEWAY_PATH, headers=ttl).headers["cf-aig-cache-status"] == "MISS"
        skip = {**ttl, "cf-aig-skip-cache": "true"}
        assert "cf-aig-cache-status" not in post(emu, PNG, path=GATEWAY_PATH, headers=skip).headers
        assert post(emu, PNG, path=GATEWAY_PATH, headers=ttl).headers["cf-aig-cache-status"] == "HIT"
        clock.now += timedelta(seconds=61)
        assert post(emu, PNG, path=GATEWAY_PATH, headers=ttl).headers["cf-aig-cache-status"] == "MISS"
        assert emu.stats()["billed_images"] == 3


def test_gateway_hit_is_served_past_the_daily_cap() -> None:
    with start_emulator(EmulatorOptions(daily_neurons=0.3)) as emu:
        ttl = {"cf-aig-cache-ttl": "3600"}
        assert post(emu, PNG, path=GATEWAY_PATH, headers=ttl, token="t").status_code == 200
        assert post(emu, make_png("blue"), token="t").status_code == 429
        assert post(emu, PNG, path=GATEWAY_PATH, headers=ttl, token="t").status_code == 200
        assert emu.stats()["billed_images"] == 1


# -- stats -----------------------------------------------------------------------------------------


def test_stats_endpoint_and_reset(emu: RunningEmulator) -> None:
    post(emu, PNG)
    post(emu, PNG)
    post(emu, b"junk")
    stats = httpx.get(emu.url + "/__emulator/stats").json()
    assert stats == emu.stats()
    assert stats["requests"] == 3 and stats["billed_images"] == 2
    assert stats["micro_neurons"] == 2 * MICRO_NEURONS_PER_IMAGE
    assert stats["neurons"] == pytest.approx(0.45611)
    assert stats["distinct_billed"] == 1 and stats["paid_twice"] == 1
    assert stats["status_counts"] == {"200": 2, "400": 1}
    assert stats["errors_by_code"] == {"5004": 1}
    assert stats["bytes_received"] == 2 * len(PNG) + 4
    expected_keys = {"requests", "billed_images", "micro_neurons", "neurons", "errors_by_code",
                     "status_counts", "cache_hits", "cache_misses", "dropped", "hung",
                     "bytes_received", "distinct_billed", "paid_twice"}  # fmt: skip
    assert expected_keys <= set(stats)
    assert httpx.post(emu.url + "/__emulator/reset").status_code == 200
    stats = emu.stats()
    assert stats["requests"] == 0 and stats["billed_images"] == 0 and stats["paid_twice"] == 0


def test_counters_are_exact_under_concurrency(emu: RunningEmulator) -> None:
    bodies = [JPEG_HEADER + i.to_bytes(4, "big") for i in range(200)]
    with httpx.Client(limits=httpx.Limits(max_connections=16)) as client:
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda b: post(emu, b, client=client).status_code, bodies))
    assert codes == [200] * 200
    stats = emu.stats()
    assert stats["requests"] == stats["billed_images"] == stats["distinct_billed"] == 200
    assert stats["micro_neurons"] == 200 * MICRO_NEURONS_PER_IMAGE and stats["paid_twice"] == 0


def test_serve_runs_until_sigterm() -> None:
    seen: list[int] = []

    def ready(emu: RunningEmulator) -> None:
        seen.append(post(emu, PNG, token="t").status_code)
        # Deliver SIGTERM from another thread, as `kill` would, while serve() waits.
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()

    previous = signal.getsignal(signal.SIGTERM)
    serve(EmulatorOptions(), on_ready=ready)
    assert seen == [200]
    assert signal.getsignal(signal.SIGTERM) == previous
