"""`smolpack image unpack|disk` through the real entry point: exit codes and stderr lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from image_helpers import LAYER_GZIP, E, config_doc, gz, make_tar, write_oci


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smolpack", *args], capture_output=True, text=True, check=False
    )


def test_unpack_prints_defaults(tmp_path: Path) -> None:
    oci = tmp_path / "oci"
    layer = gz(make_tar([E("etc/hostname", data=b"vm\n")]))
    write_oci(oci, [(layer, LAYER_GZIP)], config_doc(Env=["A=1"], Cmd=["sh"], WorkingDir="/w"))
    res = run_cli("image", "unpack", str(oci), str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {
        "env": {"A": "1"},
        "workdir": "/w",
        "entrypoint": [],
        "cmd": ["sh"],
    }
    assert res.stderr == f"unpacked OCI image layout {oci} into {tmp_path / 'out'}\n"
    assert (tmp_path / "out/etc/hostname").read_bytes() == b"vm\n"


def test_unpack_traversal_is_one_error_line_exit_6(tmp_path: Path) -> None:
    src = tmp_path / "evil.tar"
    src.write_bytes(make_tar([E("../../etc/passwd", data=b"x")]))
    res = run_cli("image", "unpack", str(src), str(tmp_path / "out"))
    assert res.returncode == 6
    assert res.stderr == (
        f"Error: {src}: member '../../etc/passwd': path escapes the root ('..' component)\n"
    )
    assert not (tmp_path / "out").exists()


def test_unpack_missing_image(tmp_path: Path) -> None:
    res = run_cli("image", "unpack", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert (res.returncode, res.stderr) == (6, f"Error: image not found: {tmp_path / 'nope'}\n")


def test_disk_builds_image_and_removes_staging(tmp_path: Path) -> None:
    src = tmp_path / "r.tar"
    src.write_bytes(make_tar([E("hello", data=b"hi\n")]))
    agent = tmp_path / "agent"
    agent.write_bytes(b"A")
    out = tmp_path / "base.img"
    (tmp_path / "t").mkdir()
    args = ["image", "disk", str(src), str(out), "--headroom-mib", "8"]
    args += ["--add", f"/smolpack/agent={agent}:755"]
    env = {"TMPDIR": str(tmp_path / "t"), "PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        [sys.executable, "-m", "smolpack", *args], capture_output=True, text=True, env=env
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr == f"wrote {out} ({out.stat().st_size >> 20} MiB)\n"
    cat = subprocess.run(["debugfs", "-R", "cat /smolpack/agent", str(out)], capture_output=True)
    assert cat.stdout == b"A"
    assert list((tmp_path / "t").iterdir()) == []


def test_disk_bad_add_spec_is_usage_error(tmp_path: Path) -> None:
    res = run_cli("image", "disk", str(tmp_path), str(tmp_path / "x.img"), "--add", "agent")
    assert (res.returncode, res.stderr) == (
        2,
        "Error: --add 'agent': expected /GUEST/PATH=HOST_FILE[:MODE]\n",
    )


def test_image_help_has_an_example() -> None:
    res = run_cli("image", "disk", "--help")
    assert res.returncode == 0
    assert "smolpack image disk ./rootfs.tar.zst base.img" in res.stdout


def test_unpack_skips_device_nodes_with_one_warning_line(tmp_path: Path) -> None:
    src = tmp_path / "export.tar"  # what `docker export` writes: /dev nodes included
    nodes = [E(f"dev/{n}", kind="chr") for n in ("null", "zero", "console")]
    src.write_bytes(make_tar([E("dev", kind="dir"), *nodes, E("bin/sh", data=b"#!")]))
    res = run_cli("image", "unpack", str(src), str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert res.stderr == (
        f"warning: {src}: skipped 3 device nodes, FIFOs and sockets"
        " (the guest mounts its own /dev)\n"
        f"unpacked rootfs tarball {src} into {tmp_path / 'out'}\n"
    )
