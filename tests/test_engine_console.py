"""Explaining a guest that never answered or stopped, from its console log and its VM
(smolpack.engine.console)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from smolpack.build_steps import boot_handshake
from smolpack.engine.console import (
    console_tail,
    explain_agent_failure,
    panic_message,
    silent_guest_detail,
)
from smolpack.errors import (
    AgentChannelClosed,
    AgentError,
    AgentTimeout,
    VmStopped,
    VmUnresponsive,
)


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
    vm = SimpleNamespace(agent=host, console_log=log, stop_reason=lambda wait_s=0.0: None)
    try:
        with pytest.raises(AgentTimeout) as info:
            boot_handshake(vm, 0.1)  # type: ignore[arg-type]
    finally:
        host.close()
        silent.close()
    assert isinstance(info.value, AgentError)
    assert str(info.value).startswith("guest agent did not answer the handshake within 0.1 s; ")
    assert detail in str(info.value)


def test_panic_message_is_the_reason_of_the_last_panic(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text(
        "[    4.52] Kernel panic - not syncing: Out of memory: panic_on_oom is enabled\n"
        "[    4.53] Kernel Offset: disabled\n"
    )
    assert panic_message(log) == "Out of memory: panic_on_oom is enabled"
    log.write_text("smolpack-agent: started\n")
    assert panic_message(log) is None
    assert panic_message(tmp_path / "absent.log") is None


def _vm(log: Path, reason: str | None) -> SimpleNamespace:
    waits: list[float] = []

    def stop_reason(wait_s: float = 0.0) -> str | None:
        waits.append(wait_s)
        return reason

    return SimpleNamespace(console_log=log, stop_reason=stop_reason, waits=waits)


def test_a_stopped_vm_is_named_instead_of_the_broken_channel(tmp_path: Path) -> None:
    vm = _vm(tmp_path / "console.log", "QEMU was killed by SIGKILL")
    err = explain_agent_failure(vm, AgentChannelClosed("guest agent closed the channel"))  # type: ignore[arg-type]
    assert isinstance(err, VmStopped) and err.exit_code == 121
    assert str(err) == "the VM stopped unexpectedly (QEMU was killed by SIGKILL)"
    assert vm.waits[0] > 0  # a closed channel waits for QEMU to be reaped


def test_a_running_vm_keeps_the_agent_error(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("smolpack-agent: started, looking for port smolpack.agent\n")
    vm = _vm(log, None)
    closed = AgentChannelClosed("guest agent closed the channel")
    assert explain_agent_failure(vm, closed) is closed  # type: ignore[arg-type]
    late = explain_agent_failure(vm, AgentTimeout("no answer within 1 s"))  # type: ignore[arg-type]
    assert isinstance(late, AgentTimeout) and late.exit_code == 122
    assert str(late) == (
        "no answer within 1 s; the guest console's last line:"
        " smolpack-agent: started, looking for port smolpack.agent"
    )
    assert vm.waits[-1] == 0.0  # a timeout does not wait for a VM that is running


def test_an_unresponsive_vm_keeps_its_class_and_never_blames_the_kernel(tmp_path: Path) -> None:
    # The agent answered pings before it went quiet: it did start, whatever the console says
    # (a krun guest's console stays empty: its kernel is quiet and the agent is not PID 1).
    log = tmp_path / "console.log"
    log.write_text("")
    hung = VmUnresponsive("the VM stopped answering (no reply from the guest agent for 45 s)")
    err = explain_agent_failure(_vm(log, None), hung)  # type: ignore[arg-type]
    assert type(err) is VmUnresponsive and err.exit_code == 121
    assert str(err) == (
        "the VM stopped answering (no reply from the guest agent for 45 s);"
        " the guest console is empty"
    )


def test_recorder_keeps_at_most_two_caps_and_the_newest_lines(tmp_path: Path) -> None:
    from smolpack.engine.console_log import ConsoleRecorder, rotated

    log = tmp_path / "console.log"
    rec = ConsoleRecorder(log, cap=4096)
    qemu_end = socket.socket(fileno=os.dup(rec.engine_fd()))  # what QEMU would hold
    rec.started()
    for i in range(2000):  # ~30 KB of console through a 4 KiB cap
        qemu_end.sendall(b"line %05d of a chatty guest\n" % i)
    qemu_end.close()  # QEMU exits
    rec.drain()
    assert log.stat().st_size <= 4096 and rotated(log).stat().st_size <= 4096
    assert sorted(p.name for p in tmp_path.iterdir()) == ["console.log", "console.log.1"]
    assert console_tail(log, 2) == ["line 01998 of a chatty guest", "line 01999 of a chatty guest"]


def test_tail_reads_only_the_end_of_a_huge_log(tmp_path: Path) -> None:
    import tracemalloc

    log = tmp_path / "console.log"
    with open(log, "wb") as f:
        f.seek(256 << 20)  # 256 MiB (sparse), as a guest printing in a loop leaves
        f.write(b"\nKernel panic - not syncing: at the very end\n")
    tracemalloc.start()
    try:
        assert panic_message(log) == "at the very end"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # was: the whole log in memory, twice (bytes, then str)
