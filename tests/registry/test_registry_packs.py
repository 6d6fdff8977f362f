"""`smolpack push PACK REF` / `smolpack pull REF -o PATH` through a real registry.

Covers formats/registry.md "Packs as OCI artifacts": the artifact layout (media
types, title), identical bytes back, executable bit for packed executables,
digest checks, and the one-line errors.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from image_helpers import LAYER_GZIP, E, gz, make_tar, write_oci
from payload_helpers import VECTORS
from registry_helpers import PASSWORD, USER, Registry, base_env, smolpack_cli

SAMPLE = VECTORS / "valid" / "sample.smolmachine"
TRUE = Path(shutil.which("true") or "/bin/true")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def packed_elf(tmp: Path) -> Path:
    """/bin/true with the sample payload as its 16 KiB-aligned `.smolmachine` section."""
    if shutil.which("objcopy") is None:
        pytest.skip("needs binutils (objcopy)")
    out, pad = tmp / "packed-tool", tmp / "pad"
    pad.write_bytes(b"\0")
    subprocess.run(["objcopy", "--add-section", f".smolpad={pad}", str(TRUE), str(out)],
                   check=True)  # fmt: skip
    listing = subprocess.run(["readelf", "-S", "-W", str(out)], capture_output=True, text=True)
    at = next(int(line.replace("[ ", "[").split()[4], 16)
              for line in listing.stdout.splitlines() if ".smolpad" in line)  # fmt: skip
    pad.write_bytes(bytes(-at % 16384 or 16384))
    # (the same recipe as tests/test_payload_locate.py: objcopy's argument order matters)
    subprocess.run(["objcopy", "--add-section", f".smolmachine={SAMPLE}", "--add-section",
                    f".smolpad={pad}", str(TRUE), str(out)], check=True)  # fmt: skip
    return out


def manifest(registry: Registry, repo: str, tag: str) -> dict[str, object]:
    req = urllib.request.Request(
        f"http://{registry.host}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(req) as resp:
        doc: dict[str, object] = json.loads(resp.read())
    return doc


def test_smolmachine_round_trip_is_identical(plain_registry: Registry, tmp_path: Path) -> None:
    env = base_env(tmp_path)
    ref = f"{plain_registry.host}/smol/pack:1"
    pushed = smolpack_cli("push", "-q", str(SAMPLE), ref, env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.startswith(f"{ref}@sha256:")
    doc = manifest(plain_registry, "smol/pack", "1")
    assert doc["artifactType"] == "application/vnd.smolpack.pack.v1"
    assert doc["config"]["mediaType"] == "application/vnd.smolpack.pack.config.v1+json"  # type: ignore[index]
    (layer,) = doc["layers"]  # type: ignore[misc]
    assert layer == {
        "mediaType": "application/vnd.smolpack.smolmachine.v1",
        "digest": f"sha256:{sha(SAMPLE)}",
        "size": SAMPLE.stat().st_size,
        "annotations": {"org.opencontainers.image.title": "sample.smolmachine"},
    }
    out = tmp_path / "got.smolmachine"
    pulled = smolpack_cli("pull", "-q", pushed.stdout.strip(), "-o", str(out), env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert sha(out) == sha(SAMPLE)
    assert out.stat().st_mode & 0o111 == 0
    assert smolpack_cli("verify", str(out), env=env).returncode == 0
    again = smolpack_cli("push", str(SAMPLE), ref, env=env)  # blobs already there: skipped
    assert again.returncode == 0 and again.stdout == pushed.stdout
    assert again.stderr.count("cached") == 2


def test_packed_executable_comes_back_executable(plain_registry: Registry, tmp_path: Path) -> None:
    env = base_env(tmp_path)
    tool = packed_elf(tmp_path)
    ref = f"{plain_registry.host}/smol/tool:latest"
    assert smolpack_cli("push", str(tool), ref, env=env).returncode == 0
    (tmp_path / "dl").mkdir()
    pulled = smolpack_cli("pull", ref, "-o", str(tmp_path / "dl"), env=env)
    assert pulled.returncode == 0, pulled.stderr
    got = tmp_path / "dl" / "packed-tool"
    assert pulled.stdout.startswith(f"{got} ({ref}@sha256:")
    assert sha(got) == sha(tool)
    assert os.access(got, os.X_OK)
    assert subprocess.run([str(got)]).returncode == 0  # still the program it was
    layer = manifest(plain_registry, "smol/tool", "latest")["layers"][0]  # type: ignore[index]
    assert layer["mediaType"] == "application/vnd.smolpack.executable.v1"


def test_push_refuses_a_file_that_is_not_a_pack(plain_registry: Registry, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"just some bytes, not a pack at all\n" * 4)
    res = smolpack_cli("push", str(junk), f"{plain_registry.host}/smol/junk:1",
                       env=base_env(tmp_path))  # fmt: skip
    assert (res.returncode, res.stderr) == (
        111,
        f"Error: {junk}: not a .smolmachine payload or packed executable\n",
    )


def test_pull_of_an_image_is_refused(plain_registry: Registry, tmp_path: Path) -> None:
    write_oci(tmp_path / "oci", [(gz(make_tar([E("f", data=b"x")])), LAYER_GZIP)],
              {"architecture": "amd64", "os": "linux"})  # fmt: skip
    image = plain_registry.push_layout(tmp_path / "oci", "smol/an-image:1")
    res = smolpack_cli("pull", image, "-o", str(tmp_path / "x"), env=base_env(tmp_path))
    assert (res.returncode, res.stderr) == (
        6,
        f"Error: {image} is not a smolpack pack (an image? use it as a Smolfile image)\n",
    )
    assert not (tmp_path / "x").exists()


def test_tampered_pack_blob_is_exit_11_and_no_file(
    plain_registry: Registry, tmp_path: Path
) -> None:
    env = base_env(tmp_path)
    pack = tmp_path / "copy.smolmachine"
    shutil.copy(SAMPLE, pack)
    ref = f"{plain_registry.host}/smol/tampered-pack:1"
    assert smolpack_cli("push", "-q", str(pack), ref, env=env).returncode == 0
    blob = plain_registry.blob_file(f"sha256:{sha(pack)}")
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    out = tmp_path / "out.smolmachine"
    res = smolpack_cli("pull", "-q", ref, "-o", str(out), env=env)
    assert res.returncode == 11
    assert res.stderr.startswith(f"Error: {ref}: pack blob sha256:{sha(pack)} does not match")
    assert len(res.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert not out.exists()


def test_push_and_pull_with_basic_auth(auth_registry: Registry, tmp_path: Path) -> None:
    env = base_env(tmp_path)
    ref = f"{auth_registry.host}/team/pack:1"
    denied = smolpack_cli("push", str(SAMPLE), ref, env=env)
    assert denied.returncode == 8 and "requires credentials" in denied.stderr
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (Path(env["DOCKER_CONFIG"]) / "config.json").write_text(
        json.dumps({"auths": {auth_registry.host: {"auth": token}}})
    )
    assert smolpack_cli("push", "-q", str(SAMPLE), ref, env=env).returncode == 0
    out = tmp_path / "p.smolmachine"
    assert smolpack_cli("pull", "-q", ref, "-o", str(out), env=env).returncode == 0
    assert sha(out) == sha(SAMPLE)
