"""OCI image layouts and docker-archives → merged tree, defaults, whiteouts, refusals."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from image_helpers import (
    LAYER_GZIP,
    LAYER_TAR,
    LAYER_ZSTD,
    MTIME,
    OCI_MANIFEST,
    E,
    OciWriter,
    config_doc,
    docker_classic,
    gz,
    make_tar,
    sha,
    tar_dir,
    write_oci,
    zst,
)

from smolpack.errors import ImageError
from smolpack.image import ImageDefaults, ImageKind, detect_kind, prepare_rootfs

BASE = make_tar(
    [
        E("etc", kind="dir", mode=0o755),
        E("etc/os-release", data=b"ID=test\n"),
        E("etc/keep", data=b"keep"),
        E("bin", kind="dir", mode=0o755),
        E("bin/sh", data=b"sh", mode=0o755),
        E("bin/old", data=b"old", mode=0o755),
        E("opt/app/a", data=b"a"),
        E("opt/app/sub/b", data=b"b"),
        E("var/cache/junk", data=b"junk"),
    ]
)
# Layer 2: delete bin/old, make opt/app opaque (adding c in the same layer), drop var/cache.
MIDDLE = make_tar(
    [
        E("bin/.wh.old", data=b""),
        E("opt/app/c", data=b"c"),  # before the opaque marker: same layer, must survive
        E("opt/app/.wh..wh..opq", data=b""),
        E("var/.wh.cache", data=b""),
        E("bin/new", data=b"new", mode=0o4711, uid=0, gid=50),
    ]
)
# Layer 3: recreate var/cache empty-ish, whiteout a path that only this layer adds back later.
TOP = make_tar(
    [
        E("var/cache", kind="dir", mode=0o700),
        E("var/cache/fresh", data=b"fresh"),
        E("etc/.wh.os-release", data=b""),
        E("etc/os-release", data=b"ID=top\n"),  # same layer as the whiteout: stays
    ]
)

CONFIG = config_doc(
    Env=["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
    WorkingDir="/srv",
    Entrypoint=["/bin/sh", "-c"],
    Cmd=["echo hi"],
)
DEFAULTS = ImageDefaults(
    env=(("PATH", "/usr/bin:/bin"), ("LANG", "C.UTF-8")),
    workdir="/srv",
    entrypoint=("/bin/sh", "-c"),
    cmd=("echo hi",),
)


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def check_merged(out: Path) -> None:
    assert listing(out) == {
        "etc",
        "etc/os-release",
        "etc/keep",
        "bin",
        "bin/sh",
        "bin/new",
        "opt",
        "opt/app",
        "opt/app/c",
        "var",
        "var/cache",
        "var/cache/fresh",
    }
    assert (out / "etc/os-release").read_bytes() == b"ID=top\n"
    new = (out / "bin/new").lstat()
    assert stat.S_IMODE(new.st_mode) == 0o4711 and new.st_gid == 50
    assert stat.S_IMODE((out / "var/cache").lstat().st_mode) == 0o700
    assert (out / "bin/sh").lstat().st_mtime_ns == MTIME * 1_000_000_000


def three_layers() -> list[tuple[bytes, str]]:
    return [(gz(BASE), LAYER_GZIP), (zst(MIDDLE), LAYER_ZSTD), (TOP, LAYER_TAR)]


def test_oci_layout_applies_layers_with_whiteouts(tmp_path: Path) -> None:
    write_oci(tmp_path / "oci", three_layers(), CONFIG)
    assert detect_kind(tmp_path / "oci") is ImageKind.OCI_LAYOUT
    assert prepare_rootfs(tmp_path / "oci", tmp_path / "out") == DEFAULTS
    check_merged(tmp_path / "out")


def test_oci_index_picks_the_requested_platform(tmp_path: Path) -> None:
    w = OciWriter(tmp_path / "oci")
    arm = w.manifest([(make_tar([E("arch", data=b"arm64")]), LAYER_TAR)], config_doc("arm64"))
    amd = w.manifest([(make_tar([E("arch", data=b"amd64")]), LAYER_TAR)], config_doc("amd64"))
    arm["platform"] = {"os": "linux", "architecture": "arm64", "variant": "v8"}
    amd["platform"] = {"os": "linux", "architecture": "amd64"}
    nested = w.json_blob(
        {"schemaVersion": 2, "manifests": [arm, amd]}, "application/vnd.oci.image.index.v1+json"
    )
    w.index([nested])
    prepare_rootfs(tmp_path / "oci", tmp_path / "x86", arch="x86_64")
    prepare_rootfs(tmp_path / "oci", tmp_path / "arm", arch="aarch64")
    assert (tmp_path / "x86/arch").read_bytes() == b"amd64"
    assert (tmp_path / "arm/arch").read_bytes() == b"arm64"


def test_oci_index_without_the_platform_is_refused(tmp_path: Path) -> None:
    w = OciWriter(tmp_path / "oci")
    arm = w.manifest([(make_tar([E("f")]), LAYER_TAR)], config_doc("arm64"))
    arm["platform"] = {"os": "linux", "architecture": "arm64"}
    w.index([arm])
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(tmp_path / "oci", tmp_path / "out")
    assert (
        str(exc.value)
        == f"{tmp_path / 'oci'}: no linux/amd64 image in the index (found: linux/arm64)"
    )


def test_oci_blob_digest_mismatch_names_the_blob(tmp_path: Path) -> None:
    oci = tmp_path / "oci"
    manifest = write_oci(oci, [(gz(BASE), LAYER_GZIP), (TOP, LAYER_TAR)], CONFIG)
    doc = json.loads((oci / "blobs" / manifest["digest"].replace(":", "/")).read_bytes())
    top = doc["layers"][1]["digest"]
    path = oci / "blobs" / top.replace(":", "/")
    tampered = TOP.replace(b"ID=top", b"ID=bad")
    path.write_bytes(tampered)
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(oci, tmp_path / "out")
    assert str(exc.value) == f"{oci}: blob {top} does not match its digest (read {sha(tampered)})"
    assert not (tmp_path / "out").exists()


def test_oci_corrupted_compressed_blob_reports_the_digest(tmp_path: Path) -> None:
    oci = tmp_path / "oci"
    manifest = write_oci(oci, [(gz(BASE), LAYER_GZIP)], CONFIG)
    doc = json.loads((oci / "blobs" / manifest["digest"].replace(":", "/")).read_bytes())
    layer = doc["layers"][0]["digest"]
    path = oci / "blobs" / layer.replace(":", "/")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(oci, tmp_path / "out")
    assert str(exc.value) == (
        f"{oci}: blob {layer} does not match its digest (read {sha(data[: len(data) // 2])})"
    )


def test_oci_unsupported_media_type_is_refused(tmp_path: Path) -> None:
    oci = tmp_path / "oci"
    data = gz(BASE)
    write_oci(oci, [(data, "application/vnd.example.layer.v1.squashfs")], CONFIG)
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(oci, tmp_path / "out")
    assert str(exc.value) == (
        f"{oci}: layer {sha(data)} has unsupported media type "
        "'application/vnd.example.layer.v1.squashfs'"
    )


def test_oci_missing_index_is_refused(tmp_path: Path) -> None:
    oci = tmp_path / "oci"
    write_oci(oci, [(BASE, LAYER_TAR)], CONFIG)
    (oci / "index.json").unlink()
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(oci, tmp_path / "out")
    assert str(exc.value) == f"{oci}: OCI layout has no index.json"


def test_oci_missing_manifest_blob_is_refused(tmp_path: Path) -> None:
    oci = tmp_path / "oci"
    manifest = write_oci(oci, [(BASE, LAYER_TAR)], CONFIG)
    (oci / "blobs" / manifest["digest"].replace(":", "/")).unlink()
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(oci, tmp_path / "out")
    digest = manifest["digest"]
    assert str(exc.value) == (
        f"{oci}: manifest {digest} is missing (blobs/sha256/{digest.split(':')[1]})"
    )


def test_layer_with_traversal_member_names_layer_and_member(tmp_path: Path) -> None:
    oci = tmp_path / "oci"
    evil = make_tar([E("../../escape", data=b"x")])
    write_oci(oci, [(evil, LAYER_TAR)], CONFIG)
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(oci, tmp_path / "out")
    assert str(exc.value) == (
        f"{oci}: layer {sha(evil)}: member '../../escape': path escapes the root ('..' component)"
    )


def test_docker_classic_archive(tmp_path: Path) -> None:
    archive = tmp_path / "img.tar"
    archive.write_bytes(docker_classic([BASE, MIDDLE, TOP], CONFIG))
    assert detect_kind(archive) is ImageKind.DOCKER_ARCHIVE
    assert prepare_rootfs(archive, tmp_path / "out") == DEFAULTS
    check_merged(tmp_path / "out")


def test_docker_archive_gzipped(tmp_path: Path) -> None:
    archive = tmp_path / "img.tar.gz"
    archive.write_bytes(gz(docker_classic([BASE, MIDDLE, TOP], CONFIG)))
    assert detect_kind(archive) is ImageKind.DOCKER_ARCHIVE
    assert prepare_rootfs(archive, tmp_path / "out") == DEFAULTS
    check_merged(tmp_path / "out")


def test_docker_archive_layer_not_matching_diff_id_is_refused(tmp_path: Path) -> None:
    good = docker_classic([BASE, TOP], CONFIG)
    tampered = good.replace(b"ID=top", b"ID=bad")
    archive = tmp_path / "img.tar"
    archive.write_bytes(tampered)
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(archive, tmp_path / "out")
    msg = str(exc.value)
    assert msg.startswith(f"{archive}: layer ")
    assert (
        f"does not match its diff_id {sha(TOP)} (read {sha(TOP.replace(b'ID=top', b'ID=bad'))})"
        in msg
    )


def test_docker_save_with_embedded_oci_layout(tmp_path: Path) -> None:
    """Docker >= 25 writes an OCI layout plus manifest.json pointing into blobs/."""
    root = tmp_path / "save"
    w = OciWriter(root)
    layers = [(BASE, LAYER_TAR), (MIDDLE, LAYER_TAR), (TOP, LAYER_TAR)]
    config = dict(CONFIG, rootfs={"type": "layers", "diff_ids": [sha(x) for x, _ in layers]})
    w.index([w.manifest(layers, config)])
    manifest = [
        {
            "Config": "blobs/sha256/" + sha(json.dumps(config).encode()).split(":")[1],
            "Layers": ["blobs/sha256/" + sha(x).split(":")[1] for x, _ in layers],
        }
    ]
    (root / "manifest.json").write_text(json.dumps(manifest))
    archive = tmp_path / "save.tar"
    archive.write_bytes(tar_dir(root))
    assert detect_kind(archive) is ImageKind.DOCKER_ARCHIVE
    assert prepare_rootfs(archive, tmp_path / "out") == DEFAULTS
    check_merged(tmp_path / "out")


def test_oci_archive_tar(tmp_path: Path) -> None:
    root = tmp_path / "layout"
    write_oci(root, three_layers(), CONFIG)
    archive = tmp_path / "oci.tar"
    archive.write_bytes(tar_dir(root))
    assert detect_kind(archive) is ImageKind.OCI_ARCHIVE
    assert prepare_rootfs(archive, tmp_path / "out") == DEFAULTS
    check_merged(tmp_path / "out")


def test_config_for_another_architecture_is_refused(tmp_path: Path) -> None:
    oci = tmp_path / "oci"
    write_oci(oci, [(BASE, LAYER_TAR)], config_doc("arm64"))
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(oci, tmp_path / "out")
    assert str(exc.value) == f"{oci}: image is for linux/arm64, not linux/amd64"


def test_bad_env_entry_is_refused(tmp_path: Path) -> None:
    oci = tmp_path / "oci"
    write_oci(oci, [(BASE, LAYER_TAR)], config_doc(Env=["NOEQUALS"]))
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(oci, tmp_path / "out")
    assert str(exc.value) == f"{oci}: image config: Env entry 'NOEQUALS' is not NAME=VALUE"


def test_whiteout_of_a_whole_directory_and_readd_in_same_layer(tmp_path: Path) -> None:
    lower = make_tar([E("d/old", data=b"o"), E("d/sub/x", data=b"x")])
    upper = make_tar([E("d/new", data=b"n"), E(".wh.d", data=b"")])
    oci = tmp_path / "oci"
    write_oci(oci, [(lower, LAYER_TAR), (upper, LAYER_TAR)], config_doc())
    prepare_rootfs(oci, tmp_path / "out")
    assert listing(tmp_path / "out") == {"d", "d/new"}


def test_symlink_in_lower_layer_blocks_writes_through_it(tmp_path: Path) -> None:
    lower = make_tar([E("lib", kind="sym", target=str(tmp_path / "host"))])
    upper = make_tar([E("lib/evil.so", data=b"x")])
    (tmp_path / "host").mkdir()
    oci = tmp_path / "oci"
    write_oci(oci, [(lower, LAYER_TAR), (upper, LAYER_TAR)], config_doc())
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(oci, tmp_path / "out")
    assert str(exc.value) == (
        f"{oci}: layer {sha(upper)}: member 'lib/evil.so': parent 'lib' is a symlink"
    )
    assert os.listdir(tmp_path / "host") == []


def test_manifest_media_type_is_checked(tmp_path: Path) -> None:
    w = OciWriter(tmp_path / "oci")
    desc = w.manifest([(BASE, LAYER_TAR)], CONFIG)
    desc["mediaType"] = "application/vnd.example.weird+json"
    w.index([desc])
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(tmp_path / "oci", tmp_path / "out")
    assert str(exc.value) == (
        f"{tmp_path / 'oci'}: manifest {desc['digest']} has unsupported media type"
        " 'application/vnd.example.weird+json'"
    )
    assert OCI_MANIFEST != desc["mediaType"]


@pytest.mark.parametrize("name", ["d/.wh...", "d/.wh..", "d/.wh."])
def test_whiteout_of_dot_or_dotdot_is_refused(tmp_path: Path, name: str) -> None:
    lower = make_tar([E("keep", data=b"k"), E("d/x", data=b"x")])
    upper = make_tar([E(name, data=b"")])
    oci = tmp_path / "oci"
    write_oci(oci, [(lower, LAYER_TAR), (upper, LAYER_TAR)], config_doc())
    with pytest.raises(ImageError) as exc:
        prepare_rootfs(oci, tmp_path / "out")
    assert str(exc.value) == f"{oci}: layer {sha(upper)}: member '{name}': whiteout names no entry"


def test_docker_archive_with_symlinked_duplicate_layer(tmp_path: Path) -> None:
    """Classic `docker save` stores a repeated layer once and symlinks the other copy."""
    layer = make_tar([E("same", data=b"s")])
    config = dict(config_doc(), rootfs={"type": "layers", "diff_ids": [sha(layer)] * 2})
    cbytes = json.dumps(config).encode()
    cname = sha(cbytes).split(":")[1] + ".json"
    manifest = [{"Config": cname, "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]
    archive = tmp_path / "dup.tar"
    archive.write_bytes(
        make_tar(
            [
                E(cname, data=cbytes),
                E("aaa/layer.tar", data=layer),
                E("bbb/layer.tar", kind="sym", target="../aaa/layer.tar"),
                E("manifest.json", data=json.dumps(manifest).encode()),
            ]
        )
    )
    prepare_rootfs(archive, tmp_path / "out")
    assert (tmp_path / "out/same").read_bytes() == b"s"
