"""Shared pieces of the benchmarks and the soak suite: the stand-in in its own process, corpora
cached under ``bench/work/``, machine facts, and the Markdown sections of ``bench/RESULTS.md``.

The stand-in runs as a separate ``python -m cfclassify emulate`` process for the throughput
benchmarks: the real service is on another machine, and a stand-in sharing the measured
process's GIL would make the tool look slower than it is. Sections of RESULTS.md are framed by
``<!-- begin NAME -->`` / ``<!-- end NAME -->`` so a script re-run replaces its own section.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "work"  # cached corpora (git-ignored)
RESULTS = HERE / "RESULTS.md"
PYTHON = sys.executable

sys.path.insert(0, str(REPO / "src"))

TOKEN = "bench-token-0123456789"
ACCOUNT = "bench-account"


def credentials_env(api_base: str) -> dict[str, str]:
    return {
        "CLOUDFLARE_BASE_URL": api_base,
        "CLOUDFLARE_ACCOUNT_ID": ACCOUNT,
        "CLOUDFLARE_API_TOKEN": TOKEN,
    }


def child_env(api_base: str, **extra: str) -> dict[str, str]:
    """The environment of a ``python -m cfclassify`` child: ours minus cfclassify's own settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CFCLASSIFY_", "CLOUDFLARE_"))}
    env["PYTHONPATH"] = str(REPO / "src")
    return {**env, **credentials_env(api_base), **extra}


class EmulatorProcess:
    """``cfclassify emulate --port 0`` in a child process; stopped by ``stop()`` or ``with``."""

    def __init__(self, *flags: str, start_timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "cfclassify", "emulate", "--port", "0", *flags],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=child_env("unused"),
            text=True,
            cwd=str(REPO),
        )
        self.url = ""
        deadline = time.monotonic() + start_timeout
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                self.url = match.group(1)
                break
        if not self.url:
            self.stop()
            raise RuntimeError("the stand-in did not start")
        # Keep draining its stderr so a chatty log never blocks it.
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()
        self.api_base = self.url + "/client/v4"

    def _read_rest(self) -> None:
        assert self.proc.stderr is not None
        for _ in self.proc.stderr:
            pass

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/__emulator/stats", timeout=10) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data

    def reset(self) -> None:
        request = urllib.request.Request(self.url + "/__emulator/reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line() -> str:
    import PIL

    return (
        f"{os.cpu_count()} CPUs (nproc), {cpu_model()}, Python {platform.python_version()}, "
        f"Pillow {PIL.__version__}, {platform.system()} {platform.release()}"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |")
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def write_section(path: Path, name: str, text: str) -> None:
    """Put ``text`` in ``path`` as section ``name``: replace that section if present, else append."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _m: block, old, count=1)
    else:
        new = old + ("\n" if old and not old.endswith("\n\n") else "") + block
    path.write_text(new, encoding="utf-8")


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def now() -> float:
    return time.perf_counter()
