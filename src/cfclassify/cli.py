"""The command line: parse, build settings, call the module that does the work, map errors.

Only this module imports click (and tqdm, for progress bars). Every error a user can meet is a
``CfclassifyError``; it is printed as one line on stderr and its class gives the exit code
(see ``errors.py`` and the README). Results go to stdout, diagnostics to stderr via logging.
"""

from __future__ import annotations

import json
import logging
import os
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


def _progress(
    enabled: bool, desc: str, unit: str, total: int | None = None
) -> tuple[Callable[[int], None] | None, Callable[[], None]]:
    """A tqdm bar on stderr when it is a terminal, else nothing; returns (update, close)."""
    if not enabled or not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, total=total, file=sys.stderr, dynamic_ncols=True)
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


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--dry-run", is_flag=True, help="Walk and hash, call nothing; print what a run would send.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar and no summary unless something failed.")
@click.option("--concurrency", type=click.IntRange(min=1), help="Requests in flight (run.concurrency).")
@click.option("--budget", type=click.FloatRange(min=0), help="Neurons allowed today, for this run only.")
@click.option("--max-images", type=click.IntRange(min=0), help="Send at most N images in this run.")
@click.option("--gateway", "gateway_id", help="Send through this AI Gateway (cloudflare.gateway_id).")
@click.pass_context
def run(
    ctx: click.Context,
    paths: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
    quiet: bool,
    concurrency: int | None,
    budget: float | None,
    max_images: int | None,
    gateway_id: str | None,
) -> None:
    """Scan PATHS and classify every new image, within the day's neuron budget.

    Each distinct image is paid for once. When the budget or the account's daily
    allocation runs out the run stops with exit code 75; run it again after
    00:00 UTC and it goes on where it stopped.

    \b
    Example:
        cfclassify run ~/Pictures
        cfclassify run --dry-run /mnt/archive
        cfclassify run --budget 500 --max-images 1000 --json ~/Pictures
    """
    from .runner import run as run_pipeline

    settings = _settings(ctx, run__concurrency=concurrency, cloudflare__gateway_id=gateway_id)
    show = not quiet and not as_json
    scan_update, scan_close = _progress(show, "scanning", "files")
    bar: dict[str, Any] = {}

    def progress(report: Any) -> None:
        if "update" not in bar:
            scan_close()
            update, close = _progress(show, "classifying", "images", total=report.pending_at_start)
            bar.update(update=update, close=close, bar=getattr(update, "__self__", None))
        if bar["update"] is None:
            return
        done = report.classified + report.failed
        tq = bar["bar"]
        tq.n = done
        tq.set_postfix(neurons_left=f"{report.neurons_left:.1f}", refresh=False)
        tq.refresh()

    try:
        result = run_pipeline(
            settings,
            list(paths),
            dry_run=dry_run,
            budget=budget,
            max_images=max_images,
            scan_progress=scan_update,
            progress=progress if show else None,
        )
    finally:
        scan_close()
        if bar.get("close"):
            bar["close"]()
    data = result.as_dict()
    if as_json:
        _emit_json(data)
    elif not quiet or result.exit_code != 0:
        _print_run_summary(data)
    ctx.exit(result.exit_code)


def _print_run_summary(data: dict[str, Any]) -> None:
    sc = data["scan"]
    click.echo(
        f"scanned {sc['files']} image files: {sc['new_images']} new images, "
        f"{sc['duplicate_paths']} duplicate paths, {sc['hashed']} read, {sc['cached']} unchanged"
    )
    today = data["today"]
    if "dry_run" in data:
        est = data["dry_run"]
        days = "never (the budget cannot pay for one image)" if est["days_needed"] < 0 else est["days_needed"]
        click.echo(
            f"would send {est['new_images']} images for {est['neurons']:.6f} neurons; "
            f"{est['images_today']} fit in today's budget, {est['images_per_day']} a day; "
            f"days needed: {days}; cost on Workers Paid if sent today: ${est['usd_if_sent_today']:.4f}"
        )
        return
    rn = data["run"]
    click.echo(
        f"classified {rn['classified']} images with {rn['requests']} requests "
        f"({rn['cache_hits']} gateway cache hits, {rn['reused']} identical uploads reused), "
        f"{rn['failed']} failed, {rn['unknown_outcomes']} unknown outcomes; "
        f"{rn['neurons']:.6f} neurons in {rn['seconds']:.1f} s"
    )
    for reason, count in sorted(rn["failures"].items()):
        click.echo(f"  failed: {count} x {reason}")
    click.echo(
        f"today ({today['day']} UTC): {today['charged_neurons']:.6f} of {today['limit_neurons']:g} neurons "
        f"charged, {today['left_neurons']:.6f} left; resets {today['resets_at']}"
    )
    if rn["left"]:
        click.echo(f"{rn['left']} images left to classify: {rn['stop_message'] or rn['stop_reason']}")
        click.echo("run the same command again later to go on where this run stopped")
    else:
        click.echo("done: nothing left to classify under these paths")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8787, show_default=True, type=click.IntRange(0, 65535), help="0 picks one.")
@click.option("--token", help="Require this bearer token (default: any non-empty token passes).")
@click.option("--latency-ms", default=0.0, type=click.FloatRange(min=0), help="Fixed latency per request.")
@click.option("--jitter-ms", default=0.0, type=click.FloatRange(min=0), help="Up to this much more latency.")
@click.option("--error-rate", default=0.0, type=click.FloatRange(0, 1), help="Share of HTTP 500 answers.")
@click.option("--rate-limit-rate", default=0.0, type=click.FloatRange(0, 1), help="Share of 429 (3040/3021).")
@click.option("--retry-after", default=1.0, type=click.FloatRange(min=0), help="Retry-After seconds on 429.")
@click.option("--drop-rate", default=0.0, type=click.FloatRange(0, 1), help="Share of dropped connections.")
@click.option(
    "--hang-rate", default=0.0, type=click.FloatRange(0, 1), help="Share of requests never answered."
)
@click.option("--hang-seconds", default=30.0, type=click.FloatRange(min=0), help="How long a hang lasts.")
@click.option("--rpm", default=0, type=click.IntRange(min=0), help="Per-minute rate limit, 3021 past it.")
@click.option("--daily-neurons", default=0.0, type=click.FloatRange(min=0), help="Daily cap, 3036 past it.")
@click.option("--max-bytes", default=10 * 1024 * 1024, type=click.IntRange(min=1), help="413/3006 above.")
@click.option("--seed", type=int, help="Seed for the fault dice (labels are always deterministic).")
def emulate(**options: Any) -> None:
    """Serve a local stand-in for Workers AI's resnet-50 (for demos, tests, benchmarks).

    It speaks the documented contract (both body forms, errors, the AI Gateway route
    and cache headers) and returns 5 deterministic ImageNet labels per image: it is
    clearly not a model. Counters at GET /__emulator/stats.

    \b
    Example:
        cfclassify emulate --port 8787 --latency-ms 100 --daily-neurons 10000
        CLOUDFLARE_BASE_URL=http://127.0.0.1:8787/client/v4 cfclassify run ~/Pictures
    """
    from .emulator import EmulatorOptions, serve

    def ready(emulator: Any) -> None:
        click.echo(f"Workers AI stand-in listening on {emulator.url}", err=True)
        click.echo(f"export CLOUDFLARE_BASE_URL={emulator.api_base}", err=True)

    serve(EmulatorOptions(**options), on_ready=ready)


def _open_existing(settings: Settings) -> Store:
    """The database for a report; a missing file is an error, not a new empty database."""
    from pathlib import Path

    from .errors import StoreError

    if settings.db != ":memory:" and not Path(settings.db).expanduser().exists():
        raise StoreError(
            f"no database at {settings.db}: run `cfclassify run PATH` first, or point --db at one"
        )
    return Store(settings.db)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--runs", default=5, show_default=True, type=click.IntRange(min=0), help="Last runs to show.")
@click.pass_context
def status(ctx: click.Context, as_json: bool, runs: int) -> None:
    """Show today's neuron budget, what is left to classify, the cost, failures and the last runs.

    Neurons are today's (UTC) charged, reserved and left; the cost is what Workers Paid would
    bill: max(0, day's neurons - 10000) x $0.011 / 1000, summed over the month's days.

    \b
    Example:
        cfclassify status
        cfclassify --db archive.db status --json
    """
    from .reports import render_status
    from .reports import status as status_report

    settings = _settings(ctx)
    with _open_existing(settings) as store:
        report = status_report(store, settings, recent_runs=runs)
    if as_json:
        _emit_json(report.as_dict())
        return
    for line in render_status(report):
        click.echo(line)


@cli.command()
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "jsonl", "xmp"]), default="csv", show_default=True,
    help="csv or jsonl: one row per file path; xmp: a sidecar beside each classified image.",
)  # fmt: skip
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), help="File (default: stdout)."
)
@click.option("--min-score", type=click.FloatRange(0, 1), help="xmp: only labels at this score or more.")
@click.option("--force", is_flag=True, help="xmp: replace existing sidecars that cannot be parsed.")
@click.pass_context
def export(ctx: click.Context, fmt: str, output: str | None, min_score: float | None, force: bool) -> None:
    """Export every file path with its labels, or write XMP sidecars for photo managers.

    csv and jsonl: one row per path (duplicates included): path, sha256, status, error,
    top label and score, all labels with scores, neurons and when it was classified.
    xmp: photo.jpg.xmp beside each image (xmp.sidecar_name = "replace" for photo.xmp) with
    the labels scoring xmp.min_score or more as keywords (dc:subject, and under the root tag
    lr:hierarchicalSubject and digiKam:TagsList). Images are never touched. An existing
    sidecar is merged in place: only the keywords cfclassify wrote change, everything else
    stays; one that cannot be parsed is left alone unless --force.

    \b
    Example:
        cfclassify export -o labels.csv
        cfclassify export --format jsonl | jq .top_label
        cfclassify export --format xmp --min-score 0.3
    """
    from .export import export_xmp, write_csv, write_jsonl

    settings = _settings(ctx)
    if fmt == "xmp":
        if output is not None:
            raise click.UsageError("--output does not apply to --format xmp: sidecars go beside the images")
        with _open_existing(settings) as store:
            report = export_xmp(store, settings, min_score=min_score, force=force)
        data = report.as_dict()
        click.echo(
            f"sidecars: {data['created']} created, {data['updated']} updated, {data['unchanged']} "
            f"unchanged, {data['replaced']} replaced, {data['unreadable']} left alone (unreadable), "
            f"{data['name_clashes']} name clashes, {data['failed']} failed; {data['no_labels']} images "
            f"without labels at the threshold, {data['not_classified']} not classified"
        )
        ctx.exit(1 if report.failed else 0)
    if min_score is not None or force:
        raise click.UsageError("--min-score and --force apply to --format xmp only")
    writer = write_csv if fmt == "csv" else write_jsonl
    with (
        _open_existing(settings) as store,
        click.open_file(output or "-", "w", encoding="utf-8", atomic=output not in (None, "-")) as out,
    ):
        writer(store.iter_file_rows(settings.cloudflare.model), out)


@cli.command()
@click.argument("label")
@click.option(
    "--min-score", default=0.0, type=click.FloatRange(0, 1), help="Only labels scoring this or more."
)
@click.option("-0", "--print0", is_flag=True, help="End each path with NUL, for xargs -0.")
@click.pass_context
def search(ctx: click.Context, label: str, min_score: float, print0: bool) -> None:
    """Print the paths of images labelled LABEL (any case; * and ? are wildcards).

    Every label returned for an image counts, not only the top one.

    \b
    Example:
        cfclassify search tabby
        cfclassify search '*retriever' --min-score 0.5
        cfclassify search "golden retriever" -0 | xargs -0 ls -l
    """
    from .reports import search as search_paths

    settings = _settings(ctx)
    end = b"\0" if print0 else b"\n"
    found = 0
    with _open_existing(settings) as store:
        for path in search_paths(store, settings, label, min_score=min_score):
            # The path's own bytes, so `xargs -0` gets a name that is not UTF-8 exactly as it is.
            click.echo(os.fsencode(path) + end, nl=False)
            found += 1
    if not found:
        log.warning("no image is labelled %r at a score of %g or more", label, min_score)


@cli.command()
@click.option("--top", default=20, show_default=True, type=click.IntRange(min=1), help="How many labels.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_context
def labels(ctx: click.Context, top: int, as_json: bool) -> None:
    """Show the most frequent top labels: how many images (and file paths) carry each.

    \b
    Example:
        cfclassify labels
        cfclassify labels --top 100 --json
    """
    from .reports import top_labels

    settings = _settings(ctx)
    with _open_existing(settings) as store:
        counts = top_labels(store, settings, top)
    if as_json:
        _emit_json([{"label": c.label, "images": c.images, "files": c.files} for c in counts])
        return
    click.echo(f"{'images':>7} {'files':>7}  label")
    for c in counts:
        click.echo(f"{c.images:>7} {c.files:>7}  {c.label}")


def main() -> None:
    cli(prog_name="cfclassify")
