"""Pulling images from a real registry: `smolpack image unpack REF DEST` end to end.

Covers formats/registry.md "Pulling an image", "Errors" and "Cache": layers with
whiteouts (gzip and zstd), config defaults, image indexes per architecture,
Docker schema 2, each error's one line and exit code, digest checks, the layer
cache and --offline, progress lines.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import Images
from image_helpers import LAYER_GZIP, E, gz, make_tar, sha, write_oci
from registry_helpers import Registry, base_env, free_port, smolpack_cli


def unpack(
    env: dict[str, str], ref: str, dest: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return smolpack_cli("image", "unpack", ref, str(dest), *extra, env=env)


def test_layers_whiteouts_and_config_defaults(images: Images, tmp_path: Path) -> None:
    env = base_env(tmp_path)
    res = unpack(env, images.base, tmp_path / "root")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {
        "env": {"PATH": "/bin", "GREETING": "hi"},
        "workdir": "/opt/d",
        "entrypoint": [],
        "cmd": ["sh"],
    }
    root = tmp_path / "root"
    assert (root / "etc/os-release").read_bytes() == b"ID=smoltest\n"
    assert not (root / "etc/gone").exists()  # .wh.gone in the zstd layer
    assert sorted(p.name for p in (root / "opt/d").iterdir()) == ["c"]  # opaque dir
    assert (
        res.stderr.splitlines()[-1]
        == f"unpacked registry image {images.base}@" + (res.stderr.splitlines()[-1].split("@")[1])
    )


def test_index_resolves_to_the_requested_architecture(images: Images, tmp_path: Path) -> None:
    env = base_env(tmp_path)
    for arch, want in (("x86_64", b"amd64\n"), ("aarch64", b"arm64\n")):
        dest = tmp_path / arch
        res = unpack(env, images.multi, dest, "--arch", arch, "-q")
        assert res.returncode == 0, res.stderr
        assert (dest / "arch").read_bytes() == want


def test_no_image_for_the_platform_is_exit_9(images: Images, tmp_path: Path) -> None:
    res = unpack(base_env(tmp_path), images.arm_only, tmp_path / "root")
    assert (res.returncode, res.stderr) == (
        9,
        f"Error: {images.arm_only}: no linux/amd64 image in the index (found: linux/arm64)\n",
    )
    assert not (tmp_path / "root").exists()


def test_docker_schema2_manifest(images: Images, tmp_path: Path) -> None:
    res = unpack(base_env(tmp_path), images.docker_v2, tmp_path / "root")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["env"] == {"FROM": "v2s2"}
    assert (tmp_path / "root/etc/gone").exists()


def test_not_found_is_exit_7(plain_registry: Registry, images: Images, tmp_path: Path) -> None:
    env = base_env(tmp_path)
    ref = f"{plain_registry.host}/smol/base:nope"
    res = unpack(env, ref, tmp_path / "a")
    assert (res.returncode, res.stderr) == (
        7,
        f"Error: {ref}: not found (MANIFEST_UNKNOWN: manifest unknown)\n",
    )
    ref = f"{plain_registry.host}/smol/absent:1"
    res = unpack(env, ref, tmp_path / "b")
    assert (res.returncode, res.stderr) == (
        7,
        f"Error: {ref}: not found (MANIFEST_UNKNOWN: manifest unknown)\n",
    )


def test_unreachable_registry_is_exit_10(tmp_path: Path) -> None:
    port = free_port()
    res = unpack(base_env(tmp_path), f"127.0.0.1:{port}/x/y:1", tmp_path / "root")
    assert (res.returncode, res.stderr) == (
        10,
        f"Error: registry 127.0.0.1:{port} is unreachable (Connection refused)\n",
    )


def test_tampered_layer_is_digest_mismatch_exit_11_and_nothing_cached(
    plain_registry: Registry, tmp_path: Path
) -> None:
    layer = gz(make_tar([E("f", data=b"original bytes\n")]))
    write_oci(tmp_path / "oci", [(layer, LAYER_GZIP)], {"architecture": "amd64", "os": "linux"})
    ref = plain_registry.push_layout(tmp_path / "oci", "smol/tampered:1")
    stored = plain_registry.blob_file(sha(layer))
    stored.write_bytes(gz(make_tar([E("f", data=b"evil bytes!!!!\n")])))
    env = base_env(tmp_path)
    res = unpack(env, ref, tmp_path / "root", "-q")
    assert res.returncode == 11, res.stderr
    read = sha(stored.read_bytes())
    assert res.stderr == (
        f"Error: {ref}: blob {sha(layer)} does not match its digest (read {read})\n"
    )
    assert not (tmp_path / "root").exists()
    cached = {p.name for p in (tmp_path / "cache/blobs").iterdir()}
    assert sha(layer)[7:] not in cached and not any(n.startswith(".") for n in cached)


def test_offline_rebuild_from_cache_with_the_registry_gone(images: Images, tmp_path: Path) -> None:
    # A registry of its own, so stopping it leaves the session's alone.
    reg = Registry(tmp_path / "reg").start()
    layer = gz(make_tar([E("hello", data=b"from the cache\n")]))
    write_oci(tmp_path / "oci", [(layer, LAYER_GZIP)], {"architecture": "amd64", "os": "linux"})
    ref = reg.push_layout(tmp_path / "oci", "smol/gone:1")
    env = base_env(tmp_path)
    try:
        first = unpack(env, ref, tmp_path / "one")
        assert first.returncode == 0, first.stderr
        pinned = first.stderr.splitlines()[-1].split()[3]  # host/repo:tag@sha256:...
        assert "@sha256:" in pinned
        never = unpack(env, f"{reg.host}/smol/never:1", tmp_path / "x", "--offline")
    finally:
        reg.stop()
    assert (never.returncode, never.stderr) == (
        10,
        f"Error: {reg.host}/smol/never:1: not in the cache, and --offline forbids the network\n",
    )
    for name, args in (("pinned", (pinned,)), ("tag-offline", (ref, "--offline"))):
        res = unpack(env, args[0], tmp_path / name, *args[1:])
        assert res.returncode == 0, res.stderr
        assert (tmp_path / name / "hello").read_bytes() == b"from the cache\n"
        assert "pulled" not in res.stderr  # every blob came from the cache
    gone = unpack(env, ref, tmp_path / "online")  # a tag without --offline asks the registry
    assert gone.returncode == 10 and "unreachable" in gone.stderr


def test_progress_one_line_per_blob_when_not_a_tty(images: Images, tmp_path: Path) -> None:
    env = base_env(tmp_path)
    first = unpack(env, images.base, tmp_path / "a").stderr.splitlines()
    assert [line.split()[0:2] for line in first[:3]] == [
        ["config"],
        ["layer", "1/2"],
        ["layer", "2/2"],
    ] or [line.split()[0] for line in first[:3]] == ["config", "layer", "layer"]
    assert all(line.endswith(" s") and " pulled in " in line for line in first[:3])
    again = unpack(env, images.base, tmp_path / "b").stderr.splitlines()
    assert [line.split()[-1] for line in again[:3]] == ["cached"] * 3


def test_progress_on_a_tty_shows_bytes_against_the_total(
    plain_registry: Registry, tmp_path: Path
) -> None:
    big = os.urandom(3 << 20)  # incompressible: a 3 MiB blob arrives in several reads
    write_oci(tmp_path / "oci", [(gz(make_tar([E("big", data=big)])), LAYER_GZIP)],
              {"architecture": "amd64", "os": "linux"})  # fmt: skip
    ref = plain_registry.push_layout(tmp_path / "oci", "smol/big:1")
    env = base_env(tmp_path)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "smolpack", "image", "unpack", ref, str(tmp_path / "root")],
        stdout=subprocess.DEVNULL, stderr=slave, env=env,
    )  # fmt: skip
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait() == 0
    os.close(master)
    text = out.decode()
    assert "\r\x1b[2K    layer 1/1" in text
    assert " / 3.0 MiB" in text  # bytes against the descriptor's total


def test_interrupted_pull_leaves_no_temp_blob_and_no_tree(
    plain_registry: Registry, tmp_path: Path
) -> None:
    big = os.urandom(48 << 20)
    write_oci(tmp_path / "oci", [(gz(make_tar([E("big", data=big)])), LAYER_GZIP)],
              {"architecture": "amd64", "os": "linux"})  # fmt: skip
    ref = plain_registry.push_layout(tmp_path / "oci", "smol/interrupted:1")
    env = base_env(tmp_path)
    blobs = tmp_path / "cache" / "blobs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "smolpack", "image", "unpack", "-q", ref, str(tmp_path / "root")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (blobs.is_dir() and any(p.name.endswith(".tmp") for p in blobs.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, "no download seen"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # mid-download: unwound like Ctrl-C
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err.strip()) == (143, b"Aborted.")  # click adds a newline first
    assert [p.name for p in blobs.iterdir() if p.name.startswith(".")] == []
    assert not (tmp_path / "root").exists()
