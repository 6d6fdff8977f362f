"""`smolpack smolfile ...`: validate and show a Smolfile (formats/smolfile.md).

Warnings go to stderr, the resolved configuration to stdout, so
`smolpack smolfile check --json . > config.json` captures clean JSON.
Errors are raised as `SmolfileError` and turned into exit code 3 by `main`.
"""

from __future__ import annotations

import json

import click

from smolpack.smolfile import SmolConfig, load_smolfile


def _words(items: tuple[str, ...]) -> str:
    return json.dumps(list(items)) if items else "(image default)"


def format_config(config: SmolConfig) -> str:
    """The readable form printed by `smolfile check`."""
    rows: list[tuple[str, str]] = [("smolfile", str(config.source_path))]
    image = config.image
    if image is None:
        rows.append(("image", "(none)"))
    elif image.is_registry_ref:
        from smolpack.registry import parse_reference

        full = parse_reference(image.raw)  # the Smolfile parser accepted the same grammar
        shown = image.raw if str(full) == image.raw else f"{image.raw} = {full}"
        rows.append(("image", f"{shown} (registry reference; pulled by create and run)"))
    else:
        rows.append(("image", f"{image.raw} ({image.kind} at {image.path})"))
    rows += [("entrypoint", _words(config.entrypoint)), ("cmd", _words(config.cmd))]
    rows += [("env", f"{name}={value}") for name, value in config.env] or [("env", "(none)")]
    rows += [
        ("workdir", config.workdir or "(image default)"),
        ("cpus", str(config.cpus)),
        ("memory", f"{config.memory_mib} MiB"),
        ("net", "on" if config.net else "off"),
    ]
    rows += [("init", f"{n}. {step}") for n, step in enumerate(config.init, 1)] or [
        ("init", "(none)")
    ]
    rows += [
        ("volume", f"{v.host_path} -> {v.guest_path} ({'ro' if v.read_only else 'rw'})")
        for v in config.volumes
    ]
    rows += [("port", f"{p.host_port} -> {p.guest_port}") for p in config.ports]
    rows += [("allow_host", host) for host in config.network.allow_hosts]
    rows += [("allow_cidr", cidr) for cidr in config.network.allow_cidrs]
    if not config.artifact.is_empty:
        packed = config.packed()
        rows += [
            ("packed", f"cpus {packed.cpus}, memory {packed.memory_mib} MiB"),
            ("packed", f"entrypoint {_words(packed.entrypoint)}, cmd {_words(packed.cmd)}"),
        ]
    lines, previous = [], ""
    for label, value in rows:
        # Repeated labels (env, init...) are shown once, like a table.
        lines.append(f"{'' if label == previous else label:<11} {value}")
        previous = label
    return "\n".join(lines)


@click.group("smolfile")
def smolfile_group() -> None:
    """Work with Smolfiles (the TOML file describing a pack)."""


@smolfile_group.command("check")
@click.argument("path", default=".", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the configuration as JSON.")
def check(path: str, as_json: bool) -> None:
    """Validate a Smolfile and print its resolved configuration.

    PATH is a Smolfile or a directory holding one (default: the current
    directory). Problems are reported as FILE:LINE: message with exit code 3;
    warnings (keys smolpack ignores) go to stderr.

    \b
    Example:
      smolpack smolfile check examples/hello
      smolpack smolfile check --json ./Smolfile > config.json
    """
    config = load_smolfile(path)
    for warning in config.warnings:
        click.echo(warning, err=True)
    if as_json:
        click.echo(json.dumps(config.to_dict(), indent=2))
    else:
        click.echo(format_config(config))


COMMANDS: list[click.Command] = [smolfile_group]
