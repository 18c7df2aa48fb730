"""config.py: precedence, environment names, validation messages, secrets, the config.toml template."""

from __future__ import annotations

import dataclasses
import pickle
import tomllib
from pathlib import Path

import pytest

from cfclassify.config import SECTIONS, Secret, Settings, load_settings
from cfclassify.errors import EXIT_FATAL, ConfigError

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "config.toml"
FILE_ONLY_FORBIDDEN = {("cloudflare", "api_token"), ("cloudflare", "gateway_token")}


def write_config(tmp_path: Path, text: str, name: str = "cfg.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- precedence --------------------------------------------------------------------------------


def test_defaults_without_any_source(clean_env: Path) -> None:
    assert load_settings(env={}) == Settings()


def test_file_beats_default(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[run]\nconcurrency = 3\n")
    assert load_settings(cfg, env={}).run.concurrency == 3


def test_env_beats_file(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[run]\nconcurrency = 3\n")
    settings = load_settings(cfg, env={"CFCLASSIFY_RUN_CONCURRENCY": "5"})
    assert settings.run.concurrency == 5


def test_flag_beats_env_and_file(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, 'db = "file.db"\n[run]\nconcurrency = 3\n')
    settings = load_settings(
        cfg,
        env={"CFCLASSIFY_RUN_CONCURRENCY": "5", "CFCLASSIFY_DB": "env.db"},
        overrides={"run__concurrency": 7, "db": "flag.db"},
    )
    assert (settings.run.concurrency, settings.db) == (7, "flag.db")


def test_none_flags_do_not_override(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[run]\nconcurrency = 3\n")
    settings = load_settings(cfg, env={}, overrides={"run__concurrency": None, "db": None})
    assert settings.run.concurrency == 3
    assert settings.db == "cfclassify.db"


def test_each_level_only_changes_its_own_keys(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[run]\nconcurrency = 3\n[upload]\nquality = 70\n")
    settings = load_settings(cfg, env={"CFCLASSIFY_UPLOAD_SHORT_SIDE": "128"})
    assert settings.run.concurrency == 3
    assert settings.upload.quality == 70
    assert settings.upload.short_side == 128
    assert settings.run.max_retries == Settings().run.max_retries


def test_config_path_from_env_variable(tmp_path: Path, clean_env: Path) -> None:
    cfg = write_config(tmp_path, "[run]\nconcurrency = 2\n")
    assert load_settings(env={"CFCLASSIFY_CONFIG": str(cfg)}).run.concurrency == 2


def test_default_config_toml_in_cwd_is_read(clean_env: Path) -> None:
    write_config(clean_env, "[run]\nmax_retries = 1\n", name="config.toml")
    assert load_settings(env={}).run.max_retries == 1


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.toml", env={})


# -- environment names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "section", "key", "expected"),
    [
        ("CFCLASSIFY_RUN_CONCURRENCY", "16", "run", "concurrency", 16),
        ("CFCLASSIFY_BUDGET_DAILY_NEURONS", "2500.5", "budget", "daily_neurons", 2500.5),
        ("CFCLASSIFY_WALK_INCLUDE_HIDDEN", "yes", "walk", "include_hidden", True),
        ("CFCLASSIFY_WALK_FOLLOW_SYMLINKS", "0", "walk", "follow_symlinks", False),
        ("CFCLASSIFY_WALK_EXTENSIONS", "JPG, .Png", "walk", "extensions", ("jpg", "png")),
        ("CFCLASSIFY_CLOUDFLARE_BODY_FORM", "json", "cloudflare", "body_form", "json"),
        ("CFCLASSIFY_XMP_ROOT_TAG", "auto", "xmp", "root_tag", "auto"),
    ],
)
def test_cfclassify_env_vars(
    clean_env: Path, name: str, value: str, section: str, key: str, expected: object
) -> None:
    settings = _env_only({name: value})
    assert getattr(getattr(settings, section), key) == expected


def _env_only(env: dict[str, str]) -> Settings:
    """Settings from ``env`` alone: callers use ``clean_env`` so no ./config.toml is found."""
    return load_settings(env=env)


def test_cloudflare_aliases(clean_env: Path) -> None:
    settings = _env_only(
        {
            "CLOUDFLARE_ACCOUNT_ID": "acc123",
            "CLOUDFLARE_API_TOKEN": "tok-secret",
            "CLOUDFLARE_BASE_URL": "http://127.0.0.1:9999/client/v4",
        }
    )
    assert settings.cloudflare.account_id == "acc123"
    assert settings.cloudflare.api_token == Secret("tok-secret")
    assert settings.cloudflare.api_base == "http://127.0.0.1:9999/client/v4"
    assert settings.cloudflare.require_credentials() == ("acc123", Secret("tok-secret"))


def test_missing_credentials_name_the_variable(clean_env: Path) -> None:
    with pytest.raises(ConfigError, match="CLOUDFLARE_ACCOUNT_ID"):
        _env_only({}).cloudflare.require_credentials()
    with pytest.raises(ConfigError, match="CLOUDFLARE_API_TOKEN"):
        _env_only({"CLOUDFLARE_ACCOUNT_ID": "a"}).cloudflare.require_credentials()


def test_every_key_has_an_env_variable(clean_env: Path) -> None:
    # A non-default value for every scalar key, set only through the environment.
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = getattr(getattr(Settings(), section), f.name)
            if isinstance(default, bool):
                raw, want = ("false", False) if default else ("true", True)
            elif isinstance(default, int):
                raw, want = str(default + 1), default + 1
            elif isinstance(default, float):
                raw, want = "0.5", 0.5
            else:
                continue
            name = f"CFCLASSIFY_{section}_{f.name}".upper()
            got = getattr(getattr(_env_only({name: raw}), section), f.name)
            assert got == want, name


# -- validation messages -----------------------------------------------------------------------


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[run]\nconcurency = 4\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    assert str(cfg) in str(info.value)
    assert "run.concurency" in str(info.value)
    assert info.value.exit_code == EXIT_FATAL


def test_unknown_section_names_file_and_section(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[walker]\nfollow_symlinks = true\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    assert str(cfg) in str(info.value)
    assert "'walker'" in str(info.value)


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "run = 3\n")
    with pytest.raises(ConfigError, match=r"\[run\] must be a table"):
        load_settings(cfg, env={})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[run]\nconcurrency = "many"\n', "run.concurrency"),
        ("[run]\nconcurrency = 2.5\n", "run.concurrency"),
        ("[run]\nconcurrency = true\n", "run.concurrency"),
        ('[walk]\ninclude_hidden = "maybe"\n', "walk.include_hidden"),
        ("[walk]\nextensions = [1, 2]\n", "walk.extensions"),
        ('[cloudflare]\nbody_form = "xml"\n', "cloudflare.body_form"),
        ("[cloudflare]\nmodel = 50\n", "cloudflare.model"),
        ("db = 5\n", "db"),
    ],
)
def test_wrong_type_names_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    cfg = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    assert str(cfg) in str(info.value)
    assert key in str(info.value)


def test_toml_string_for_a_number_is_a_wrong_type(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[run]\nconcurrency = "8"\n')
    with pytest.raises(ConfigError, match="run.concurrency"):
        load_settings(cfg, env={})


def test_wrong_type_from_env_names_key_and_source(clean_env: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _env_only({"CFCLASSIFY_RUN_CONCURRENCY": "lots"})
    assert "environment" in str(info.value)
    assert "run.concurrency" in str(info.value)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[run\nconcurrency = 4\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    assert str(cfg) in str(info.value)
    assert "not valid TOML" in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[run]\nconcurrency = 0\n", "run.concurrency"),
        ("[upload]\nquality = 100\n", "upload.quality"),
        ("[upload]\nshort_side = -1\n", "upload.short_side"),
        ("[xmp]\nmin_score = 1.5\n", "xmp.min_score"),
        ("[budget]\ndaily_neurons = -1\n", "budget.daily_neurons"),
        ("[walk]\nextensions = []\n", "walk.extensions"),
    ],
)
def test_out_of_range_values_are_refused(tmp_path: Path, text: str, message: str) -> None:
    cfg = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    assert message in str(info.value)
    assert str(cfg) in str(info.value)


def test_extensions_are_normalised(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[walk]\nextensions = [".JPG", "Png"]\n')
    assert load_settings(cfg, env={}).walk.extensions == ("jpg", "png")


# -- secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["api_token", "gateway_token"])
def test_tokens_in_the_config_file_are_refused(tmp_path: Path, key: str) -> None:
    cfg = write_config(tmp_path, f'[cloudflare]\n{key} = "sekrit-value"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    message = str(info.value)
    assert str(cfg) in message
    assert f"cloudflare.{key}" in message
    assert "sekrit-value" not in message
    assert "CLOUDFLARE_API_TOKEN" in message or "CFCLASSIFY_CLOUDFLARE_GATEWAY_TOKEN" in message


def test_api_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  file-token\n", encoding="utf-8")
    cfg = write_config(tmp_path, f'[cloudflare]\napi_token_file = "{token_file}"\n')
    assert load_settings(cfg, env={}).cloudflare.api_token == Secret("file-token")


def test_env_token_wins_over_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token", encoding="utf-8")
    cfg = write_config(tmp_path, f'[cloudflare]\napi_token_file = "{token_file}"\n')
    settings = load_settings(cfg, env={"CLOUDFLARE_API_TOKEN": "env-token"})
    assert settings.cloudflare.api_token == Secret("env-token")


def test_unreadable_token_file_names_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f'[cloudflare]\napi_token_file = "{tmp_path / "absent"}"\n')
    with pytest.raises(ConfigError, match="cloudflare.api_token_file"):
        load_settings(cfg, env={})


def test_secret_never_shows_its_value(clean_env: Path) -> None:
    settings = _env_only({"CLOUDFLARE_API_TOKEN": "tok-DO-NOT-PRINT", "CLOUDFLARE_ACCOUNT_ID": "a"})
    secret = settings.cloudflare.api_token
    assert secret is not None
    assert secret.reveal() == "tok-DO-NOT-PRINT"
    for text in (repr(secret), str(secret), f"{secret}", repr(settings), str(settings.cloudflare)):
        assert "tok-DO-NOT-PRINT" not in text
    with pytest.raises(TypeError):
        pickle.dumps(secret)


# -- the config.toml template ------------------------------------------------------------------


def test_template_loads_and_equals_builtin_defaults() -> None:
    assert load_settings(TEMPLATE, env={}) == Settings()


def test_template_names_every_key_with_a_comment() -> None:
    data = tomllib.loads(TEMPLATE.read_text(encoding="utf-8"))
    lines = TEMPLATE.read_text(encoding="utf-8").splitlines()
    assert "db" in data
    for section, cls in SECTIONS.items():
        assert section in data, f"[{section}] missing from config.toml"
        for f in dataclasses.fields(cls):
            if (section, f.name) in FILE_ONLY_FORBIDDEN:
                assert f.name not in data[section]
                assert any(line.startswith(f"# {f.name} is NOT allowed") for line in lines), f.name
                continue
            assert f.name in data[section], f"{section}.{f.name} missing from config.toml"
            index = next(i for i, line in enumerate(lines) if line.startswith(f"{f.name} = "))
            assert lines[index - 1].startswith("#"), f"{section}.{f.name} has no comment line"
        extra = set(data[section]) - {f.name for f in dataclasses.fields(cls)}
        assert not extra, f"config.toml [{section}] has keys config.py does not know: {extra}"
