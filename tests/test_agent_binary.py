"""Building and caching the static agent binary (smolpack/agent/binary.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from smolpack.agent.binary import agent_binary, find_compiler, guest_source_dir
from smolpack.errors import HostError, UsageError

REPO = Path(__file__).resolve().parents[1]


def test_binary_is_static_cached_and_reused(tmp_path: Path) -> None:
    first = agent_binary(cache_dir=tmp_path)
    assert first.parent == tmp_path / "agent" / "x86_64"
    assert first.read_bytes()[:4] == b"\x7fELF"
    # Static: no program interpreter, so it runs as PID 1 on any root filesystem.
    assert b"/ld-linux" not in first.read_bytes() and b"ld-musl" not in first.read_bytes()
    mtime = first.stat().st_mtime_ns
    assert agent_binary(cache_dir=tmp_path) == first
    assert first.stat().st_mtime_ns == mtime
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp files left


def test_cache_key_follows_the_source(tmp_path: Path) -> None:
    src = tmp_path / "guest"
    shutil.copytree(guest_source_dir(), src, ignore=shutil.ignore_patterns("build"))
    before = agent_binary(cache_dir=tmp_path / "cache", source_dir=src)
    (src / "agent.c").write_text((src / "agent.c").read_text() + "\n/* changed */\n")
    after = agent_binary(cache_dir=tmp_path / "cache", source_dir=src)
    assert before != after
    assert subprocess.run([str(after), "--version"], capture_output=True).returncode == 0


def test_env_var_sets_the_cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMOLPACK_CACHE_DIR", str(tmp_path))
    assert agent_binary().is_relative_to(tmp_path / "agent" / "x86_64")


def test_xdg_cache_home_sets_the_cache_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same root as every other cache entry (smolpack.cache.cache_root).
    monkeypatch.delenv("SMOLPACK_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    binary = agent_binary()
    assert binary.parent == tmp_path / "smolpack" / "agent" / "x86_64"
    assert binary.read_bytes()[:4] == b"\x7fELF"


def test_compile_error_is_host_error_and_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "guest"
    src.mkdir()
    (src / "agent.c").write_text("int main(void) { return undeclared; }\n")
    with pytest.raises(HostError, match=r"^compiling the guest agent with .*gcc failed: .*"):
        agent_binary(cache_dir=tmp_path / "cache", source_dir=src)
    assert list((tmp_path / "cache" / "agent" / "x86_64").iterdir()) == []


def test_missing_source_and_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(HostError, match=r"^guest agent source not found at .*/agent.c; reinstall"):
        agent_binary(cache_dir=tmp_path, source_dir=tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HostError) as exc:
        find_compiler("x86_64")
    assert exc.value.message == (
        "no C compiler for the x86_64 guest agent; install musl-tools"
        " (apt-get install musl-tools) or gcc and libc6-dev"
    )


def test_unknown_arch_is_usage_error() -> None:
    with pytest.raises(UsageError, match=r"^unsupported guest architecture 'riscv64' \(use one"):
        find_compiler("riscv64")


EM_MACHINE = {"x86_64": 62, "aarch64": 183}  # ELF e_machine: EM_X86_64, EM_AARCH64


def static_elf_machine(path: Path) -> int:
    """e_machine of a 64-bit little-endian ELF; asserts it has no program interpreter."""
    data = path.read_bytes()
    assert data[:6] == b"\x7fELF\x02\x01", "not a 64-bit little-endian ELF"
    machine = int.from_bytes(data[18:20], "little")
    phoff = int.from_bytes(data[32:40], "little")
    phentsize = int.from_bytes(data[54:56], "little")
    phnum = int.from_bytes(data[56:58], "little")
    for i in range(phnum):
        p_type = int.from_bytes(data[phoff + i * phentsize : phoff + i * phentsize + 4], "little")
        assert p_type != 3, "has PT_INTERP: dynamically linked"
    return machine


def _cross_compiler_or_skip(arch: str) -> None:
    try:
        find_compiler(arch)
    except HostError as err:
        pytest.skip(f"no {arch} cross compiler here: {err.hint}")


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_packer_builds_a_static_agent_for_each_guest_arch(tmp_path: Path, arch: str) -> None:
    _cross_compiler_or_skip(arch)
    binary = agent_binary(arch, cache_dir=tmp_path)
    assert binary.parent == tmp_path / "agent" / arch
    assert static_elf_machine(binary) == EM_MACHINE[arch]


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_guest_makefile_builds_a_static_agent_for_each_guest_arch(
    tmp_path: Path, arch: str
) -> None:
    _cross_compiler_or_skip(arch)
    for tool in ("make", "file"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    out = tmp_path / "agent"
    res = subprocess.run(
        ["make", "-s", "-C", str(REPO / "guest"), "check", f"ARCH={arch}", f"OUT={out}"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == f"{out}: static {arch} ELF"
    assert static_elf_machine(out) == EM_MACHINE[arch]
