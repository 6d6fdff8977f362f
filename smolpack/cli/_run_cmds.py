"""`smolpack create` and `smolpack run` (the two main flows)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from smolpack.engine import registry
from smolpack.engine.select import CLI_FLAG
from smolpack.errors import NotASmolmachine, UsageError
from smolpack.progress import Progress
from smolpack.runner import RunOptions, run_payload


class EngineChoice(click.Choice):  # type: ignore[type-arg]
    """auto and every engine of the registry, as it is when asked (engines added late too)."""

    def __init__(self) -> None:
        super().__init__(self._current())

    @staticmethod
    def _current() -> tuple[str, ...]:
        return registry.choices()

    @property
    def choices(self) -> tuple[str, ...]:
        return self._current()

    @choices.setter
    def choices(self, _value: object) -> None:
        pass


class StateChoice(EngineChoice):
    """`create --state`: auto and every engine of the registry that saves states."""

    @staticmethod
    def _current() -> tuple[str, ...]:
        return registry.state_choices()


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


_OFFLINE_HELP = (
    "Never contact a registry: a registry image must already be in the cache"
    " (pinned by digest, or a tag pulled before); a launcher stub built now does not"
    " fetch PyInstaller's bootloader sources."
)


@click.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--cold", is_flag=True, help="Boot the VM instead of restoring its saved state.")
@click.option(
    "--engine",
    type=EngineChoice(),
    default="auto",
    show_default=True,
    envvar="SMOLPACK_ENGINE",
    help="Which hypervisor engine runs the VM (env SMOLPACK_ENGINE, as for packed tools).",
)
@click.option("--debug", is_flag=True, help="Keep the console log and print timings.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output while building.")
@click.option("--offline", is_flag=True, help=_OFFLINE_HELP)
@click.option(
    "-p",
    "--port",
    "ports",
    multiple=True,
    metavar="HOST:GUEST",
    help="Forward 127.0.0.1:HOST to the guest's port GUEST (repeatable; works without net).",
)
@click.option("--ssh-agent", is_flag=True, help="Give the program your ssh-agent.")
@click.option(
    "-v",
    "--volume",
    "volumes",
    multiple=True,
    metavar="HOST:GUEST[:ro]",
    help="Mount a host directory into the VM for this run (repeatable).",
)
@click.option(
    "--cwd",
    "cwd_mode",
    type=click.Choice(["off", "ro", "rw"]),
    help="Share the current directory at the same path; the program starts there.",
)
@click.option(
    "--allow-unfiltered-egress",
    is_flag=True,
    help="Run a pack with egress allow lists under QEMU, which cannot filter them.",
)
def run_cmd(
    target: Path,
    args: tuple[str, ...],
    cold: bool,
    engine: str,
    debug: bool,
    quiet: bool,
    offline: bool,
    ports: tuple[str, ...],
    ssh_agent: bool,
    allow_unfiltered_egress: bool,
    volumes: tuple[str, ...],
    cwd_mode: str | None,
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
      smolpack run -p 8080:80 ./Smolfile -- serve
    """
    from smolpack.agent.channels import parse_port_forward
    from smolpack.host_resources import parse_volume

    options = RunOptions(
        engine=engine,
        cold=cold,
        debug=debug,
        engine_flag=CLI_FLAG,
        flag_prefix="--",
        ports=tuple(parse_port_forward(spec, "--port") for spec in ports),
        ssh_agent=ssh_agent,
        unfiltered_egress=allow_unfiltered_egress,
        volumes=tuple(parse_volume(spec, "--volume") for spec in volumes),
        cwd_mode=cwd_mode,
    )
    if _is_payload(target):
        pack = target
    else:
        from smolpack.build import GUEST_ARCH, build_payload, input_digest, pin_image
        from smolpack.cache import cached_file

        config = pin_image(_load(target), offline=offline)
        if engine != "auto":
            # Refuse before building: a forced engine that cannot run here never will.
            _forced_engine_usable(engine, GUEST_ARCH)
        progress = Progress(quiet=quiet)
        # A forced engine needs only its own state: build that one (another cache entry).
        states = engine if engine in registry.savers() else "auto"
        key = input_digest(config, states)
        pack = cached_file(
            "packs",
            key,
            lambda tmp: build_payload(
                config, tmp, progress=progress, states=states, offline=offline
            ),
        )
    code = run_payload(pack, list(args), options)
    raise SystemExit(code)


def _forced_engine_usable(engine: str, guest_arch: str) -> None:
    from smolpack.engine.select import BareGuest, plan_run
    from smolpack.runner import installed_libkrun, local_facts

    guest = BareGuest(guest_arch)
    facts = local_facts(guest_arch, installed_libkrun())
    plan_run(guest, facts, requested=engine, cold=True, flag=CLI_FLAG)


def _stub_dir() -> Path | None:
    from smolpack.stub_build import ENV_STUB_DIR

    return Path(os.environ[ENV_STUB_DIR]) if os.environ.get(ENV_STUB_DIR) else None


@click.command("create")
@click.argument("smolfile", type=click.Path(exists=True, path_type=Path), default=".")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Where to write the tool (or the .smolmachine payload).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["exe", "smolmachine"]),
    help="exe: one self-running executable (default); smolmachine: the bare payload, for"
    " `smolpack run`. Default: smolmachine when OUTPUT ends in .smolmachine, else exe.",
)
@click.option(
    "--target",
    metavar="HOST",
    help="Host the executable runs on: linux-x86_64, linux-aarch64 or macos-arm64."
    " Default: this host.",
)
@click.option(
    "--state",
    "states",
    type=StateChoice(),
    default="auto",
    show_default=True,
    help="Which saved VM states the pack carries. auto: krun's where this host can build it"
    " (KVM, Hypervisor.framework) and QEMU's, which restores on any host; krun or qemu: that"
    " engine's only (smaller, faster to build; other hosts boot it cold).",
)
@click.option(
    "--compress/--no-compress",
    default=True,
    show_default=True,
    help="Store the disk and the saved VM zstd-compressed (a pack several times smaller;"
    " each machine decodes them once into its cache on its first run), or raw (read in"
    " place, no copy of the disk in the cache; a bigger file to ship).",
)
@click.option(
    "--disk-refs/--no-disk-refs",
    default=True,
    hidden=True,  # for before/after measurements (bench/bench_pack_size.py)
    help="Store saved RAM pages that are copies of disk blocks as references to them.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--offline", is_flag=True, help=_OFFLINE_HELP)
def create_cmd(
    smolfile: Path,
    output: Path,
    fmt: str | None,
    target: str | None,
    states: str,
    compress: bool,
    disk_refs: bool,
    quiet: bool,
    offline: bool,
) -> None:
    """Build a tool from a Smolfile: boot it, run its init steps, save the warm VM.

    The result is one executable that restores that VM and runs the Smolfile's
    entrypoint with its own arguments: `./tool args...`.

    \b
    Examples:
      smolpack create -o hello examples/hello && ./hello
      smolpack create -o hello.smolmachine examples/hello
      smolpack run hello.smolmachine -- world
    """
    from smolpack.build import build_payload, pin_image

    if output.is_dir():
        raise UsageError(f"{output} is a directory; give the file to write")
    if fmt is None:
        fmt = "smolmachine" if output.suffix == ".smolmachine" else "exe"
    if fmt == "smolmachine" and target is not None:
        raise UsageError("--target applies to executables; a .smolmachine runs on any host")
    config = pin_image(_load(smolfile), offline=offline)
    progress = Progress(quiet=quiet)
    output = output.resolve()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create {output.parent}: {err.strerror}") from None
    if fmt == "smolmachine":
        build_payload(
            config, output, progress=progress, states=states, compress=compress,
            disk_refs=disk_refs, offline=offline,
        )  # fmt: skip
    else:
        from smolpack.embed import check_stub, embed_payload
        from smolpack.host import host_target
        from smolpack.pack_libs import libs_for_target
        from smolpack.stub_build import check_target, find_stub

        target = check_target(target or host_target())
        # Find the stub first: a missing one should fail before minutes of building.
        with progress.step(f"Preparing the launcher stub for {target}"):
            stub = find_stub(target, note=progress.note, offline=offline)
            check_stub(stub, target)
        libs = libs_for_target(target, host_target(), _stub_dir())
        if libs is None:
            progress.note(f"no libkrun for {target} found: the tool will run under QEMU there")
        payload = output.with_name(f".{output.name}.payload-{os.urandom(4).hex()}")
        try:
            host_libs = (target, libs) if libs is not None else None
            build_payload(
                config, payload, progress=progress, host_libs=host_libs, states=states,
                compress=compress, disk_refs=disk_refs, offline=offline,
            )  # fmt: skip
            with progress.step(f"Embedding the pack into {output.name}"):
                embed_payload(stub, payload, output, target=target)
        finally:
            payload.unlink(missing_ok=True)
    progress.note(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB)")


COMMANDS: list[click.Command] = [create_cmd, run_cmd]
