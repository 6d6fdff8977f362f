"""`smolpack create` and `smolpack run` with a registry image, under QEMU (real VMs).

The image is a busybox root tree pushed to the session's plain registry; the
pack must run with the image config's Env and WorkingDir. Then the registry is
stopped and a digest-pinned Smolfile is built again (a changed init step) from
the blob cache with `--offline`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from image_helpers import LAYER_GZIP, gz, tar_dir, write_oci
from registry_helpers import Registry, base_env, smolpack_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_helpers import make_busybox_rootfs  # noqa: E402

pytestmark = pytest.mark.vm

SCRIPT = 'echo "$GREETING from $(pwd)"; cat /root/marker'


def smolfile(d: Path, image: str, marker: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "Smolfile").write_text(
        f'image = "{image}"\n'
        'entrypoint = ["/bin/sh", "-c"]\n'
        f"cmd = ['{SCRIPT}']\n"
        "memory = 256\n"
        f'init = ["echo {marker} > /root/marker"]\n'
    )
    return d


def test_create_and_run_from_a_registry_then_rebuild_offline(tmp_path: Path) -> None:
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    layer = gz(tar_dir(rootfs))
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": ["PATH=/bin", "GREETING=hello-from-config"],
                         "WorkingDir": "/tmp"}}  # fmt: skip
    write_oci(tmp_path / "oci", [(layer, LAYER_GZIP)], config)
    reg = Registry(tmp_path / "reg").start()
    env = base_env(tmp_path)
    try:
        ref = reg.push_layout(tmp_path / "oci", "smol/busybox:1")
        pack = tmp_path / "tool.smolmachine"
        res = smolpack_cli("create", "-o", str(pack), str(smolfile(tmp_path / "a", ref, "one")),
                           env=env)  # fmt: skip
        assert res.returncode == 0, res.stderr
        # the tag is pinned to the digest it names now, once, before anything is built
        pulling = next(line for line in res.stderr.splitlines() if "Pulling" in line)
        assert pulling.startswith(f"==> Pulling image {ref}@sha256:")
        assert pulling.endswith(" (linux/amd64)")
        digest = pulling.split("@")[1].split()[0]
        assert "    layer 1/1 " in res.stderr
        run = smolpack_cli("run", str(pack), env=env)
        assert (run.returncode, run.stdout) == (0, "hello-from-config from /tmp\none\n"), run.stderr
    finally:
        reg.stop()
    pinned = f"{ref}@{digest}"
    rebuilt = smolpack_cli("run", "--offline", str(smolfile(tmp_path / "b", pinned, "two")),
                           env=env)  # fmt: skip
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout == "hello-from-config from /tmp\ntwo\n"
    assert "pulled" not in rebuilt.stderr and "cached" in rebuilt.stderr
