"""The packed tool's entry point: `./tool args...` (run stage; issue "One file users just run").

`stub/launcher.py` (the PyInstaller entry script) calls `main`. Every argument belongs to the
tool, except the reserved `--smol-*` namespace, which the launcher takes out wherever it
appears:

    --smol-help            what the launcher options are
    --smol-version         smolpack version of this launcher
    --smol-info            what the pack holds, which engine would run it and why
    --smol-engine=E        auto (default), krun or qemu   (env: SMOLPACK_ENGINE)
    --smol-cold            boot the VM instead of restoring its saved state
    --smol-debug           timings, the console log on failure, keep the run files
    --smol-port H:G        forward 127.0.0.1:H to the guest's port G (repeatable)
    --smol-ssh-agent       the program reaches your ssh-agent (SSH_AUTH_SOCK)
    --smol-volume H:G[:ro] a host directory at guest path G for this run (repeatable)
    --smol-cwd=off|ro|rw   your current directory at the same path, the program starts there
    --smol-allow-unfiltered-egress   run a pack with egress allow lists under QEMU anyway

The tool's own exit status passes through unchanged; the launcher's own failures print one
`Error:` line and use the reserved block of formats/exit-codes.md (110-125). Only `main`
calls `sys.exit`.

Imports: `os` and `sys` at the top; the payload reader and the runner inside functions,
so `--smol-version` and `--smol-help` cost no more than the interpreter itself. Not even
dataclasses or typing: dataclasses imports inspect (ast, dis, enum, re, tokenize), ~10 ms
of every start on our dev VM (bench/bench_launcher.py).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: see the docstring (mypy takes any TYPE_CHECKING as true)
if TYPE_CHECKING:
    from typing import NoReturn

    from smolpack.agent.channels import PortForward
    from smolpack.host_resources import HostVolume

PREFIX = "--smol-"
FLAGS = ("help", "version", "info", "cold", "debug", "ssh-agent", "allow-unfiltered-egress")
# Options with a value, as `--smol-NAME=V` or `--smol-NAME V`.
VALUED = ("port", "volume", "cwd")
ENV_ENGINE = "SMOLPACK_ENGINE"

HELP = """\
{name}: a smolpack tool (a Linux microVM packed into one executable).

Every argument goes to the tool inside the VM; its exit code is this program's.
Launcher options (reserved namespace, accepted anywhere on the command line):

  --smol-help            show this help
  --smol-version         show the smolpack version of this launcher
  --smol-info            show what is packed and which engine would run it, and why
  --smol-engine=ENGINE   auto (default), krun or qemu
  --smol-cold            boot the VM instead of restoring its saved state
  --smol-debug           print timings and the VM console on failure; keep run files
  --smol-port HOST:GUEST forward 127.0.0.1:HOST to the guest's port GUEST for this run
                         (repeatable; works without network; adds to the pack's ports)
  --smol-ssh-agent       give the program an SSH_AUTH_SOCK that reaches your ssh-agent
                         (no key enters the VM)
  --smol-volume HOST:GUEST[:ro]
                         mount the host directory HOST at GUEST in the VM for this run
                         (repeatable; new files belong to you)
  --smol-cwd=off|ro|rw   share your current directory at the same path and start the
                         program there (overrides the pack's host_cwd)
  --smol-allow-unfiltered-egress
                         run a pack whose network is limited to allow lists under QEMU,
                         which cannot filter: its egress is then unrestricted

Environment:
  SMOLPACK_ENGINE        default for --smol-engine
  SMOLPACK_CACHE_DIR     where files materialized from the pack are cached
                         (default ~/.cache/smolpack)
  SSH_AUTH_SOCK          your ssh-agent (--smol-ssh-agent, [auth] ssh_agent)
  the pack's [secrets]   read from your environment or files at each run
"""


class LaunchOptions:
    """The launcher's options (a frozen dataclass by hand: see the module docstring)."""

    __slots__ = (
        "help", "version", "info", "cold", "debug", "engine",
        "port", "volume", "cwd", "ssh_agent", "allow_unfiltered_egress",
    )  # fmt: skip
    help: bool  # --smol-help
    version: bool  # --smol-version
    info: bool  # --smol-info
    cold: bool  # --smol-cold
    debug: bool  # --smol-debug
    engine: str  # --smol-engine / SMOLPACK_ENGINE
    port: tuple[str, ...]  # --smol-port HOST:GUEST, repeatable
    volume: tuple[str, ...]  # --smol-volume HOST:GUEST[:ro], repeatable
    cwd: str | None  # --smol-cwd=off|ro|rw
    ssh_agent: bool  # --smol-ssh-agent
    allow_unfiltered_egress: bool  # --smol-allow-unfiltered-egress

    def __init__(
        self,
        *,
        help: bool = False,
        version: bool = False,
        info: bool = False,
        cold: bool = False,
        debug: bool = False,
        engine: str = "auto",
        port: tuple[str, ...] = (),
        volume: tuple[str, ...] = (),
        cwd: str | None = None,
        ssh_agent: bool = False,
        allow_unfiltered_egress: bool = False,
    ) -> None:
        values = (
            help, version, info, cold, debug, engine,
            port, volume, cwd, ssh_agent, allow_unfiltered_egress,
        )  # fmt: skip
        for name, value in zip(self.__slots__, values, strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"LaunchOptions is frozen: cannot set {name}")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LaunchOptions) and self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"LaunchOptions({fields})"


def parse_args(argv: list[str], env: dict[str, str] | os._Environ[str]) -> tuple[
    LaunchOptions, list[str]
]:  # fmt: skip
    """Split `argv` (without argv[0]) into launcher options and the tool's arguments."""
    from smolpack.engine.registry import choices, spelled
    from smolpack.errors import UsageError

    values: dict[str, object] = {"engine": env.get(ENV_ENGINE) or "auto"}
    tool_args: list[str] = []
    ports: list[str] = []
    volumes: list[str] = []
    args = iter(argv)
    for arg in args:
        if not arg.startswith(PREFIX):
            tool_args.append(arg)
            continue
        name, eq, value = arg[len(PREFIX) :].partition("=")
        if name in VALUED:
            if not eq:
                value = next(args, "")
            if not value:
                shape = {"port": "HOST:GUEST", "volume": "HOST:GUEST[:ro]", "cwd": "off|ro|rw"}
                raise UsageError(f"{PREFIX}{name} needs a value: {PREFIX}{name} {shape[name]}")
            if name == "port":
                ports.append(value)
            elif name == "volume":
                volumes.append(value)
            else:
                values["cwd"] = value
        elif name in FLAGS and not eq:
            values[name.replace("-", "_")] = True
        elif name == "engine" and eq:
            values["engine"] = value
        elif name == "engine":
            raise UsageError(f"--smol-engine needs a value: --smol-engine={'|'.join(choices())}")
        else:
            raise UsageError(f"unknown launcher option {arg} (see --smol-help)")
    if values["engine"] not in choices():
        source = (
            "--smol-engine" if any(a.startswith(PREFIX + "engine") for a in argv) else ENV_ENGINE
        )
        raise UsageError(f"{source} must be {spelled(choices())} (got {values['engine']!r})")
    if values.get("cwd") not in (None, "off", "ro", "rw"):
        raise UsageError(f"--smol-cwd must be off, ro or rw (got {values['cwd']!r})")
    values["port"] = tuple(ports)
    values["volume"] = tuple(volumes)
    return LaunchOptions(**values), tool_args  # type: ignore[arg-type]


def self_path() -> str:
    """The packed executable this process runs from (the file carrying the payload)."""
    if getattr(sys, "frozen", False):
        # PyInstaller onefile: sys.executable is the packed file itself, not the extracted
        # interpreter (which lives under sys._MEIPASS).
        return os.path.realpath(sys.executable)
    return os.path.realpath(sys.argv[0])


def main(argv: list[str] | None = None, *, pack: str | None = None) -> NoReturn:
    """Run the tool; `pack` overrides the file carrying the payload (tests, `python -m`)."""
    from smolpack import __version__
    from smolpack.errors import SmolpackError, interrupted_exit_code, launcher_exit_code

    argv = sys.argv[1:] if argv is None else argv
    name = os.path.basename(sys.argv[0]) or "tool"
    bootloader: int | None = None
    try:
        opts, tool_args = parse_args(argv, os.environ)
        if opts.help:
            sys.stdout.write(HELP.format(name=name))
            sys.exit(0)
        if opts.version:
            print(f"smolpack launcher {__version__}")
            sys.exit(0)
        path = pack or self_path()
        if opts.info:
            from smolpack.launcher_info import print_info

            print_info(path, opts.engine, opts.cold)
            sys.exit(0)
        bootloader = _follow_bootloader()  # here: --smol-version need not import ctypes
        from smolpack.runner import RunOptions, run_payload

        options = RunOptions(
            engine=opts.engine,
            cold=opts.cold,
            debug=opts.debug,
            ports=_ports(opts.port),
            ssh_agent=opts.ssh_agent,
            unfiltered_egress=opts.allow_unfiltered_egress,
            volumes=_volumes(opts.volume),
            cwd_mode=opts.cwd,
        )
        sys.exit(run_payload(path, tool_args, options))
    except SmolpackError as err:
        err.show()
        sys.exit(launcher_exit_code(err))
    except KeyboardInterrupt as exc:
        print("Aborted.", file=sys.stderr)
        sys.exit(interrupted_exit_code(exc))
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - the one place launcher bugs are reported
        _report_bug(exc, __version__)
        sys.exit(125)
    finally:
        if bootloader is not None and os.getppid() != bootloader:
            _remove_own_unpacked_files()


# Parsed by the modules that serve them, imported only when the run has any.
def _ports(specs: tuple[str, ...]) -> tuple[PortForward, ...]:
    if not specs:
        return ()
    from smolpack.agent.channels import parse_port_forward

    return tuple(parse_port_forward(spec, "--smol-port") for spec in specs)


def _volumes(specs: tuple[str, ...]) -> tuple[HostVolume, ...]:
    if not specs:
        return ()
    from smolpack.host_resources import parse_volume

    return tuple(parse_volume(spec, "--smol-volume") for spec in specs)


def _follow_bootloader() -> int | None:
    """In a PyInstaller onefile stub: the bootloader's pid, and SIGTERM for us when it dies.

    The bootloader runs us as its child; it forwards its signals to us and, once we exit,
    removes the files it unpacked (sys._MEIPASS). SIGKILL gives it no chance to do either:
    we would run the program to its end with nobody reading, and leave those files. So the
    kernel sends us SIGTERM when it dies (PR_SET_PDEATHSIG), which the run path takes as an
    abort since our parent is gone (`runner._Interrupts`), and we remove the files ourselves.
    """
    if not getattr(sys, "frozen", False) or not hasattr(sys, "_MEIPASS"):
        return None
    import ctypes
    import signal

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        return None  # macOS: no such call; the bootloader's own cleanup is all there is
    return parent


def _remove_own_unpacked_files() -> None:
    import shutil

    # Everything the interpreter needs is loaded by now; unlinking mapped files is safe.
    shutil.rmtree(getattr(sys, "_MEIPASS", ""), ignore_errors=True)


def _report_bug(exc: BaseException, version: str) -> None:
    import platform

    print(
        f"smolpack launcher {version} hit an internal error: {type(exc).__name__}: {exc}\n"
        f"  platform: {platform.platform()}\n"
        f"  argv: {sys.argv!r}\n"
        "  This is a bug in smolpack; please report it with the lines above"
        " (run with --smol-debug for the traceback).",
        file=sys.stderr,
    )
    if "--smol-debug" in sys.argv:
        import traceback

        traceback.print_exception(exc)
