"""`smolpack create` and `smolpack run` (the two main flows)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from smolpack.errors import NotASmolmachine, UsageError
from smolpack.progress import Progress
from smolpack.runner import RunOptions, run_payload


def _is_payload(path: Path) -> bool:
    from smolpack.payload import find_origin

    if path.is_dir():
        return False
    try:
        find_origin(path)
    except NotASmolmachine:
        return False
    return True


def _load(smolfile: Path):  # type: ignore[no-untyped-def]
    from smolpack.smolfile import load_smolfile

    config = load_smolfile(smolfile)
    for warning in config.warnings:
        print(warning, file=sys.stderr)
    return config.packed()


@click.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--cold", is_flag=True, help="Boot the VM instead of restoring its saved state.")
@click.option(
    "--engine",
    type=click.Choice(["auto", "qemu", "krun"]),
    default="auto",
    show_default=True,
    help="Which hypervisor engine runs the VM.",
)
@click.option("--debug", is_flag=True, help="Keep the console log and print timings.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output while building.")
def run_cmd(
    target: Path, args: tuple[str, ...], cold: bool, engine: str, debug: bool, quiet: bool
) -> None:
    """Run a Smolfile's machine (building what is missing) or a .smolmachine pack.

    TARGET is a Smolfile, a directory holding one, or a .smolmachine file.
    Everything after `--` goes to the program in the VM; the exit code is its own.
    The built pack is cached by the digest of its inputs, so the second run
    restores at once.

    \b
    Examples:
      smolpack run examples/hello -- --name world
      smolpack run app.smolmachine -- args...
      smolpack run --cold ./Smolfile
    """
    options = RunOptions(engine=engine, cold=cold, debug=debug)
    if _is_payload(target):
        pack = target
    else:
        from smolpack.build import build_payload, input_digest
        from smolpack.cache import cached_file

        config = _load(target)
        progress = Progress(quiet=quiet)
        pack = cached_file(
            "packs", input_digest(config), lambda tmp: build_payload(config, tmp, progress=progress)
        )
    code = run_payload(pack, list(args), options)
    raise SystemExit(code)


@click.command("create")
@click.argument("smolfile", type=click.Path(exists=True, path_type=Path), default=".")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Where to write the pack.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["smolmachine"]),
    default="smolmachine",
    show_default=True,
    help="What to write (the self-running executable comes next).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def create_cmd(smolfile: Path, output: Path, fmt: str, quiet: bool) -> None:
    """Build a pack from a Smolfile: boot it, run its init steps, save the warm VM.

    \b
    Example:
      smolpack create -o hello.smolmachine examples/hello
      smolpack run hello.smolmachine -- world
    """
    from smolpack.build import build_payload

    if output.is_dir():
        raise UsageError(f"{output} is a directory; give the file to write")
    config = _load(smolfile)
    progress = Progress(quiet=quiet)
    build_payload(config, output.resolve(), progress=progress)
    progress.note(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB)")


COMMANDS: list[click.Command] = [create_cmd, run_cmd]
