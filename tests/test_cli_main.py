"""The CLI's single exit point: usage errors, our errors, and bugs."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from smolpack import cli as cli_mod
from smolpack.errors import Interrupted, SmolfileError


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smolpack", *args], capture_output=True, text=True, env=env
    )


def test_help_lists_commands_and_exits_zero() -> None:
    res = run_cli("--help")
    assert res.returncode == 0
    assert "Pack a Linux microVM" in res.stdout


def test_unknown_command_is_usage_error() -> None:
    res = run_cli("no-such-command")
    assert res.returncode == 2
    assert "No such command 'no-such-command'" in res.stderr
    assert "Traceback" not in res.stderr


def test_smolpack_error_prints_one_line_and_its_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    @click.command("boom-user")
    def boom() -> None:
        raise SmolfileError("Smolfile", "memory must be at least 64 MiB (got 32)", line=4)

    monkeypatch.setattr(cli_mod.cli, "commands", {**cli_mod.cli.commands, "boom-user": boom})
    with pytest.raises(SystemExit) as exc:
        cli_mod.main(["boom-user"])
    assert exc.value.code == 3
    assert capsys.readouterr().err == "Error: Smolfile:4: memory must be at least 64 MiB (got 32)\n"


def test_internal_bug_is_reported_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    @click.command("boom-bug")
    def boom() -> None:
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(cli_mod.cli, "commands", {**cli_mod.cli.commands, "boom-bug": boom})
    monkeypatch.delenv("SMOLPACK_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exc:
        cli_mod.main(["boom-bug"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: oops" in err
    assert "please report" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("raised", "code"),
    [(KeyboardInterrupt(), 130), (Interrupted(15), 143), (Interrupted(1), 129)],
    ids=["ctrl-c", "sigterm", "sighup"],
)
def test_an_interrupted_command_exits_128_plus_the_signal(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    raised: KeyboardInterrupt,
    code: int,
) -> None:
    @click.command("boom-signal")
    def boom() -> None:
        raise raised

    monkeypatch.setattr(cli_mod.cli, "commands", {**cli_mod.cli.commands, "boom-signal": boom})
    with pytest.raises(SystemExit) as exc:
        cli_mod.main(["boom-signal"])
    assert exc.value.code == code
    assert capsys.readouterr().err.endswith("Aborted.\n")
