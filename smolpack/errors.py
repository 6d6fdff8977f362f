"""The one exception tree of smolpack and its exit codes (formats/exit-codes.md).

Every error a user can cause is a `SmolpackError`: one line of text and a
class-level exit code. Only `smolpack.cli.main` and `stub/launcher.py:main`
turn them into a process exit; everything else raises.
"""

from __future__ import annotations

import sys
from typing import ClassVar, TextIO


class SmolpackError(Exception):
    """Base class: `str(err)` is the one line shown to the user."""

    exit_code: ClassVar[int] = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def show(self, file: TextIO | None = None) -> None:
        print(f"Error: {self.message}", file=file or sys.stderr)


class UsageError(SmolpackError):
    """Bad command line (click uses 2 for its own usage errors too)."""

    exit_code = 2


class SmolfileError(SmolpackError):
    """Invalid Smolfile; the message names the file, line and key."""

    exit_code = 3

    def __init__(self, path: str, problem: str, *, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


class HostError(SmolpackError):
    """This host cannot do what was asked (no hypervisor, no QEMU, missing library)."""

    exit_code = 4

    def __init__(self, problem: str, *, hint: str | None = None) -> None:
        super().__init__(f"{problem}; {hint}" if hint else problem)
        self.problem = problem
        self.hint = hint


class BuildError(SmolpackError):
    """A build step (Smolfile `init`) failed."""

    exit_code = 5


class ImageError(SmolpackError):
    """The image given by the Smolfile cannot be used."""

    exit_code = 6


# -- registries (formats/registry.md, "Errors") -------------------------------
# Subclasses of ImageError: a reference that cannot be pulled is an image that cannot be
# used, but each cause has its own code so scripts can tell them apart.


class RegistryNotFound(ImageError):
    """The repository, tag or digest does not exist in the registry."""

    exit_code = 7


class RegistryUnauthorized(ImageError):
    """The registry refused our credentials (or wants some and we have none)."""

    exit_code = 8


class NoPlatformImage(ImageError):
    """The image has no variant for the platform the guest needs."""

    exit_code = 9


class RegistryUnreachable(ImageError):
    """No answer from the registry (DNS, connection, TLS, proxy), or `--offline` forbids it."""

    exit_code = 10


class RegistryDigestMismatch(ImageError):
    """A manifest or blob from the registry does not match its digest."""

    exit_code = 11


# -- payload damage (formats/smolmachine.md, "Errors") ------------------------


class PayloadError(SmolpackError):
    """Base of every `.smolmachine` format error."""

    exit_code = 115


class PayloadTruncated(PayloadError):
    exit_code = 110


class NotASmolmachine(PayloadError):
    exit_code = 111


class UnsupportedVersion(PayloadError):
    exit_code = 112


class IndexDigestMismatch(PayloadError):
    exit_code = 113


class SectionDigestMismatch(PayloadError):
    exit_code = 114


class BadLayout(PayloadError):
    exit_code = 115


# -- launcher-only failures ----------------------------------------------------
# The launcher passes the guest program's exit status through unchanged, so its
# own failures use a small reserved block clear of 126/127 and 128+N.


class EngineError(SmolpackError):
    """The VM could not be started or restored."""

    exit_code = 121


class VmStopped(EngineError):
    """The VM stopped while a run was going on (QEMU died, the guest kernel panicked)."""


class AgentError(SmolpackError):
    """The guest agent did not answer or broke the protocol."""

    exit_code = 122


class AgentChannelClosed(AgentError):
    """The agent channel ended or failed (callers check whether the VM itself stopped)."""


class AgentTimeout(AgentError):
    """The guest agent did not answer in time (callers add what the guest showed)."""


class VmUnresponsive(AgentTimeout):
    """The VM runs but its agent stopped answering pings (a hung guest): the run ends."""

    exit_code = 121


class Interrupted(KeyboardInterrupt):
    """A run was aborted by a signal (SIGINT, SIGTERM, SIGHUP); exits 128 + signo.

    A KeyboardInterrupt, so it unwinds through every `finally` (the VM is stopped and the
    run files removed) and is never mistaken for one of our errors.
    """

    def __init__(self, signo: int) -> None:
        super().__init__(signo)
        self.signo = signo


def interrupted_exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal that aborted the run (130 for a plain KeyboardInterrupt: SIGINT)."""
    return 128 + (exc.signo if isinstance(exc, Interrupted) else 2)


LAUNCHER_HOST_EXIT = 120
LAUNCHER_USAGE_EXIT = 123
LAUNCHER_BUG_EXIT = 125


def launcher_exit_code(err: SmolpackError) -> int:
    """Map an error to the launcher's reserved block (formats/exit-codes.md)."""
    if isinstance(err, HostError):
        return LAUNCHER_HOST_EXIT
    if isinstance(err, UsageError):
        return LAUNCHER_USAGE_EXIT
    if err.exit_code >= 110:
        return err.exit_code
    return LAUNCHER_BUG_EXIT
