"""The client and the stand-in agree on WORKERS_AI.md: WorkersAIClient over real HTTP against the
emulator, for each documented outcome and under injected faults.

The fault soak asserts the billing invariant the pipeline relies on: every call ends in a
Classification or a typed ApiError; the emulator billed exactly the successes; every connection
lost after sending surfaced as OutcomeUnknown; nothing was billed twice.
"""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from collections.abc import Iterator
from typing import Any

import cloudflare
import pytest
from PIL import Image

from cfclassify.client import Classification, WorkersAIClient
from cfclassify.config import CloudflareSettings, RunSettings, Secret
from cfclassify.emulator import EmulatorOptions, RunningEmulator, start_emulator
from cfclassify.errors import (
    ApiError,
    AuthError,
    BadImage,
    ModelError,
    OutcomeUnknown,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimited,
)

TOKEN = "contract-token-xyz"
ACCOUNT = "acc-contract"


def _base_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 120, 90)).save(buf, "JPEG")
    return buf.getvalue()


BASE_JPEG = _base_jpeg()


def jpeg(seed: int = 0) -> bytes:
    """A distinct JPEG per seed (bytes after the end marker: still a JPEG, another SHA-256)."""
    return BASE_JPEG + seed.to_bytes(4, "big")


def settings(emu: RunningEmulator, **overrides: Any) -> CloudflareSettings:
    values: dict[str, Any] = {
        "account_id": ACCOUNT,
        "api_token": Secret(TOKEN),
        "api_base": emu.api_base,
        "gateway_base": emu.gateway_base,
    }
    return CloudflareSettings(**{**values, **overrides})


def fast_run(**overrides: Any) -> RunSettings:
    # A high rpm keeps the pacer out of the way: these tests are about the contract.
    values: dict[str, Any] = {
        "max_retries": 4, "backoff_base": 0.001, "backoff_max": 1.0, "requests_per_minute": 600_000,
    }  # fmt: skip
    return RunSettings(**{**values, **overrides})


async def classify_all(
    cf: CloudflareSettings, run: RunSettings, images: list[bytes]
) -> list[Classification | ApiError]:
    async with WorkersAIClient(cf, run) as client:
        limit = asyncio.Semaphore(run.concurrency)

        async def one(data: bytes) -> Classification | ApiError:
            async with limit:
                try:
                    return await client.classify(data)
                except ApiError as exc:
                    return exc

        return list(await asyncio.gather(*(one(data) for data in images)))


def classify_one(cf: CloudflareSettings, data: bytes, **run: Any) -> Classification | ApiError:
    return asyncio.run(classify_all(cf, fast_run(**run), [data]))[0]


@pytest.fixture
def emu() -> Iterator[RunningEmulator]:
    with start_emulator(EmulatorOptions(token=TOKEN)) as running:
        yield running


@pytest.mark.parametrize("body_form", ["raw", "json"])
def test_client_and_sdk_get_the_same_labels(emu: RunningEmulator, body_form: str) -> None:
    data = jpeg(1)
    outcome = classify_one(settings(emu, body_form=body_form), data)
    assert isinstance(outcome, Classification) and outcome.attempts == 1
    sdk = cloudflare.Cloudflare(api_token=TOKEN, base_url=emu.api_base, max_retries=0)
    result = sdk.ai.run("@cf/microsoft/resnet-50", account_id=ACCOUNT, image=list(data))
    assert isinstance(result, list)
    assert [(lab.label, lab.score) for lab in outcome.labels] == [
        (getattr(item, "label", None), getattr(item, "score", None)) for item in result
    ]


def test_gateway_cache_through_the_client(emu: RunningEmulator) -> None:
    cf = settings(emu, gateway_id="gw", gateway_cache_ttl=3600)
    first, second = (classify_one(cf, jpeg(2)) for _ in range(2))
    assert isinstance(first, Classification) and first.cache_status == "MISS"
    assert isinstance(second, Classification) and second.cache_status == "HIT"
    assert first.labels == second.labels
    assert emu.stats()["billed_images"] == 1


def test_error_envelopes_map_onto_the_error_tree(emu: RunningEmulator) -> None:
    assert isinstance(classify_one(settings(emu, api_token=Secret("nope")), jpeg()), AuthError)
    assert isinstance(classify_one(settings(emu), b"definitely not an image"), BadImage)
    assert isinstance(classify_one(settings(emu, model="@cf/meta/llama-3"), jpeg()), ModelError)
    assert emu.stats()["billed_images"] == 0


def test_quota_size_and_rate_limits_through_the_client() -> None:
    options = EmulatorOptions(daily_neurons=0.3, max_bytes=2000, rpm=2)
    with start_emulator(options) as emu:
        cf = settings(emu)
        too_big = classify_one(cf, b"\xff\xd8\xff" + b"x" * 5000)
        assert isinstance(too_big, PayloadTooLarge) and too_big.code == 3006
        assert isinstance(classify_one(cf, jpeg(3)), Classification)
        quota = classify_one(cf, jpeg(4))
        assert isinstance(quota, QuotaExceeded) and quota.code == 3036 and quota.attempts == 1
        # The third request this minute (413s are refused before counting) is over rpm=2, and
        # its Retry-After (~60 s) exceeds backoff_max.
        limited = classify_one(cf, jpeg(5))
        assert isinstance(limited, RateLimited) and limited.code == 3021
        assert limited.retry_after is not None and limited.retry_after > 1.0
        assert emu.stats()["billed_images"] == 1


def test_injected_429s_are_retried_to_success() -> None:
    options = EmulatorOptions(rate_limit_rate=0.5, retry_after=0.001, seed=11)
    with start_emulator(options) as emu:
        results = asyncio.run(classify_all(settings(emu), fast_run(max_retries=10),
                                           [jpeg(i) for i in range(20)]))  # fmt: skip
        assert all(isinstance(r, Classification) for r in results)
        assert sum(r.attempts for r in results if isinstance(r, Classification)) > 20
        assert emu.stats()["billed_images"] == 20 and emu.stats()["paid_twice"] == 0


def test_fault_soak_ends_every_call_in_a_result_or_a_typed_error() -> None:
    options = EmulatorOptions(
        error_rate=0.15, rate_limit_rate=0.15, retry_after=0.002, drop_rate=0.05,
        hang_rate=0.03, hang_seconds=2, latency_ms=1, jitter_ms=2, seed=5,
    )  # fmt: skip
    images = [jpeg(i) for i in range(150)]
    with start_emulator(options) as emu:
        # 0.5 s is far above a normal answer even on a loaded machine (an answer that timed out
        # would be billed yet reported unknown, breaking the equalities below) and below a hang.
        cf = settings(emu, read_timeout=0.5)
        results = asyncio.run(classify_all(cf, fast_run(concurrency=8, max_retries=3), images))
        stats = emu.stats()
    kinds = Counter(type(r).__name__ for r in results)
    assert all(isinstance(r, Classification | ApiError) for r in results), kinds
    successes = sum(isinstance(r, Classification) for r in results)
    unknown = sum(isinstance(r, OutcomeUnknown) for r in results)
    assert successes > 50, kinds
    assert unknown > 0, kinds
    assert stats["billed_images"] == successes
    assert unknown == stats["dropped"] + stats["hung"]
    assert stats["paid_twice"] == 0
    assert set(stats["status_counts"]) <= {"200", "429", "500"}
