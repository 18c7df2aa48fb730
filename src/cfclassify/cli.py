"""The command line: parse, build settings, call the module that does the work, map errors.

Only this module imports click (and tqdm, for progress bars). Every error a user can meet is a
``CfclassifyError``; it is printed as one line on stderr and its class gives the exit code
(see ``errors.py`` and the README). Results go to stdout, diagnostics to stderr via logging.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from . import __version__
from .config import Settings, load_settings
from .errors import CfclassifyError
from .store import Store

log = logging.getLogger("cfclassify")


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CfclassifyError as exc:
            click.echo(f"cfclassify: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="cfclassify")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file (default: ./config.toml if present, else built-in defaults).",
)
@click.option("--db", type=click.Path(dir_okay=False), help="Database file (default: cfclassify.db).")
@click.option("-v", "--verbose", count=True, help="More detail on stderr (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, db: str | None, verbose: int) -> None:
    """Tag folders of images with Cloudflare Workers AI's resnet-50, within a neuron budget.

    \b
    Example:
        cfclassify scan ~/Pictures
        cfclassify run ~/Pictures
        cfclassify status
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = {"config_path": config_path, "db": db}


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    obj = ctx.find_root().obj
    return load_settings(obj["config_path"], overrides={"db": obj["db"], **overrides})


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _progress(enabled: bool, desc: str, unit: str) -> tuple[Callable[[int], None] | None, Callable[[], None]]:
    """A tqdm bar on stderr when it is a terminal, else nothing; returns (update, close)."""
    if not enabled or not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
    return bar.update, bar.close


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def scan(ctx: click.Context, paths: tuple[str, ...], as_json: bool, quiet: bool) -> None:
    """Walk PATHS, hash new or changed image files and record them. No network.

    Unchanged files (same size, mtime and inode) are not read again, nor are files that
    were only moved or renamed inside PATHS.

    \b
    Example:
        cfclassify scan ~/Pictures /mnt/archive/photos
        cfclassify --db archive.db scan --json /mnt/archive
    """
    from .scan import scan as run_scan

    settings = _settings(ctx)
    update, close = _progress(not quiet and not as_json, "scanning", "files")
    with Store(settings.db) as store:
        try:
            report = run_scan(list(paths), settings.walk, store, progress=update)
        finally:
            close()
    data = report.as_dict()
    if as_json:
        _emit_json(data)
        return
    click.echo(
        f"{data['files']} image files: {data['new_images']} new images, "
        f"{data['known_images']} known images, {data['duplicate_paths']} duplicate paths"
    )
    click.echo(
        f"read {data['hashed']} files, {data['cached']} unchanged, {data['moved']} moved; "
        f"{data['missing']} missing since the last scan"
    )
    skipped = data["skipped"]
    click.echo(
        f"skipped: {skipped['hidden']} hidden, {skipped['excluded']} excluded, "
        f"{skipped['symlinks']} symlinks, {skipped['not_images']} not images"
    )
    problems = {k: v for k, v in data["problems"].items() if v}
    if problems:
        click.echo("problems: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in problems.items()))
        for path, reason in data["examples"]:
            click.echo(f"  {path}: {reason}", err=True)


def main() -> None:
    cli(prog_name="cfclassify")
