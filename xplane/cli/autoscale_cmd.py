"""CLI: ``xplane autoscale plan`` (what-if, no server) and ``xplane autoscale commit`` (operators).

``plan`` reads a config tree and a WORLD.json (:class:`xplane.domain.WorldSnapshot`)
and prints each region's current and desired node count with the reason; with
``--at`` (or a config with calendar windows) also the scheduled floor and the lead
at that instant (:mod:`xplane.autoscale.calendar_plan`). ``forecast`` fits the store's
recent load per hour of the week and suggests floors (:mod:`xplane.autoscale.forecast`).
``commit`` sets one region's ``node_count`` in the infra repo, exactly as the
autoscaler does (same message format and author), for manual overrides.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from xplane.autoscale.calendar_plan import CalendarPlan, calendar_plan
from xplane.autoscale.what_if import AutoscaleWhatIf, what_if
from xplane.config.models import ConfigTree
from xplane.domain import WorldSnapshot
from xplane.durations import format_duration

app = typer.Typer(help="Autoscaler: what-if plans and manual node-count commits.")


class Output(StrEnum):
    json = "json"
    table = "table"


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code=1)


def _load_world(path: Path) -> WorldSnapshot:
    try:
        return WorldSnapshot.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise _fail(f"{path}: cannot read: {exc.strerror}") from None
    except ValidationError as exc:
        lines = [f"{path}: not a valid world snapshot:"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(file)"
            lines.append(f"  {where}: {err['msg']}")
        raise _fail("\n".join(lines)) from None


def _print_table(result: AutoscaleWhatIf) -> None:
    table = Table("service", "region", "current", "desired", "reason")
    for service, regions in result.services.items():
        for region, line in regions.items():
            change = str(line.desired)
            if line.desired != line.current:
                change += " (+)" if line.desired > line.current else " (-)"
            table.add_row(service, region, str(line.current), change, line.reason)
    Console(width=200).print(table)


def _print_calendar(result: CalendarPlan) -> None:
    table = Table(
        "service",
        "region",
        "current",
        "desired",
        "floor",
        "lead",
        "reason",
        title=f"at {result.at}",
    )
    for service, regions in result.services.items():
        for region, line in regions.items():
            change = str(line.desired)
            if line.desired != line.current:
                change += " (+)" if line.desired > line.current else " (-)"
            floor = str(line.floor) if line.floor else f"- (min {line.min_nodes})"
            lead = format_duration(timedelta(seconds=round(line.lead_seconds)))
            table.add_row(service, region, str(line.current), change, floor, lead, line.reason)
    Console(width=220).print(table)


def _parse_at(value: str | None) -> datetime | None:
    """``2026-12-07T09:00+09:00``; an instant without an offset is refused (ambiguous)."""
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise _fail(
            f"--at: not an ISO 8601 time: {value!r} (e.g. 2026-12-07T09:00+09:00)"
        ) from None
    if at.tzinfo is None:
        raise _fail(f"--at: give an offset or Z, e.g. {value}+09:00 (a bare time is ambiguous)")
    return at


def _has_calendar(tree: ConfigTree) -> bool:
    return any(r.schedules for p in tree.autoscale.values() for r in p.regions.values()) or any(
        p.maintenance for p in tree.gtm.values()
    )


@app.command("plan")
def plan_cmd(
    config: Annotated[
        Path, typer.Option("--config", exists=True, file_okay=False, help="Config tree root.")
    ],
    world: Annotated[
        Path, typer.Option("--world", exists=True, dir_okay=False, help="WORLD.json snapshot.")
    ],
    output: Annotated[Output, typer.Option("--output", "-o", help="json or table.")] = Output.table,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="Judge at this instant, e.g. 2026-12-07T09:00+09:00: shows the scheduled "
            "floor and the pre-warm lead (default: the world's time).",
        ),
    ] = None,
) -> None:
    """What the autoscaler would decide for every region, given the world (changes nothing)."""
    from xplane.config.errors import ConfigError
    from xplane.config.loader import load_config

    instant = _parse_at(at)
    try:
        tree = load_config(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    snapshot = _load_world(world)
    if instant is not None or _has_calendar(tree):
        when = instant or snapshot.now or datetime.now(UTC)
        calendar = calendar_plan(tree, snapshot, when)
        if output is Output.json:
            typer.echo(json.dumps(calendar.model_dump(mode="json"), indent=2))
        else:
            _print_calendar(calendar)
        return
    result = what_if(tree, snapshot)
    if output is Output.json:
        typer.echo(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        _print_table(result)


@app.command("commit")
def commit_cmd(
    repo: Annotated[str, typer.Option("--repo", help="Infra repo: local path or URL.")],
    region: Annotated[str, typer.Option("--region", help="Region whose pool to set.")],
    count: Annotated[int, typer.Option("--count", min=0, help="New node_count.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why (commit body).")] = None,
    branch: Annotated[str, typer.Option("--branch", help="Branch to push to.")] = "main",
    workdir: Annotated[
        Path | None, typer.Option("--workdir", help="Clone cache (default ~/.cache/xplane).")
    ] = None,
    create: Annotated[bool, typer.Option("--create", help="Create a missing tfvars.")] = False,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            envvar="XPLANE_DB_URL",
            help="XPlane's database: the commit goes into its audit trail",
        ),
    ] = None,
) -> None:
    """Set infra/node-pool/<region>.tfvars node_count to COUNT, commit and push."""
    from xplane.gitops.infra_repo import RepoError, commit_node_count, default_workdir, redact

    reason_text = reason or f"manual: node_count set to {count} by an operator"
    try:
        result = commit_node_count(
            repo,
            region,
            count,
            reason_text,
            {},
            workdir or default_workdir(),
            branch,
            create=create,
        )
    except RepoError as exc:
        _audit_commit(db, region, count, reason_text, f"failed: {exc}")
        raise _fail(f"error: {exc}") from None
    _audit_commit(db, region, count, reason_text, f"{result.status} {result.sha[:12]}")
    where = redact(repo)
    if result.status == "unchanged":
        typer.echo(f"unchanged: {result.path} already has node_count = {count} ({where})")
    else:
        before = "-" if result.previous_count is None else result.previous_count
        typer.echo(f"committed {result.sha[:12]}: {result.path} {before} -> {count} ({where})")


def _audit_commit(db: str | None, region: str, count: int, reason: str, outcome: str) -> None:
    """A manual scale commit is an admin action: into the audit trail when the database
    is known; without it the infra repo's history is the only record, and we say so."""
    if not db:
        typer.echo(
            "note: no --db/XPLANE_DB_URL: this commit is not in XPlane's audit trail "
            "(the infra repo's history records it)",
            err=True,
        )
        return
    from xplane.auth.audit import cli_identity, record_audit
    from xplane.auth.roles import Target
    from xplane.store.db import make_engine, make_sessionmaker, transaction

    engine = make_engine(db)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            record_audit(
                session,
                action="autoscale.commit",
                identity=cli_identity(),
                target=Target(region=region),
                outcome="failed" if outcome.startswith("failed") else "ok",
                reason=f"{reason} (node_count {count}: {outcome})",
                source="cli",
            )
    finally:
        engine.dispose()


@app.command("forecast")
def forecast_cmd(
    region: Annotated[str, typer.Option("--region", help="Region to forecast.")],
    service: Annotated[
        str | None, typer.Option("--service", help="Only this service (default: every one).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", exists=True, file_okay=False, help="Config tree (default: the store's)."
        ),
    ] = None,
    db: Annotated[
        str | None, typer.Option("--db", envvar="XPLANE_DB_URL", help="Database URL.")
    ] = None,
    days: Annotated[int, typer.Option("--days", min=1, max=90, help="History to fit.")] = 14,
    hours: Annotated[int, typer.Option("--hours", min=1, max=336, help="Hours ahead.")] = 48,
    timezone: Annotated[
        str | None,
        typer.Option(
            "--timezone",
            help="Zone of the hour-of-week profile (default: the "
            "region's first window's zone, else UTC).",
        ),
    ] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="json or table.")] = Output.table,
) -> None:
    """Suggested floors for the next hours from the last days of load (read-only: changes
    nothing), next to the configured windows' floors."""
    from zoneinfo import ZoneInfo

    from xplane.autoscale.forecast import profile, sample_hours, suggest
    from xplane.config.errors import ConfigError
    from xplane.config.loader import load_config
    from xplane.store import config_store
    from xplane.store.db import db_url_from_env, make_engine, make_sessionmaker
    from xplane.store.load_hours import hourly_loads
    from xplane.store.samples import metric_samples
    from xplane.windows import check_timezone

    engine = make_engine(db_url_from_env(db))
    sessions = make_sessionmaker(engine)
    now = datetime.now(UTC)
    try:
        with sessions() as session:
            if config is not None:
                try:
                    tree: ConfigTree | None = load_config(config)
                except ConfigError as exc:
                    raise _fail(str(exc)) from None
            else:
                tree = config_store.current_config(session)
            if tree is None:
                raise _fail("no config in the store: run a sync, or pass --config DIR")
            services = [
                s
                for s in sorted(tree.autoscale)
                if region in tree.autoscale[s].regions and service in (None, s)
            ]
            if not services:
                raise _fail(f"--region: no autoscale policy has region {region!r}")
            result: dict[str, object] = {}
            for name in services:
                policy = tree.autoscale[name].regions[region]
                zone_name = timezone or (
                    policy.schedules[0].timezone if policy.schedules else "UTC"
                )
                try:
                    tz = ZoneInfo(check_timezone(zone_name))
                except ValueError as exc:
                    raise _fail(f"--timezone: {exc}") from None
                since = now - timedelta(days=days)
                samples = metric_samples(session, name, region, since)
                # The rollup first; samples (kept for minutes) fill the hours it lacks.
                loads = {**sample_hours(samples), **hourly_loads(session, name, region, since)}
                history = profile(loads, tz)
                rows = suggest(history, policy, now, hours, tz)
                result[name] = {
                    "region": region,
                    "timezone": zone_name,
                    "history_hours": sum(h.hours for h in history.values()),
                    "samples": len(samples),
                    "hours": [r.model_dump(mode="json") for r in rows],
                }
    finally:
        engine.dispose()
    if output is Output.json:
        typer.echo(json.dumps(result, indent=2))
        return
    console = Console(width=200)
    for name, body in result.items():
        assert isinstance(body, dict)
        table = Table(
            "hour", "suggested", "configured", "basis",
            title=f"{name} in {region}: {body['history_hours']} h of history "
            f"({body['samples']} samples), read-only",
        )  # fmt: skip
        for row in body["hours"]:
            suggested = "-" if row["suggested"] is None else str(row["suggested"])
            configured = str(row["configured"]) if row["configured"] else "-"
            table.add_row(row["at"][:16], suggested, configured, row["basis"] or "no history")
        console.print(table)


def register(root: typer.Typer) -> None:
    """Attach ``xplane autoscale`` to the root app."""
    root.add_typer(app, name="autoscale")
