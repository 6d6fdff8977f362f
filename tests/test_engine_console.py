"""Explaining a guest that never answered from its console log (smolpack.engine.console)."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from smolpack.build import _boot_handshake
from smolpack.engine.console import console_tail, silent_guest_detail
from smolpack.errors import AgentError, AgentTimeout


def test_tail_skips_blank_lines_and_keeps_the_last(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("one\n\n  \ntwo\r\nthree\n\n")
    assert console_tail(log, 2) == ["two", "three"]
    assert console_tail(log) == ["one", "two", "three"]


def test_tail_of_a_missing_or_empty_log_is_empty(tmp_path: Path) -> None:
    assert console_tail(tmp_path / "absent.log") == []
    (tmp_path / "empty.log").write_bytes(b"")
    assert console_tail(tmp_path / "empty.log") == []


def test_detail_quotes_the_last_line(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(
        b"[    3.1] Run /smolpack/agent as init process\nsmolpack-agent: \xff started\n"
    )
    assert (
        silent_guest_detail(log) == "the guest console's last line: smolpack-agent: \ufffd started"
    )


def test_detail_cuts_a_long_line(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("x" * 5000 + "\n")
    detail = silent_guest_detail(log)
    assert detail.endswith("...") and len(detail) < 260


def test_detail_of_an_empty_console_says_the_agent_never_started(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("")
    assert silent_guest_detail(log) == (
        "the guest printed nothing: its kernel did not get as far as starting the agent"
    )


@pytest.mark.parametrize(
    ("console", "detail"),
    [
        ("", "the guest printed nothing: its kernel did not get as far as starting the agent"),
        ("Kernel panic - not syncing: VFS\n", "the guest console's last line: Kernel panic"),
    ],
)
def test_build_handshake_timeout_says_what_the_console_showed(
    tmp_path: Path, console: str, detail: str
) -> None:
    log = tmp_path / "console.log"
    log.write_text(console)
    host, silent = socket.socketpair()
    vm = SimpleNamespace(agent=host, console_log=log)
    try:
        with pytest.raises(AgentTimeout) as info:
            _boot_handshake(vm, 0.1)  # type: ignore[arg-type]
    finally:
        host.close()
        silent.close()
    assert isinstance(info.value, AgentError)
    assert str(info.value).startswith("guest agent did not answer the handshake within 0.1 s; ")
    assert detail in str(info.value)
