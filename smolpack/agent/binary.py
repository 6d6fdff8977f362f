"""Build and locate the static guest agent binary (create stage: image → disk).

Compiles `smolpack/_guest/agent.c` (formats/agent-protocol.md; package data, so it ships in
the wheel) for a guest architecture into a cache keyed by the sha256 of the source, the
compiler's identity and the flags, so the packer pays the ~0.3 s compile once per change.
The cache root is the shared one (`smolpack.cache.cache_root`: `SMOLPACK_CACHE_DIR`, else
`$XDG_CACHE_HOME/smolpack`, else `~/.cache/smolpack`).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import smolpack
from smolpack.cache import cache_root
from smolpack.errors import HostError, UsageError

# Keep in step with guest/Makefile.
CFLAGS = ("-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-static", "-s")
ARCHES = ("x86_64", "aarch64")
_NATIVE_HINT = "install musl-tools (apt-get install musl-tools) or gcc and libc6-dev"
_CROSS_HINT = {  # Debian/Ubuntu cross compilers with a static libc
    "x86_64": "install gcc-x86-64-linux-gnu and libc6-dev-amd64-cross",
    "aarch64": "install gcc-aarch64-linux-gnu and libc6-dev-arm64-cross",
}


def _hint(arch: str) -> str:
    return _NATIVE_HINT if arch == _host_arch() else _CROSS_HINT[arch]


def guest_source_dir() -> Path:
    """The agent's C sources: package data (`smolpack/_guest/`), so the packer can build the
    agent wherever smolpack is installed, from a wheel as from a checkout. `guest/Makefile`
    builds the same file by hand."""
    return Path(smolpack.__file__).resolve().parent / "_guest"


def _host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def find_compiler(arch: str) -> str:
    """Path of a C compiler that makes static binaries for `arch`; HostError if none."""
    if arch not in ARCHES:
        choices = ", ".join(ARCHES)
        raise UsageError(f"unsupported guest architecture {arch!r} (use one of {choices})")
    if arch == _host_arch():
        candidates = ["musl-gcc", f"{arch}-linux-musl-gcc", "gcc", "cc"]
    else:
        candidates = [f"{arch}-linux-musl-gcc", f"{arch}-linux-gnu-gcc"]
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    raise HostError(f"no C compiler for the {arch} guest agent", hint=_hint(arch))


def _build_key(source_dir: Path, compiler: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(source_dir.glob("*.[ch]")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    # The compiler's identity: its resolved path and version banner (musl-gcc is a script
    # that runs gcc, so the banner names the real compiler).
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=False
    ).stdout
    digest.update(os.path.realpath(compiler).encode() + b"\0" + version.encode() + b"\0")
    digest.update(" ".join(CFLAGS).encode())
    return digest.hexdigest()


def agent_binary(
    arch: str = "x86_64", *, cache_dir: Path | None = None, source_dir: Path | None = None
) -> Path:
    """Path of the static agent for `arch`, compiling it into the cache if needed."""
    source_dir = source_dir or guest_source_dir()
    source = source_dir / "agent.c"
    if not source.is_file():
        raise HostError(
            f"guest agent source not found at {source}",
            hint="reinstall smolpack: its package data is incomplete",
        )
    compiler = find_compiler(arch)
    key = _build_key(source_dir, compiler)
    out_dir = (cache_dir or cache_root()) / "agent" / arch
    target = out_dir / f"agent-{key[:32]}"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    # Write to a temporary name in the same directory, then rename: parallel builds and
    # interrupted compiles never leave a half-written binary under the final name.
    fd, tmp_name = tempfile.mkstemp(prefix=".agent-", dir=out_dir)
    os.close(fd)
    # The compiler's own temp files go to a directory we remove: with a `,` in TMPDIR,
    # gcc 12's linker plugin leaves a `ccXXXXXX.res` behind in the user's temp dir.
    scratch = tempfile.mkdtemp(prefix=".agent-tmp-", dir=out_dir)
    try:
        res = subprocess.run(
            [compiler, *CFLAGS, "-o", tmp_name, str(source)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "TMPDIR": scratch},
        )
        if res.returncode != 0:
            first = next((ln for ln in res.stderr.splitlines() if ln.strip()), "no output")
            raise HostError(
                f"compiling the guest agent with {compiler} failed: {first}",
                hint=_hint(arch),
            )
        os.chmod(tmp_name, 0o755)
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        shutil.rmtree(scratch, ignore_errors=True)
    return target
