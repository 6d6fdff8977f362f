"""`smolpack image ...`: developer commands for the image → tree → disk stages.

`unpack` runs `prepare_rootfs` alone; `disk` runs it into a staging tree that is
always removed, then `build_ext4` (formats/image-inputs.md).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from smolpack.errors import UsageError

if TYPE_CHECKING:
    from smolpack.image import ImageDefaults

ARCH_CHOICES = click.Choice(["x86_64", "aarch64", "amd64", "arm64"])


def _show_warnings() -> None:
    log = logging.getLogger("smolpack.image")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        log.addHandler(handler)
        log.propagate = False


def _parse_extra(spec: str) -> tuple[str, tuple[Path, int]]:
    guest, sep, rest = spec.partition("=")
    host, _, mode_text = rest.partition(":")
    if not sep or not guest.startswith("/") or not host:
        raise UsageError(f"--add {spec!r}: expected /GUEST/PATH=HOST_FILE[:MODE]")
    try:
        mode = int(mode_text, 8) if mode_text else 0o644
    except ValueError:
        raise UsageError(f"--add {spec!r}: mode {mode_text!r} is not octal") from None
    return guest, (Path(host), mode)


@click.group("image")
def image() -> None:
    """Turn an image into a root tree or an ext4 base disk (developer commands).

    IMAGE may be a rootfs directory, a rootfs tarball (.tar, .tar.gz, .tar.zst),
    an OCI image layout directory, an OCI archive, a `docker save` archive or a
    registry reference (alpine:3.20), pulled into the cache first.
    """


def _prepare(
    image_path: Path, dest: Path, arch: str, *, offline: bool, quiet: bool
) -> tuple[ImageDefaults, str]:
    """Fill `dest` from a local image or, when IMAGE is no path, a registry reference."""
    from smolpack.image import detect_kind, goarch, prepare_rootfs, prepare_rootfs_from_source
    from smolpack.smolfile._values import ARCHIVE_SUFFIXES

    text = str(image_path)
    # The Smolfile's rule: what looks like a path is one, even when it is missing.
    looks_like_path = text.startswith(("/", ".", "~")) or text.endswith(ARCHIVE_SUFFIXES)
    if not image_path.exists() and not looks_like_path:
        from smolpack.progress import Progress
        from smolpack.registry import Platform, pull_image

        pulled = pull_image(
            text,
            platform=Platform(architecture=goarch(arch)),
            progress=Progress(quiet=quiet),
            offline=offline,
        )
        defaults = prepare_rootfs_from_source(pulled.source(), dest, arch=arch)
        return defaults, f"registry image {pulled.reference}"
    kind = detect_kind(image_path)
    return prepare_rootfs(image_path, dest, arch=arch), f"{kind.value} {image_path}"


@image.command("unpack")
@click.argument("image_path", metavar="IMAGE", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--arch", type=ARCH_CHOICES, default="x86_64", show_default=True)
@click.option("--offline", is_flag=True, help="A registry IMAGE must come from the cache.")
@click.option("-q", "--quiet", is_flag=True, help="No pull progress.")
def unpack(image_path: Path, dest: Path, arch: str, offline: bool, quiet: bool) -> None:
    """Unpack IMAGE into DEST (absent or empty) and print the image's defaults as JSON.

    IMAGE that is not an existing path is pulled as a registry reference.

    \b
    Example:
      smolpack image unpack ./alpine-oci ./rootfs
      smolpack image unpack alpine:3.20 ./rootfs --arch aarch64
    """
    _show_warnings()
    defaults, what = _prepare(image_path, dest, arch, offline=offline, quiet=quiet)
    click.echo(f"unpacked {what} into {dest}", err=True)
    doc = {
        "env": dict(defaults.env),
        "workdir": defaults.workdir,
        "entrypoint": list(defaults.entrypoint),
        "cmd": list(defaults.cmd),
    }
    click.echo(json.dumps(doc, indent=2))


@image.command("disk")
@click.argument("image_path", metavar="IMAGE", type=click.Path(path_type=Path))
@click.argument("out", metavar="OUT.img", type=click.Path(path_type=Path))
@click.option("--arch", type=ARCH_CHOICES, default="x86_64", show_default=True)
@click.option("--headroom-mib", type=click.IntRange(0), default=64, show_default=True)
@click.option("--offline", is_flag=True, help="A registry IMAGE must come from the cache.")
@click.option("-q", "--quiet", is_flag=True, help="No pull progress.")
@click.option(
    "--add",
    "adds",
    multiple=True,
    metavar="/GUEST=HOST[:MODE]",
    help="Also put HOST_FILE at /GUEST in the image (mode in octal, default 644).",
)
def disk(
    image_path: Path,
    out: Path,
    arch: str,
    headroom_mib: int,
    offline: bool,
    quiet: bool,
    adds: tuple[str, ...],
) -> None:
    """Build an ext4 base disk OUT.img from IMAGE (reproducible; see SOURCE_DATE_EPOCH).

    \b
    Example:
      smolpack image disk ./rootfs.tar.zst base.img --add /smolpack/agent=./agent:755
    """
    from smolpack.disk import build_ext4

    _show_warnings()
    extras = dict(_parse_extra(spec) for spec in adds)
    with tempfile.TemporaryDirectory(prefix="smolpack-tree-") as tmp:
        tree = Path(tmp) / "root"
        _prepare(image_path, tree, arch, offline=offline, quiet=quiet)
        build_ext4(tree, out, extra_files=extras, headroom_mib=headroom_mib)
    click.echo(f"wrote {out} ({out.stat().st_size >> 20} MiB)", err=True)


COMMANDS: list[click.Command] = [image]
