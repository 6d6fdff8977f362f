"""`smolpack push` and `smolpack pull`: packs through an OCI registry (formats/registry.md)."""

from __future__ import annotations

from pathlib import Path

import click

from smolpack.progress import Progress


@click.command("push")
@click.argument("pack", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("ref")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def push_cmd(pack: Path, ref: str, quiet: bool) -> None:
    """Push PACK (a packed tool or a .smolmachine) to the registry as REF.

    Prints the pushed reference pinned to its manifest digest. Credentials come
    from ~/.docker/config.json (docker login), as for images.

    \b
    Example:
      smolpack push ./tool ghcr.io/acme/tool:1.0
    """
    from smolpack.registry import push_pack

    result = push_pack(pack, ref, progress=Progress(quiet=quiet))
    click.echo(str(result.reference))


@click.command("pull")
@click.argument("ref")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="File to write (or a directory: the pack keeps its pushed file name).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def pull_cmd(ref: str, output: Path, quiet: bool) -> None:
    """Pull the pack REF from its registry into a file: the identical bytes pushed.

    A packed tool comes back executable; every byte is checked against its digest.

    \b
    Example:
      smolpack pull ghcr.io/acme/tool:1.0 -o ./tool && ./tool --help
    """
    from smolpack.registry import pull_pack

    result = pull_pack(ref, output, progress=Progress(quiet=quiet))
    click.echo(f"{result.path} ({result.reference})")


COMMANDS: list[click.Command] = [push_cmd, pull_cmd]
