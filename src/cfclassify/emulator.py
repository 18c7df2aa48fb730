"""The local Workers AI stand-in behind ``cfclassify emulate``, the tests and the benchmarks.

A real HTTP/1.1 server on loopback that speaks ``WORKERS_AI.md``, so that cfclassify's client, the
official ``cloudflare`` SDK and curl all work against it unchanged:

* ``POST {prefix}/accounts/{account}/ai/run/{model}`` and the AI Gateway route
  ``POST {prefix}/{account}/{gateway}/workers-ai/{model}``; both body forms (raw bytes, or JSON
  ``{"image": [0-255, ...]}`` when the Content-Type is JSON); the bearer check; the success and
  error envelopes with the documented codes.
* Five UPPER-CASE ImageNet labels picked from the SHA-256 of the image: deterministic, plausible
  scores, clearly not a model. Images are recognised by magic bytes only (no decoding, for speed).
* Billing in integer micro-neurons (228,055 per image), a daily cap that resets at 00:00 UTC (the
  clock is injectable), a per-minute limit, and the gateway cache (a HIT bills nothing).
* Fault injection (latency, 500s, 429s, dropped connections, hangs) from a seeded RNG.
* ``GET /__emulator/stats`` reports what was billed; ``paid_twice`` counts distinct images billed
  more than once, which is what the "never pay twice" promise is tested against.

Requests are checked in the order a request meets Cloudflare: route, bearer, gateway cache, then
the Workers AI side (model, size, injected faults, per-minute limit, daily cap, body). The server is
the stdlib ``ThreadingHTTPServer`` with keep-alive: a thread per connection is plenty for the
client's handful of connections, and measured well above 100 requests/s on two cores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import signal
import socket
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from .config import DEFAULT_MODEL

logger = logging.getLogger(__name__)

MICRO_NEURONS_PER_IMAGE = 228_055
QUOTA_MESSAGE = (
    "AiError: you have used up your daily free allocation of 10,000 neurons, please upgrade to "
    "Cloudflare's Workers Paid plan if you would like to continue usage."
)
_RUN_ROUTE = re.compile(r"^(?P<prefix>.*)/accounts/(?P<account>[^/]+)/ai/run/(?P<model>.+)$")
_GATEWAY_ROUTE = re.compile(
    r"^(?P<prefix>.*)/(?P<account>[^/]+)/(?P<gateway>[^/]+)/workers-ai/(?P<model>.+)$"
)
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00",
          b"MM\x00*")  # fmt: skip
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif",
                b"avis"}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class EmulatorOptions:
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    token: str | None = None  # require exactly this bearer; None: any non-empty bearer passes
    latency_ms: float = 0
    jitter_ms: float = 0  # up to this much more, uniformly
    error_rate: float = 0  # share of 500s
    rate_limit_rate: float = 0  # share of 429s (3040 and 3021 in turn) with Retry-After
    retry_after: float = 1.0  # seconds sent in Retry-After
    drop_rate: float = 0  # read the request, close without answering, bill nothing
    hang_rate: float = 0  # answer nothing for hang_seconds, then close, bill nothing
    hang_seconds: float = 30
    rpm: int = 0  # requests per minute (0: no limit); 429 code 3021 past it
    daily_neurons: float = 0  # daily cap (0: none); 429 code 3036 past it
    max_bytes: int = 10 * 1024 * 1024  # larger bodies: 413 code 3006
    seed: int | None = None  # fault randomness only; labels are always deterministic
    model: str = DEFAULT_MODEL  # the one model id that exists


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet class names, upper case, in class-id order."""
    text = resources.files("cfclassify").joinpath("imagenet_labels.txt").read_text("utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def labels_for(image: bytes) -> list[dict[str, Any]]:
    """Five distinct labels with descending scores summing below 1, from the image's SHA-256."""
    digest = hashlib.sha256(image).digest()
    names = imagenet_labels()
    chosen: list[str] = []
    for i in range(0, len(digest) - 1, 2):
        name = names[int.from_bytes(digest[i : i + 2], "big") % len(names)]
        if name not in chosen:
            chosen.append(name)
        if len(chosen) == 5:
            break
    # Squared weights give one dominant class and a tail, like a softmax; the extra weight stands
    # for the 995 classes not returned, so the five never sum to 1.
    weights = sorted(((b + 16) ** 2 for b in digest[20:25]), reverse=True)
    total = sum(weights) + (digest[25] + 64) ** 2
    return [{"label": name, "score": round(w / total, 6)} for name, w in zip(chosen, weights, strict=False)]


def is_image(data: bytes) -> bool:
    """True for the magic bytes of JPEG, PNG, GIF, WEBP, BMP, TIFF and HEIF/AVIF."""
    return (
        data.startswith(_MAGIC)
        or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
        or (data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS)
    )


class _Answer(Exception):
    """Raised inside the handler to send an error envelope (or nothing at all)."""

    def __init__(
        self, status: int, code: int | None = None, message: str = "", *,
        headers: dict[str, str] | None = None, silent: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.silent = silent  # close the connection without a response


class _State:
    """Counters, billing, the rate window and the gateway cache; every method takes the lock."""

    def __init__(self, options: EmulatorOptions, clock: Callable[[], datetime]) -> None:
        self.options = options
        self.clock = clock
        self.lock = threading.Lock()
        self.rng = random.Random(options.seed)
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.requests = self.billed_images = self.micro_neurons = 0
            self.cache_hits = self.cache_misses = self.dropped = self.hung = 0
            self.bytes_received = 0
            self.errors_by_code: Counter[str] = Counter()
            self.status_counts: Counter[str] = Counter()
            self.billed: Counter[str] = Counter()  # image sha256 -> times billed
            self.day: date | None = None
            self.micro_neurons_today = 0
            self.window: deque[float] = deque()  # start times of requests in the last minute
            self.cache: dict[str, tuple[float, bytes]] = {}  # key -> (expiry, response body)
            self.rate_limit_turn = 0

    def now(self) -> datetime:
        now = self.clock()
        return now if now.tzinfo else now.replace(tzinfo=UTC)

    def draw(self) -> tuple[float, float]:
        with self.lock:
            return self.rng.random(), self.rng.random()

    def next_rate_limit_code(self) -> int:
        with self.lock:
            self.rate_limit_turn += 1
            return 3040 if self.rate_limit_turn % 2 else 3021

    def admit(self) -> float | None:
        """Count a request against the per-minute limit; seconds to wait when over it."""
        if self.options.rpm <= 0:
            return None
        now = self.now().timestamp()
        with self.lock:
            while self.window and self.window[0] <= now - 60:
                self.window.popleft()
            if len(self.window) >= self.options.rpm:
                return self.window[0] + 60 - now
            self.window.append(now)
            return None

    def bill(self, image_hash: str) -> bool:
        """Charge one image to today's allocation; False when the daily cap leaves no room."""
        today = self.now().date()
        cap = round(self.options.daily_neurons * 1_000_000)
        with self.lock:
            if self.day != today:
                self.day, self.micro_neurons_today = today, 0
            if cap and self.micro_neurons_today + MICRO_NEURONS_PER_IMAGE > cap:
                return False
            self.micro_neurons_today += MICRO_NEURONS_PER_IMAGE
            self.micro_neurons += MICRO_NEURONS_PER_IMAGE
            self.billed_images += 1
            self.billed[image_hash] += 1
            return True

    def cached(self, key: str) -> bytes | None:
        now = self.now().timestamp()
        with self.lock:
            entry = self.cache.get(key)
            if entry is None or entry[0] <= now:
                self.cache_misses += 1
                return None
            self.cache_hits += 1
            return entry[1]

    def store(self, key: str, ttl: float, body: bytes) -> None:
        with self.lock:
            self.cache[key] = (self.now().timestamp() + ttl, body)

    def count(self, **fields: int) -> None:
        with self.lock:
            for name, amount in fields.items():
                setattr(self, name, getattr(self, name) + amount)

    def answered(self, status: int, code: int | None) -> None:
        with self.lock:
            self.status_counts[str(status)] += 1
            if code is not None:
                self.errors_by_code[str(code)] += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "billed_images": self.billed_images,
                "micro_neurons": self.micro_neurons,
                "neurons": self.micro_neurons / 1_000_000,
                "micro_neurons_today": self.micro_neurons_today,
                "day": self.day.isoformat() if self.day else None,
                "errors_by_code": dict(self.errors_by_code),
                "status_counts": dict(self.status_counts),
                "cache_hits": self.cache_hits,
                "cache_misses": self.cache_misses,
                "dropped": self.dropped,
                "hung": self.hung,
                "bytes_received": self.bytes_received,
                "distinct_billed": len(self.billed),
                "paid_twice": sum(1 for n in self.billed.values() if n > 1),
            }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 drops connections under a burst of clients

    def __init__(self, options: EmulatorOptions, state: _State) -> None:
        self.state = state
        self.options = options
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__((options.host, options.port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (a killed run, a read timeout) is routine here, not a fault.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses its pooled connections
    disable_nagle_algorithm = True  # headers and body go out in two writes; don't delay the 2nd
    server: _Server
    server_version = "cfclassify-emulator"

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        logger.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/__emulator/stats":
            self._send(200, json.dumps(self.server.state.snapshot()).encode())
        else:
            self._send(404, _envelope_error(7000, "No route for that URI"))

    def do_POST(self) -> None:
        state = self.server.state
        path = unquote(urlsplit(self.path).path)
        try:
            body = self._read_body()
        except _Answer as answer:
            state.answered(answer.status, answer.code)
            self._send_error(answer)
            return
        if path == "/__emulator/reset":
            state.reset()
            self._send(200, b'{"success": true}')
            return
        state.count(requests=1, bytes_received=len(body))
        try:
            data, extra = self._handle(path, body)
        except _Answer as answer:
            if not answer.silent:
                state.answered(answer.status, answer.code)
            self._send_error(answer)
            return
        state.answered(200, None)
        self._send(200, data, extra)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
                total += size
            while self.rfile.readline().strip():  # trailers
                pass
            if total > self.server.options.max_bytes:
                self.server.state.count(requests=1, bytes_received=total)
                raise _Answer(413, 3006, "Request is too large")
            return b"".join(chunks)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise _Answer(400, 3003, "Invalid Content-Length") from None
        if length > self.server.options.max_bytes:
            # Read it anyway: answering before the client has finished sending would reset the
            # connection under it and turn a clean 413 into a write error.
            remaining = length
            while remaining > 0 and (chunk := self.rfile.read(min(remaining, 1 << 20))):
                remaining -= len(chunk)
            self.server.state.count(requests=1, bytes_received=length)
            raise _Answer(413, 3006, "Request is too large")
        return self.rfile.read(length) if length else b""

    def _handle(self, path: str, body: bytes) -> tuple[bytes, dict[str, str]]:
        options, state = self.server.options, self.server.state
        route = _RUN_ROUTE.match(path) or _GATEWAY_ROUTE.match(path)
        if route is None:
            raise _Answer(404, 7000, "No route for that URI")
        self._check_bearer()
        gateway = "gateway" in route.groupdict()
        model = route["model"]
        ttl = _float(self.headers.get("cf-aig-cache-ttl")) if gateway else None
        skip = self.headers.get("cf-aig-skip-cache", "").lower() == "true"
        cache_key = ""
        extra: dict[str, str] = {}
        if gateway and ttl and ttl > 0 and not skip:
            # The gateway's default key covers the whole request body (and the model route).
            cache_key = (
                self.headers.get("cf-aig-cache-key")
                or hashlib.sha256(model.encode() + b"\0" + body).hexdigest()
            )
            hit = state.cached(cache_key)
            if hit is not None:
                return hit, {"cf-aig-cache-status": "HIT"}
            extra["cf-aig-cache-status"] = "MISS"
        if model != options.model:
            raise _Answer(400, 5007, f"No such model {model} or task")
        self._inject_faults()
        wait = state.admit()
        if wait is not None:
            raise _Answer(429, 3021, "Rate limited: too many requests this minute",
                          headers={"Retry-After": str(max(1, math.ceil(wait)))})  # fmt: skip
        image = self._image_of(body)
        if not state.bill(hashlib.sha256(image).hexdigest()):
            raise _Answer(429, 3036, QUOTA_MESSAGE)
        data = json.dumps(
            {"result": labels_for(image), "success": True, "errors": [], "messages": []}
        ).encode()
        if cache_key and ttl:
            state.store(cache_key, ttl, data)
        return data, extra

    def _check_bearer(self) -> None:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        expected = self.server.options.token
        if (
            scheme.lower() != "bearer"
            or not token.strip()
            or (expected is not None and token.strip() != expected)
        ):
            raise _Answer(401, 10000, "Authentication error")

    def _inject_faults(self) -> None:
        options, state = self.server.options, self.server.state
        delay, fault = state.draw()
        if options.latency_ms or options.jitter_ms:
            seconds = (options.latency_ms + delay * options.jitter_ms) / 1000
            self.server.stopping.wait(seconds)
        kind = _pick_fault(fault, options)
        if kind is None:
            return
        if kind == "drop":
            state.count(dropped=1)
            raise _Answer(0, silent=True)
        if kind == "hang":
            state.count(hung=1)
            self.server.stopping.wait(options.hang_seconds)
            raise _Answer(0, silent=True)
        if kind == "error":
            raise _Answer(500, None, "Internal server error")
        code = state.next_rate_limit_code()
        message = (
            "Capacity temporarily exceeded, please try again."
            if code == 3040
            else ("Rate limited: too many requests")
        )
        raise _Answer(429, code, message, headers={"Retry-After": f"{options.retry_after:g}"})

    def _image_of(self, body: bytes) -> bytes:
        if not body:
            raise _Answer(400, 3003, "Bad input: missing request body")
        if self.headers.get("Content-Type", "").lower().startswith("application/json"):
            try:
                payload = json.loads(body)
                pixels = payload["image"]
                if not isinstance(pixels, list):  # bytes(10**9) would allocate, not fail
                    raise TypeError("image is not a list")
                image = bytes(pixels)  # raises for anything but integers 0..255
            except (ValueError, TypeError, KeyError) as exc:
                raise _Answer(400, 5004, f"Invalid data: {type(exc).__name__}") from None
        else:
            image = body
        if not image:
            raise _Answer(400, 3003, "Bad input: empty image")
        if not is_image(image):
            raise _Answer(400, 5004, "Invalid data: not a supported image")
        return image

    def _send_error(self, answer: _Answer) -> None:
        if answer.silent:
            self.close_connection = True
            return
        self._send(answer.status, _envelope_error(answer.code, answer.message), answer.headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _pick_fault(draw: float, options: EmulatorOptions) -> str | None:
    """Map one uniform draw onto the fault rates, laid end to end on [0, 1)."""
    edge = 0.0
    for rate, kind in (
        (options.drop_rate, "drop"),
        (options.hang_rate, "hang"),
        (options.error_rate, "error"),
        (options.rate_limit_rate, "429"),
    ):
        edge += rate
        if draw < edge:
            return kind
    return None


def _envelope_error(code: int | None, message: str) -> bytes:
    error: dict[str, Any] = {"message": message}
    if code is not None:
        error = {"code": code, **error}
    return json.dumps({"success": False, "errors": [error], "messages": [], "result": None}).encode()


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


class RunningEmulator:
    """A started emulator; a context manager that stops it on exit (or call ``stop()``)."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        host, port = server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self.api_base = self.url + "/client/v4"
        self.gateway_base = self.url + "/gateway/v1"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02},
            name=f"emulator:{port}", daemon=True,
        )  # fmt: skip
        self._thread.start()

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.stop()

    def __repr__(self) -> str:
        return f"<RunningEmulator {self.url}>"

    def stats(self) -> dict[str, Any]:
        return self._server.state.snapshot()

    def reset(self) -> None:
        self._server.state.reset()

    def stop(self) -> None:
        """Stop serving, wake hung handlers and close open keep-alive connections."""
        if self._server.stopping.is_set():
            return
        self._server.stopping.set()
        self._server.shutdown()
        with self._server.connections_lock:
            open_connections = list(self._server.connections)
        for conn in open_connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the peer
        self._server.server_close()
        self._thread.join(timeout=5)


def start_emulator(
    options: EmulatorOptions, *, clock: Callable[[], datetime] | None = None
) -> RunningEmulator:
    """Bind, start serving in a background thread, and return the running emulator."""
    imagenet_labels()  # load once here, not in the first request's thread
    state = _State(options, clock or (lambda: datetime.now(UTC)))
    return RunningEmulator(_Server(options, state))


def serve(options: EmulatorOptions, *, on_ready: Callable[[RunningEmulator], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM (for the CLI); ``on_ready`` gets the emulator once bound."""
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with start_emulator(options) as emulator:
            logger.info("Workers AI emulator at %s (CLOUDFLARE_BASE_URL=%s)",
                        emulator.url, emulator.api_base)  # fmt: skip
            if on_ready is not None:
                on_ready(emulator)
            while not done.wait(0.5):  # a timed wait lets the signal handler run promptly
                pass
            logger.info("stopping the emulator: %s", json.dumps(emulator.stats()))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = [
    "EmulatorOptions",
    "RunningEmulator",
    "imagenet_labels",
    "is_image",
    "labels_for",
    "serve",
    "start_emulator",
]
