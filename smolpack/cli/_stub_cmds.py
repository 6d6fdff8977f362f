"""`smolpack stub build`: the launcher stub for this host (smolpack/stub_build.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from smolpack.progress import Progress


@click.group("stub")
def stub_group() -> None:
    """Build the launcher stub that packed tools run on (one per host)."""


@stub_group.command("build")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also copy the stub here (for publishing it to other machines).",
)
@click.option("--force", is_flag=True, help="Rebuild even if the cache has this stub.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the stub's path.")
def build_cmd(output: Path | None, force: bool, quiet: bool) -> None:
    """Freeze the launcher with PyInstaller for this host and cache it.

    The stub is cached by the digest of everything that goes into it (smolpack's
    sources, Python and PyInstaller versions, build options), so this is instant
    when nothing changed. `smolpack create` calls it for you.

    \b
    Example:
      smolpack stub build
      smolpack stub build -o dist/linux-x86_64/smolstub
    """
    from smolpack.host import host_target
    from smolpack.stub_build import build_stub

    progress = Progress(quiet=quiet)
    with progress.step(f"Building the launcher stub for {host_target()}"):
        stub = build_stub(force=force, note=progress.note)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stub, output)
        output.chmod(0o755)
        stub = output
    click.echo(str(stub))


COMMANDS: list[click.Command] = [stub_group]
