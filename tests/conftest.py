"""Shared fixtures. Keep them small and generic: module-specific helpers live in their test file."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

TreeSpec = Mapping[str, bytes | str]


def write_tree(base: Path, spec: TreeSpec) -> Path:
    """Write ``{"relative/path.jpg": content}`` under ``base`` (parents created); return ``base``.

    A key ending in "/" makes an empty folder. Text content is written as UTF-8.
    """
    base.mkdir(parents=True, exist_ok=True)
    for rel, content in spec.items():
        target = base / rel
        if rel.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return base


@pytest.fixture
def tmp_tree(tmp_path: Path) -> Callable[..., Path]:
    """A factory: ``tmp_tree({"a/x.jpg": b"..."}, name="photos")`` writes files under tmp_path/name."""

    def make(spec: TreeSpec, name: str = "tree") -> Path:
        return write_tree(tmp_path / name, spec)

    return make


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No CFCLASSIFY_* / CLOUDFLARE_* variables and a cwd without config.toml; returns the cwd."""
    for name in list(os.environ):
        if name.startswith(("CFCLASSIFY_", "CLOUDFLARE_")):
            monkeypatch.delenv(name)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd
