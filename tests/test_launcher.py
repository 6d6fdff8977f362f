"""The launcher's own surface, unfrozen: option parsing, help, info, errors and exit codes.

The frozen stub runs the very same `smolpack.launcher.main`; tests/e2e/test_tool.py runs
real packed executables.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from payload_helpers import REPO, VECTORS, write_fake_pack

from smolpack import __version__, runner
from smolpack.engine.qemu import CPU_MODEL, MACHINE
from smolpack.engine.select import HostFacts
from smolpack.errors import UsageError
from smolpack.host import KvmStatus
from smolpack.launcher import LaunchOptions, parse_args
from smolpack.launcher_info import info_text

SAMPLE = VECTORS / "valid" / "sample.smolmachine"


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    return write_fake_pack(tmp_path / "fake.smolmachine")


def launch(*args: str, pack: Path = SAMPLE, **env: str) -> subprocess.CompletedProcess[str]:
    code = f"import sys; from smolpack.launcher import main; main(sys.argv[1:], pack={str(pack)!r})"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **env},
        timeout=60,
    )


def test_every_other_argument_belongs_to_the_tool() -> None:
    opts, args = parse_args(["--help", "-v", "--smol-cold", "x", "--", "--smol"], {})
    assert opts == LaunchOptions(cold=True)
    assert args == ["--help", "-v", "x", "--", "--smol"]


def test_engine_from_option_beats_environment() -> None:
    env = {"SMOLPACK_ENGINE": "krun"}
    assert parse_args([], env)[0].engine == "krun"
    assert parse_args(["--smol-engine=qemu"], env)[0].engine == "qemu"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--smol-frobnicate"], {}, "unknown launcher option --smol-frobnicate (see --smol-help)"),
        (["--smol-cold=yes"], {}, "unknown launcher option --smol-cold=yes (see --smol-help)"),
        (["--smol-engine"], {}, "--smol-engine needs a value: --smol-engine=auto|krun|qemu"),
        (["--smol-engine=kvm"], {}, "--smol-engine must be auto, krun or qemu (got 'kvm')"),
        (
            [],
            {"SMOLPACK_ENGINE": "fast"},
            "SMOLPACK_ENGINE must be auto, krun or qemu (got 'fast')",
        ),
    ],
)
def test_bad_launcher_options(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_args(argv, env)
    assert str(err.value) == message


def test_help_and_version_do_not_need_a_payload(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    res = launch("--smol-help", pack=missing)
    assert res.returncode == 0
    assert "--smol-engine=ENGINE   auto (default), krun or qemu" in res.stdout
    res = launch("--smol-version", pack=missing)
    assert (res.returncode, res.stdout) == (0, f"smolpack launcher {__version__}\n")


def test_info_says_who_enforces_the_egress_allow_list(tmp_path: Path) -> None:
    pack = write_fake_pack(
        tmp_path / "net.smolmachine",
        net=True,
        allow_hosts=["pypi.org"],
        allow_cidrs=["10.0.0.0/8"],
    )
    res = launch("--smol-info", pack=pack)
    assert res.returncode == 0, res.stderr
    assert "network on\n" in res.stdout
    assert (
        "egress    only to pypi.org, 10.0.0.0/8 (enforced by krun; QEMU cannot filter and runs"
        " it only with --smol-allow-unfiltered-egress)\n" in res.stdout
    )


def test_info_has_no_egress_line_without_allow_lists(pack: Path) -> None:
    assert "\negress " not in launch("--smol-info", pack=pack).stdout


def test_sigterm_while_the_pack_is_verified_unwinds_with_143(tmp_path: Path) -> None:
    # Verifying a big pack takes seconds; a signal then must unwind (exit 128+N, `finally`
    # blocks run) rather than kill the process with Python's default action. To catch the
    # launcher there deterministically, hold the verification entry's cache lock: it waits
    # in ensure_verified until we signal it.
    from smolpack.integrity import file_key
    from smolpack.payload import open_payload

    pack = write_fake_pack(tmp_path / "fake.smolmachine")
    with open_payload(pack) as payload:
        key = file_key(payload)
    cache = tmp_path / "cache"
    (cache / "verified").mkdir(parents=True)
    lock = os.open(cache / "verified" / f".{key}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        code = f"import sys; from smolpack.launcher import main; main([], pack={str(pack)!r})"
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stderr=subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, "SMOLPACK_CACHE_DIR": str(cache)},
        )
        deadline = time.monotonic() + 30
        while f" {proc.pid} " not in _blocked_lock_waiters():
            assert proc.poll() is None and time.monotonic() < deadline, "never reached the lock"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        os.close(lock)
    assert proc.returncode == 143, err.decode()
    assert b"Traceback" not in err


def _blocked_lock_waiters() -> str:
    # /proc/locks lists a waiting request as "N: -> FLOCK ADVISORY WRITE <pid> ...".
    text = Path("/proc/locks").read_text()
    return "".join(line + " \n" for line in text.splitlines() if "->" in line)


def test_bad_option_exits_123_with_one_line() -> None:
    res = launch("--smol-nope")
    assert res.returncode == 123
    assert res.stderr == "Error: unknown launcher option --smol-nope (see --smol-help)\n"


def test_info_names_the_machine_and_the_engine(pack: Path) -> None:
    res = launch("--smol-info", pack=pack)
    assert res.returncode == 0, res.stderr
    assert "qemu-x86_64: qemu on linux/x86_64" in res.stdout
    assert "machine   1 vCPU, 256 MiB RAM, network off\n" in res.stdout
    assert "runs      /bin/sh -c 'echo hi'\n" in res.stdout
    assert "workdir   /root\n" in res.stdout
    engine = [line for line in res.stdout.splitlines() if line.startswith("engine ")]
    assert len(engine) == 1
    assert engine[0].startswith("engine    qemu (tcg), restoring qemu-x86_64: ") or engine[
        0
    ].startswith("engine    krun")


def test_info_when_forced_engine_cannot_run(pack: Path) -> None:
    res = launch("--smol-info", "--smol-engine=qemu", pack=pack, PATH="/nonexistent")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == (
        "engine    none: qemu-system-x86_64 not found on PATH;"
        " install QEMU or use --smol-engine=krun"
    )


def _engine_line(
    pack: Path, fake_qemu: Path, qemu_version: str, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The --smol-info engine line on a pinned host: no hardware virtualization (so QEMU),
    whose qemu-system-x86_64 is a script that says `qemu_version`."""
    fake_qemu.parent.mkdir()
    fake_qemu.write_text(f"#!/bin/sh\necho 'QEMU emulator version {qemu_version}'\n")
    fake_qemu.chmod(0o755)
    facts = HostFacts(
        arch="x86_64", os="linux", hypervisor=KvmStatus(False, "/dev/kvm does not exist"),
        libkrun=None, qemu=str(fake_qemu),
    )  # fmt: skip
    monkeypatch.setattr(runner, "host_facts", lambda payload: facts)
    text = info_text(str(pack), "auto", cold=False)
    (line,) = [x for x in text.splitlines() if x.startswith("engine ")]
    return line


def test_info_says_restore_or_cold_boot_as_a_run_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMOLPACK_CACHE_DIR", str(tmp_path / "cache"))  # QEMU's version, cached
    recorded = {"qemu_version": "8.2.2", "machine": MACHINE, "cpu": CPU_MODEL}
    pack = write_fake_pack(tmp_path / "fake.smolmachine", recorded=recorded)
    why = "hardware virtualization unavailable: /dev/kvm does not exist"
    # The QEMU that saved the state (a later patch release of its series): a restore.
    assert _engine_line(pack, tmp_path / "a" / "qemu-system-x86_64", "8.2.5", monkeypatch) == (
        f"engine    qemu (tcg), restoring qemu-x86_64: {why}"
    )
    # Another QEMU: the run would not restore but boot cold, and says why.
    assert _engine_line(pack, tmp_path / "b" / "qemu-system-x86_64", "7.2.0", monkeypatch) == (
        "engine    qemu (tcg), cold boot (not restoring qemu-x86_64: it was saved by QEMU"
        f" 8.2.2, this host has 7.2.0): {why}"
    )


def test_damaged_payload_exits_with_its_own_code(tmp_path: Path) -> None:
    bad = tmp_path / "bad.smolmachine"
    bad.write_bytes(b"not a payload at all")
    res = launch("--smol-info", pack=bad)
    assert res.returncode == 111
    assert res.stderr == f"Error: {bad}: not a .smolmachine payload or packed executable\n"


def test_flipped_byte_in_a_section_refuses_to_run(pack: Path, tmp_path: Path) -> None:
    from smolpack.payload import open_payload

    with open_payload(pack) as payload:
        disk_at, _ = payload.section_file_range("disk")
    with open(pack, "r+b") as f:
        f.seek(disk_at + 100)
        byte = f.read(1)
        f.seek(disk_at + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    res = launch("true", pack=pack, SMOLPACK_CACHE_DIR=str(tmp_path / "cache"))
    assert res.returncode == 114
    assert res.stderr.startswith(f"Error: {pack}: section 'disk' ")
    assert res.stderr.count("\n") == 1


def test_manifest_env_entry_without_equals_is_a_pack_error(tmp_path: Path) -> None:
    # Was a usage error (123) raised while encoding RUN, as if the user had typed it.
    bad = write_fake_pack(tmp_path / "bad.smolmachine", env=["PATH=/bin", "NOEQUALS"])
    res = launch("x", pack=bad, SMOLPACK_CACHE_DIR=str(tmp_path / "cache"))
    assert (res.returncode, res.stdout) == (115, "")
    assert res.stderr == f"Error: {bad}: field 'machine.env[1]' is not KEY=VALUE\n"
    assert not any(p.name.startswith("smolpack-run") for p in tmp_path.iterdir())


def test_host_resource_options() -> None:
    opts, args = parse_args(
        ["--smol-port", "8080:80", "x", "--smol-port=9000", "--smol-ssh-agent",
         "--smol-allow-unfiltered-egress", "y"],
        {},
    )  # fmt: skip
    assert (opts.port, opts.ssh_agent, opts.allow_unfiltered_egress) == (
        ("8080:80", "9000"),
        True,
        True,
    )
    assert args == ["x", "y"]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--smol-port"], "Error: --smol-port needs a value: --smol-port HOST:GUEST"),
        (["--smol-port=80:x"], "Error: --smol-port '80:x': expected PORT or HOST:GUEST"),
        (["--smol-port=0:80"], "Error: --smol-port '0:80': ports must be between 1 and 65535"),
        (["--smol-volume"], "Error: --smol-volume needs a value: --smol-volume HOST:GUEST[:ro]"),
        (
            ["--smol-volume=/nonexistent-dir:/b"],
            "Error: --smol-volume '/nonexistent-dir:/b': /nonexistent-dir is not a directory",
        ),
        (
            ["--smol-volume=/tmp:rel"],
            "Error: --smol-volume '/tmp:rel': expected HOST:GUEST[:ro] with an absolute GUEST",
        ),
        (["--smol-cwd=maybe"], "Error: --smol-cwd must be off, ro or rw (got 'maybe')"),
    ],
)
def test_bad_host_resource_options_are_one_line(argv: list[str], line: str) -> None:
    res = launch(*argv)
    assert (res.returncode, res.stderr) == (123, line + "\n")


def test_info_lists_what_each_run_attaches_from_the_host(tmp_path: Path) -> None:
    pack = write_fake_pack(
        tmp_path / "attach.smolmachine",
        ports=[[8080, 80]],
        ssh_agent=True,
        secrets=[["TOKEN", "env", "GH_TOKEN"], ["PEM", "file", "~/k.pem"]],
        host_cwd="rw",
    )
    res = launch("--smol-info", pack=pack)
    assert res.returncode == 0, res.stderr
    assert (
        "port      127.0.0.1:8080 -> guest port 80\n"
        "ssh-agent yours, through SSH_AUTH_SOCK in the guest\n"
        "cwd       yours, shared at the same path (rw; --smol-cwd=off)\n"
        "secret    TOKEN from $GH_TOKEN\n"
        "secret    PEM from ~/k.pem\n"
    ) in res.stdout


def test_a_missing_secret_is_one_line_before_any_vm(tmp_path: Path) -> None:
    pack = write_fake_pack(tmp_path / "s.smolmachine", secrets=[["TOKEN", "env", "NOPE_X"]])
    res = launch("true", pack=pack, SMOLPACK_ENGINE="qemu")
    assert (res.returncode, res.stderr) == (
        120,
        "Error: secret TOKEN: environment variable NOPE_X is not set\n",
    )
