"""Real packs on unusual paths and files: `,` in every path QEMU sees, a pack QEMU must read
through the fd the launcher verified."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import make_busybox_rootfs, smolpack

pytestmark = pytest.mark.vm


def test_create_and_run_where_every_path_holds_a_comma(
    tmp_path: Path, e2e_env: dict[str, str]
) -> None:
    # Was: `-chardev file,...,path=.../a,b=c/...: Invalid parameter 'b'`.
    root = tmp_path / "a,b=c"
    make_busybox_rootfs(root / "rootfs")
    (root / "Smolfile").write_text(
        'image = "./rootfs"\nentrypoint = ["/bin/sh", "-c"]\nmemory = 256\n'
    )
    tmp = tmp_path / "tmp,x=y"  # run dirs (overlay, console) land here
    tmp.mkdir()
    env = {**e2e_env, "TMPDIR": str(tmp)}
    env.pop("XDG_RUNTIME_DIR", None)
    out = root / "out,z.smolmachine"
    res = smolpack("create", "-q", "-o", str(out), str(root), env=env)
    assert res.returncode == 0, res.stderr.decode()
    res = smolpack("run", str(out), "--", "echo ran; exit 7", env=env)
    assert (res.returncode, res.stdout, res.stderr) == (7, b"ran\n", b"")
    assert sorted(os.listdir(root)) == ["Smolfile", "out,z.smolmachine", "rootfs"]
    assert os.listdir(tmp) == []


def test_a_pack_deleted_after_it_was_opened_runs_from_the_verified_fd(
    tmp_path: Path, test_pack: Path, e2e_env: dict[str, str]
) -> None:
    # QEMU used to reopen the pack by path after verification; here the path is gone (a
    # path swapped after the check is the same hazard). It must read the open file.
    pack = tmp_path / "doomed.smolmachine"
    shutil.copy(test_pack, pack)
    fd = os.open(pack, os.O_RDONLY)
    try:
        pack.unlink()
        res = subprocess.run(
            [sys.executable, "-m", "smolpack", "run", f"/dev/fd/{fd}", "--", "echo from-fd"],
            capture_output=True,
            env=e2e_env,
            pass_fds=[fd],
            timeout=120,
        )
    finally:
        os.close(fd)
    assert (res.returncode, res.stdout, res.stderr) == (0, b"from-fd\n", b"")


def test_runs_with_no_qemu_img_on_path(
    tmp_path: Path, test_pack: Path, e2e_env: dict[str, str]
) -> None:
    # Debian's qemu-system-x86 only recommends qemu-utils; a run used to die with
    # `internal error: FileNotFoundError` creating its overlay with qemu-img.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu is not None
    (bin_dir / "qemu-system-x86_64").symlink_to(qemu)
    env = {**e2e_env, "PATH": str(bin_dir)}
    res = smolpack("run", str(test_pack), "--", "echo no-qemu-img", env=env)
    assert (res.returncode, res.stdout, res.stderr) == (0, b"no-qemu-img\n", b"")
