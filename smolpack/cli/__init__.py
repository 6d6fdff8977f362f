"""The `smolpack` command line (click).

Each command lives in a small module beside this one and is registered on
`cli` below. `main` is the only place that turns errors into exit codes
(formats/exit-codes.md): our `SmolpackError`s print one line; anything else
is a bug and prints a short report (the traceback only with SMOLPACK_DEBUG=1).
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import sys
import traceback

import click

from smolpack import __version__
from smolpack.errors import Interrupted, SmolpackError, interrupted_exit_code

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="smolpack")
def cli() -> None:
    """Pack a Linux microVM into one self-booting executable.

    \b
    Example:
      smolpack smolfile check ./Smolfile
      smolpack inspect tool.smolmachine
    """


def _register() -> None:
    # Imported here so `smolpack.cli` stays the one entry point for every command.
    from smolpack.cli import (
        _doctor_cmds,
        _image_cmds,
        _payload_cmds,
        _registry_cmds,
        _run_cmds,
        _smolfile_cmds,
        _stub_cmds,
    )

    modules = (
        _run_cmds, _registry_cmds, _smolfile_cmds, _payload_cmds, _image_cmds, _doctor_cmds,
        _stub_cmds,
    )  # fmt: skip
    for module in modules:
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def _report_bug(exc: BaseException) -> None:
    print(
        f"smolpack {__version__} hit an internal error: {type(exc).__name__}: {exc}\n"
        f"  platform: {platform.platform()} python {platform.python_version()}\n"
        f"  argv: {sys.argv!r}\n"
        "  This is a bug in smolpack; please report it with the lines above"
        " (set SMOLPACK_DEBUG=1 for the traceback).",
        file=sys.stderr,
    )
    if os.environ.get("SMOLPACK_DEBUG"):
        traceback.print_exception(exc)


def _unwind_on_signal(signo: int, _frame: object) -> None:
    # Once: a second signal must not interrupt the cleanup the first one started.
    for other in TERMINATING:
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(signo)


# Unwound like Ctrl-C (which Python already turns into KeyboardInterrupt), so every
# `finally` runs: a killed `create` leaves no build directory beside its output, no VM.
# A run installs its own handlers while it runs (smolpack/runner.py, `_Interrupts`).
TERMINATING = (signal.SIGTERM, signal.SIGHUP)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and exit with its code."""
    saved = {signo: signal.signal(signo, _unwind_on_signal) for signo in TERMINATING}
    try:
        _main(argv)
    finally:  # for callers that catch SystemExit (tests)
        for signo, handler in saved.items():
            signal.signal(signo, handler)


def _show_warnings() -> None:
    # Library modules log warnings (e.g. the image stage's skipped special files); without
    # a handler Python would print them bare. One prefixed line each, on stderr.
    log = logging.getLogger("smolpack")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        log.addHandler(handler)
        # Not to the root logger too: PyInstaller (a stub build inside `create`) gives it
        # a handler, and each warning would print twice.
        log.propagate = False


def _main(argv: list[str] | None) -> None:
    _show_warnings()
    try:
        # standalone_mode=False returns ctx.exit()'s code instead of exiting.
        rc = cli.main(args=argv, prog_name="smolpack", standalone_mode=False)
    except SmolpackError as err:
        err.show()
        sys.exit(err.exit_code)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        # click turns a KeyboardInterrupt (our `Interrupted` too) into Abort from it.
        cause = exc.__cause__ if isinstance(exc, click.exceptions.Abort) else exc
        print("Aborted.", file=sys.stderr)
        sys.exit(interrupted_exit_code(cause) if isinstance(cause, KeyboardInterrupt) else 130)
    except Exception as exc:  # noqa: BLE001 - the one place bugs are reported
        _report_bug(exc)
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)
