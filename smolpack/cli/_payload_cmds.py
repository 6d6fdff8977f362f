"""`smolpack inspect`, `smolpack verify` and the hidden `smolpack payload write-sample`.

Stage: inspect (reads what create wrote). Implements the user side of
formats/smolmachine.md: errors come from the reader as PayloadError
subclasses and `smolpack.cli.main` turns them into their exit codes (110-115).
"""

from __future__ import annotations

import json
import os
import tempfile

import click

from smolpack import __version__
from smolpack.payload import (
    Codec,
    Manifest,
    PayloadWriter,
    SectionKind,
    StateRef,
    created_now,
    open_payload,
)
from smolpack.payload.describe import describe, render_text

_FILE = click.Path(exists=True, dir_okay=False, readable=True)


@click.command("inspect")
@click.argument("file", type=_FILE)
@click.option("--json", "as_json", is_flag=True, help="Print every field as JSON.")
def inspect_cmd(file: str, as_json: bool) -> None:
    """Show what a .smolmachine payload or packed executable holds.

    Checks the header and the index digest (cheap, whatever the size); use
    `smolpack verify` to hash every section.

    \b
    Example:
      smolpack inspect tool.smolmachine
      smolpack inspect ./tool --json
    """
    with open_payload(file) as payload:
        info = describe(payload)
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(render_text(info))


@click.command("verify")
@click.argument("file", type=_FILE)
def verify_cmd(file: str) -> None:
    """Hash every section of a payload and check it against the index.

    Exits 0 and prints `OK <n> sections verified`, or fails with the exit code
    of the damage found (113 index, 114 section, ... see formats/exit-codes.md).

    \b
    Example:
      smolpack verify tool.smolmachine
    """
    with open_payload(file) as payload:
        count = payload.verify()
    click.echo(f"OK {count} sections verified")


def write_sample(out: str) -> None:
    """A small payload with a manifest, a zstd kernel-ish blob and a sparse 64 MiB disk.

    Stands in for real packs in the README demo; the bytes are not bootable.
    """
    manifest = Manifest(
        smolpack_version=__version__,
        created=created_now(),
        guest_arch="x86_64",
        machine={"memory_mib": 256, "cpus": 1, "sample": True},
        states=(
            StateRef(
                name="qemu-x86_64",
                engine="qemu",
                host_arch="x86_64",
                host_os="linux",
                sections=("qemu-x86_64/migration",),
            ),
        ),
    )
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(out))) as tmp:
        disk = os.path.join(tmp, "disk.img")
        with open(disk, "wb") as f:
            f.truncate(64 * 1024 * 1024)  # sparse: only the "superblock" below is data
            f.seek(1024)
            f.write(b"smolpack sample disk\n" * 64)
        with PayloadWriter(out) as writer:
            writer.add_bytes("manifest", SectionKind.MANIFEST, manifest.to_json())
            writer.add_bytes(
                "kernel", SectionKind.KERNEL, b"sample kernel\n" * 4096, codec=Codec.ZSTD
            )
            writer.add_file("disk", SectionKind.DISK, disk)
            writer.add_bytes(
                "qemu-x86_64/migration",
                SectionKind.STATE,
                b"QEVM sample state\n" * 1024,
                codec=Codec.ZSTD,
            )


@click.group("payload", hidden=True)
def payload_group() -> None:
    """Low-level payload tools (not stable)."""


@payload_group.command("write-sample")
@click.argument("out", type=click.Path(dir_okay=False, writable=True))
def write_sample_cmd(out: str) -> None:
    """Write a small sample .smolmachine (manifest, kernel blob, sparse disk).

    \b
    Example:
      smolpack payload write-sample /tmp/sample.smolmachine
      smolpack inspect /tmp/sample.smolmachine
    """
    write_sample(out)
    click.echo(f"wrote {out}")


COMMANDS: list[click.Command] = [inspect_cmd, verify_cmd, payload_group]
