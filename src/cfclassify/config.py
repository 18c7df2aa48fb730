"""Settings: built-in defaults < config.toml < environment < command-line flags, validated once.

Each ``[section]`` of config.toml is a frozen, keyword-only dataclass below; its fields and their
annotations are the schema, so an unknown key or a value of the wrong type is reported with the
file and the key. Environment variables: ``CFCLASSIFY_<SECTION>_<KEY>`` for every key (for
instance ``CFCLASSIFY_RUN_CONCURRENCY=16``), plus Cloudflare's own names for credentials:
``CLOUDFLARE_ACCOUNT_ID``, ``CLOUDFLARE_API_TOKEN``, ``CLOUDFLARE_BASE_URL``.

The API token is held in a ``Secret`` whose repr and str never show it, so it cannot leak into a
log line, an error message or a traceback's locals by accident. It is never read from config.toml
itself (that file is meant to be committed): only from the environment or ``api_token_file``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError

DEFAULT_CONFIG_NAME = "config.toml"
DEFAULT_API_BASE = "https://api.cloudflare.com/client/v4"
DEFAULT_GATEWAY_BASE = "https://gateway.ai.cloudflare.com/v1"
DEFAULT_MODEL = "@cf/microsoft/resnet-50"
DEFAULT_EXTENSIONS = (
    "jpg", "jpeg", "jpe", "png", "gif", "webp", "bmp", "tif", "tiff", "heic", "heif", "avif",
)  # fmt: skip
DEFAULT_EXCLUDE = ("@eaDir", "#recycle", "$RECYCLE.BIN", "#snapshot", "lost+found")


class Secret:
    """A string that does not show itself. Call ``reveal()`` at the one place it is sent."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:  # pickling would write the token somewhere: refuse
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True, kw_only=True)
class CloudflareSettings:
    account_id: str | None = None
    api_token: Secret | None = None
    api_token_file: str | None = None
    api_base: str = DEFAULT_API_BASE
    model: str = DEFAULT_MODEL
    gateway_id: str | None = None
    gateway_base: str = DEFAULT_GATEWAY_BASE
    gateway_token: Secret | None = None
    gateway_cache_ttl: int = 0  # seconds; 0 sends no cf-aig-cache-ttl header
    body_form: Literal["raw", "json"] = "raw"
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def require_credentials(self) -> tuple[str, Secret]:
        """The account id and token, or a ConfigError that names what to set."""
        if not self.account_id:
            raise ConfigError(
                "no Cloudflare account id: set CLOUDFLARE_ACCOUNT_ID "
                "(or cloudflare.account_id in config.toml)"
            )
        if self.api_token is None or not self.api_token.reveal():
            raise ConfigError(
                "no Cloudflare API token: set CLOUDFLARE_API_TOKEN "
                "(or cloudflare.api_token_file in config.toml)"
            )
        return self.account_id, self.api_token


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    concurrency: int = 8
    requests_per_minute: int = 3000
    max_retries: int = 6
    backoff_base: float = 0.5  # seconds; doubles per attempt, with full jitter
    backoff_max: float = 60.0
    drain_timeout: float = 30.0  # seconds to wait for in-flight requests on Ctrl-C


@dataclass(frozen=True, kw_only=True)
class UploadSettings:
    short_side: int = 256  # 0 sends the original bytes
    quality: int = 90
    max_pixels: int = 178_956_970  # Pillow's own decompression-bomb error threshold


@dataclass(frozen=True, kw_only=True)
class BudgetSettings:
    daily_neurons: float = 10_000.0
    reserve_neurons: float = 0.0


@dataclass(frozen=True, kw_only=True)
class PricingSettings:
    neurons_per_million_images: int = 228_055
    free_neurons_per_day: float = 10_000.0
    usd_per_thousand_neurons: float = 0.011


@dataclass(frozen=True, kw_only=True)
class WalkSettings:
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    include_hidden: bool = False
    follow_symlinks: bool = False


@dataclass(frozen=True, kw_only=True)
class XmpSettings:
    sidecar_name: Literal["append", "replace"] = "append"  # photo.jpg.xmp or photo.xmp
    root_tag: str = "cfclassify"
    min_score: float = 0.2


@dataclass(frozen=True, kw_only=True)
class Settings:
    db: str = "cfclassify.db"
    cloudflare: CloudflareSettings = field(default_factory=CloudflareSettings)
    run: RunSettings = field(default_factory=RunSettings)
    upload: UploadSettings = field(default_factory=UploadSettings)
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    pricing: PricingSettings = field(default_factory=PricingSettings)
    walk: WalkSettings = field(default_factory=WalkSettings)
    xmp: XmpSettings = field(default_factory=XmpSettings)

    def replace(self, **overrides: Any) -> Settings:
        """A copy with ``section__key=value`` or top-level overrides, validated like the file."""
        return _apply(self, {k: v for k, v in overrides.items() if v is not None}, "flag")


SECTIONS: dict[str, type] = {
    f.name: f.type if isinstance(f.type, type) else globals()[str(f.type)]
    for f in dataclasses.fields(Settings)
    if f.name != "db"
}


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings. ``config_path`` None means ./config.toml if present, else defaults.

    ``overrides`` are the command-line flags as ``{"run__concurrency": 4, "db": "x.db"}``; None
    values are ignored, so click options can be passed through as they are.
    """
    env = os.environ if env is None else env
    settings = Settings()
    path = _choose_config(config_path, env)
    if path is not None:
        settings = _apply(settings, _flatten(_read_toml(path), str(path)), str(path))
    settings = _apply(settings, _from_env(env), "environment")
    if overrides:
        settings = _apply(settings, {k: v for k, v in overrides.items() if v is not None}, "flag")
    return _finish(settings, path)


def _choose_config(config_path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if config_path is None:
        config_path = env.get("CFCLASSIFY_CONFIG")
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    default = Path(DEFAULT_CONFIG_NAME)
    return default if default.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc


def _flatten(data: dict[str, Any], source: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "db":
            flat["db"] = value
        elif key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: [{key}] must be a table")
            for sub, subvalue in value.items():
                if key == "cloudflare" and sub in ("api_token", "gateway_token"):
                    raise ConfigError(
                        f"{source}: cloudflare.{sub} does not belong in a config file; "
                        f"set CLOUDFLARE_API_TOKEN (or cloudflare.api_token_file)"
                        if sub == "api_token"
                        else f"{source}: cloudflare.gateway_token does not belong in a config "
                        f"file; set CFCLASSIFY_CLOUDFLARE_GATEWAY_TOKEN"
                    )
                flat[f"{key}__{sub}"] = subvalue
        else:
            raise ConfigError(f"{source}: unknown key {key!r} (known: db, {', '.join(SECTIONS)})")
    return flat


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    aliases = {
        "CLOUDFLARE_ACCOUNT_ID": "cloudflare__account_id",
        "CLOUDFLARE_API_TOKEN": "cloudflare__api_token",
        "CLOUDFLARE_BASE_URL": "cloudflare__api_base",
        "CFCLASSIFY_DB": "db",
    }
    for name, key in aliases.items():
        if env.get(name):
            found[key] = env[name]
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            name = f"CFCLASSIFY_{section}_{f.name}".upper()
            if name in env:
                found[f"{section}__{f.name}"] = env[name]
    return found


def _apply(settings: Settings, values: Mapping[str, Any], source: str) -> Settings:
    by_section: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, value in values.items():
        if key == "db":
            top["db"] = _coerce(str, value, "db", source)
            continue
        section, _, name = key.partition("__")
        cls = SECTIONS.get(section)
        hints = typing.get_type_hints(cls) if cls else {}
        if name not in hints:
            raise ConfigError(f"{source}: unknown key {section}.{name}")
        by_section.setdefault(section, {})[name] = _coerce(hints[name], value, f"{section}.{name}", source)
    for section, changes in by_section.items():
        top[section] = dataclasses.replace(getattr(settings, section), **changes)
    return dataclasses.replace(settings, **top) if top else settings


def _coerce(hint: Any, value: Any, key: str, source: str) -> Any:
    """Turn a TOML value, an environment string or a flag into the annotated type, or say why not.

    Only environment variables are text by nature: there "8" is a number and "yes" a boolean. In
    a TOML file a string where a number belongs is a mistake worth reporting.
    """
    from_text = source == "environment"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or value == "":
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key, source)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{source}: {key} must be one of {choices}, not {value!r}")
        return value
    if origin is tuple:
        items = value.split(",") if from_text and isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{source}: {key} must be a list of strings")
        return tuple(i.strip() for i in items if i.strip())
    if hint is Secret:
        return value if isinstance(value, Secret) else Secret(_coerce(str, value, key, source))
    if hint is bool:
        if isinstance(value, bool):
            return value
        truthy, falsy = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
        if from_text and isinstance(value, str) and value.lower() in truthy + falsy:
            return value.lower() in truthy
        raise ConfigError(f"{source}: {key} must be true or false, not {value!r}")
    if hint in (int, float):
        if isinstance(value, bool) or (isinstance(value, str) and not from_text):
            raise ConfigError(f"{source}: {key} must be a number, not {value!r}")
        try:
            number = hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {key} must be a number, not {value!r}") from None
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{source}: {key} must be a whole number, not {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, not {value!r}")
        return value
    raise ConfigError(f"{source}: {key}: unsupported setting type {hint!r}")  # pragma: no cover


def _finish(settings: Settings, path: Path | None) -> Settings:
    """Cross-field checks and derived values, once, after every source is applied."""
    where = str(path) if path else "settings"
    cf = settings.cloudflare
    if cf.api_token is None and cf.api_token_file:
        token_path = Path(cf.api_token_file).expanduser()
        try:
            token = token_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{where}: cloudflare.api_token_file {token_path}: cannot read ({exc.strerror})"
            ) from exc
        settings = dataclasses.replace(settings, cloudflare=dataclasses.replace(cf, api_token=Secret(token)))
    checks: list[tuple[bool, str]] = [
        (settings.run.concurrency >= 1, "run.concurrency must be at least 1"),
        (settings.run.requests_per_minute >= 1, "run.requests_per_minute must be at least 1"),
        (settings.run.max_retries >= 0, "run.max_retries must be 0 or more"),
        (settings.upload.short_side >= 0, "upload.short_side must be 0 (original) or more"),
        (1 <= settings.upload.quality <= 95, "upload.quality must be between 1 and 95"),
        (settings.budget.daily_neurons >= 0, "budget.daily_neurons must be 0 or more"),
        (settings.budget.reserve_neurons >= 0, "budget.reserve_neurons must be 0 or more"),
        (
            settings.pricing.neurons_per_million_images > 0,
            "pricing.neurons_per_million_images must be positive",
        ),
        (0 <= settings.xmp.min_score <= 1, "xmp.min_score must be between 0 and 1"),
        (settings.cloudflare.gateway_cache_ttl >= 0, "cloudflare.gateway_cache_ttl must be 0 or more"),
        (bool(settings.walk.extensions), "walk.extensions must name at least one extension"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{where}: {message}")
    ext = tuple(e.lower().lstrip(".") for e in settings.walk.extensions)
    return dataclasses.replace(settings, walk=dataclasses.replace(settings.walk, extensions=ext))
