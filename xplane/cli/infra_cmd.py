"""CLI: ``xplane infra render`` (node-pool Terraform files) and ``xplane infra install-hook``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Node-pool Terraform files and the local CI runner.", no_args_is_help=True)


@app.command("render")
def render(
    config: Annotated[
        Path, typer.Option("--config", exists=True, file_okay=False, help="Config tree root.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Infra repo root to write into.")],
    region: Annotated[
        list[str] | None, typer.Option("--region", help="Only this region (repeatable).")
    ] = None,
    provider: Annotated[
        str | None, typer.Option("--provider", help="Render every pool with this provider.")
    ] = None,
    skeleton: Annotated[
        bool, typer.Option("--skeleton", help="Also write modules/, cloud-init/, ci/, scripts/.")
    ] = False,
) -> None:
    """Write infra/node-pool/<region>/{main,variables}.tf and <region>.tfvars per region.

    An existing tfvars keeps its node_count (the autoscaler owns it).
    """
    from xplane.config.errors import ConfigError
    from xplane.config.loader import load_config
    from xplane.gitops.tfvars import TfvarsError, get_node_count, set_node_count
    from xplane.infra.render import RenderError, render_tree
    from xplane.infra.skeleton import skeleton_files

    try:
        tree = load_config(config)
        if provider:
            regions = {
                k: r.model_copy(update={"provider": provider}) for k, r in tree.regions.items()
            }
            tree = tree.model_copy(update={"regions": regions})
        files = render_tree(tree, regions=region or None)
    except ConfigError as exc:
        for issue in exc.issues:
            typer.echo(str(issue), err=True)
        raise typer.Exit(1) from None
    except RenderError as exc:
        typer.echo(f"xplane infra render: {exc}", err=True)
        raise typer.Exit(1) from None
    if skeleton:
        files = {**skeleton_files(), **files}
    for rel, text in sorted(files.items()):
        path = out / rel
        if rel.endswith(".tfvars") and path.is_file():
            try:
                kept = get_node_count(path.read_text())
                text = text if kept is None else set_node_count(text, kept)
            except TfvarsError as exc:
                typer.echo(f"xplane infra render: {path}: {exc}", err=True)
                raise typer.Exit(1) from None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        typer.echo(f"wrote {path}")


@app.command("install-hook")
def install_hook_cmd(
    repo: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Bare infra repo.")],
    env: Annotated[
        list[str] | None,
        typer.Option("--env", help="KEY=VALUE for terraform and the webhook (repeatable)."),
    ] = None,
    branch: Annotated[str, typer.Option("--branch", help="Branch to apply.")] = "main",
) -> None:
    """Install the local CI runner as REPO's post-receive hook."""
    from xplane.infra.local_runner import install_hook

    pairs: dict[str, str] = {}
    for item in env or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--env")
        pairs[key] = value
    try:
        directory = install_hook(repo, pairs, branch=branch)
    except ValueError as exc:
        typer.echo(f"xplane infra install-hook: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"installed {repo / 'hooks' / 'post-receive'} (runner log: {directory}/runner.log)")


def register(root: typer.Typer) -> None:
    """Attach this module's commands to the root `xplane` app."""
    root.add_typer(app, name="infra")
