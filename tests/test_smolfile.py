"""Loading valid Smolfiles: defaults, [dev] merge, [artifact], paths, images, warnings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smolpack.errors import SmolfileError
from smolpack.smolfile import (
    IGNORED_KEYS,
    ArtifactOverrides,
    PortMapping,
    SmolConfig,
    Volume,
    load_smolfile,
    require_image,
)


def load(tmp_path: Path, text: str) -> SmolConfig:
    path = tmp_path / "Smolfile"
    path.write_text(text)
    return load_smolfile(path)


@pytest.fixture()
def proj(tmp_path: Path) -> Path:
    """A project dir with a rootfs and two host dirs."""
    for name in ("rootfs", "src", "work"):
        (tmp_path / name).mkdir()
    return tmp_path


def test_defaults(proj: Path) -> None:
    cfg = load(proj, 'image = "./rootfs"\n')
    assert (cfg.cpus, cfg.memory_mib, cfg.net) == (1, 512, False)
    assert cfg.entrypoint == cfg.cmd == cfg.init == cfg.env == ()
    assert cfg.workdir is None and cfg.volumes == cfg.ports == ()
    assert cfg.artifact.is_empty and cfg.warnings == ()
    assert cfg.source_path == proj / "Smolfile"


def test_every_top_level_key(proj: Path) -> None:
    cfg = load(
        proj,
        'image = "./rootfs"\nentrypoint = ["/bin/sh", "-c"]\ncmd = ["echo hi", ""]\n'
        'env = ["A=1", " B=x=y ", "A=3"]\nworkdir = "/srv"\ncpus = 64\nmemory = 64\n'
        'net = true\ninit = ["apk add curl"]\nvolumes = ["src:/app:ro", "./work:/w:rw"]\n'
        'ports = ["8080", "2222:22", "5173-5174:6173-6174"]\n',
    )
    assert cfg.entrypoint == ("/bin/sh", "-c") and cfg.cmd == ("echo hi", "")
    # Trimmed like smolvm; a later definition wins but keeps the first position.
    assert cfg.env == (("A", "3"), ("B", "x=y"))
    assert (cfg.workdir, cfg.cpus, cfg.memory_mib, cfg.net) == ("/srv", 64, 64, True)
    assert cfg.init == ("apk add curl",)
    assert cfg.volumes == (
        Volume(host_path=proj / "src", guest_path="/app", read_only=True),
        Volume(host_path=proj / "work", guest_path="/w", read_only=False),
    )
    assert [(p.host_port, p.guest_port) for p in cfg.ports] == [
        (8080, 8080),
        (2222, 22),
        (5173, 6173),
        (5174, 6174),
    ]


def test_dev_lists_replace_top_level_when_non_empty(proj: Path) -> None:
    cfg = load(
        proj,
        'image = "./rootfs"\ninit = ["top"]\nports = ["1:1"]\nvolumes = ["./src:/top"]\n'
        'env = ["A=top", "B=top"]\nworkdir = "/top"\n'
        '[dev]\ninit = ["dev1", "dev2"]\nports = ["2:2"]\nvolumes = ["./work:/dev"]\n'
        'env = ["A=dev"]\nworkdir = "/dev"\n',
    )
    assert cfg.init == ("dev1", "dev2")
    assert cfg.ports == (PortMapping(host_port=2, guest_port=2),)
    assert cfg.volumes == (Volume(host_path=proj / "work", guest_path="/dev", read_only=False),)
    # smolvm appends [dev] env to the top-level env; the later value wins.
    assert cfg.env == (("A", "dev"), ("B", "top"))
    assert cfg.workdir == "/dev"


def test_empty_dev_lists_keep_top_level(proj: Path) -> None:
    cfg = load(
        proj,
        'image = "./rootfs"\ninit = ["top"]\nports = ["1:1"]\nworkdir = "/top"\n'
        "[dev]\ninit = []\nports = []\n",
    )
    assert cfg.init == ("top",) and cfg.ports == (PortMapping(host_port=1, guest_port=1),)
    assert cfg.workdir == "/top"


def test_replaced_top_level_volume_is_not_checked_on_disk(proj: Path) -> None:
    # smolvm only resolves the volumes it uses; ./gone is replaced by [dev].
    cfg = load(proj, 'image = "./rootfs"\nvolumes = ["./gone:/a"]\n[dev]\nvolumes = ["./src:/a"]\n')
    assert cfg.volumes[0].host_path == proj / "src"


def test_replaced_top_level_list_is_still_type_checked(proj: Path) -> None:
    with pytest.raises(SmolfileError, match=r"Smolfile:2: init must be an array of strings"):
        load(proj, 'image = "./rootfs"\ninit = "x"\n[dev]\ninit = ["y"]\n')


def test_artifact_overrides_apply_only_to_packed(proj: Path) -> None:
    cfg = load(
        proj,
        'image = "./rootfs"\ncpus = 2\nmemory = 1024\nentrypoint = ["/app"]\ncmd = ["serve"]\n'
        '[artifact]\ncpus = 4\nmemory = 2048\ncmd = ["run", "--once"]\n',
    )
    assert (cfg.cpus, cfg.memory_mib, cfg.cmd) == (2, 1024, ("serve",))
    assert cfg.artifact == ArtifactOverrides(cpus=4, memory_mib=2048, cmd=("run", "--once"))
    packed = cfg.packed()
    assert (packed.cpus, packed.memory_mib) == (4, 2048)
    # An empty override list keeps the top-level value (smolvm: non-empty overrides).
    assert packed.entrypoint == ("/app",) and packed.cmd == ("run", "--once")
    assert packed.artifact.is_empty and packed.packed() == packed


def test_pack_section_is_an_alias_of_artifact(proj: Path) -> None:
    cfg = load(proj, 'image = "./rootfs"\n[pack]\nentrypoint = ["/x"]\n')
    assert cfg.packed().entrypoint == ("/x",) and cfg.warnings == ()


def test_artifact_wins_over_pack_with_a_warning(proj: Path) -> None:
    cfg = load(proj, 'image = "./rootfs"\n[artifact]\ncpus = 2\n[pack]\ncpus = 3\n')
    assert cfg.packed().cpus == 2
    assert cfg.warnings == (
        f"{proj}/Smolfile:4: warning: '[pack]' is ignored by smolpack"
        " ([artifact] takes precedence, as in smolvm)",
    )


def test_network_lists_imply_net(proj: Path) -> None:
    cfg = load(
        proj,
        'image = "./rootfs"\n[network]\nallow_hosts = ["pypi.org", "1.2.3.4"]\n'
        'allow_cidrs = ["10.1.2.3/8", "1.1.1.1", "::1"]\n',
    )
    assert cfg.net is True
    assert cfg.network.allow_hosts == ("pypi.org", "1.2.3.4")
    assert cfg.network.allow_cidrs == ("10.0.0.0/8", "1.1.1.1/32", "::1/128")
    only_cidrs = load(proj, 'image = "./rootfs"\n[network]\nallow_cidrs = ["10.0.0.0/8"]\n')
    assert only_cidrs.net is True
    empty = load(proj, 'image = "./rootfs"\n[network]\nallow_hosts = []\n')
    assert empty.net is False


def test_explicit_net_false_with_allow_list_warns(proj: Path) -> None:
    cfg = load(proj, 'image = "./rootfs"\nnet = false\n[network]\nallow_hosts = ["a.io"]\n')
    assert cfg.net is True
    assert cfg.warnings == (
        f"{proj}/Smolfile:2: warning: 'net = false' is overridden: a non-empty [network]"
        " allow list turns the network on",
    )


@pytest.mark.parametrize("key", sorted(IGNORED_KEYS))
def test_ignored_smolvm_keys_warn_once_with_line(proj: Path, key: str) -> None:
    cfg = load(proj, f'image = "./rootfs"\n\n{key} = 1\n')
    assert cfg.warnings == (
        f"{proj}/Smolfile:3: warning: '{key}' is ignored by smolpack ({IGNORED_KEYS[key]})",
    )


def test_gpu_warning_text_matches_spec(proj: Path) -> None:
    text = 'image = "./rootfs"\n' + "\n" * 5 + "gpu = true\n"
    assert load(proj, text).warnings == (
        f"{proj}/Smolfile:7: warning: 'gpu' is ignored by smolpack (no GPU in packs)",
    )


def test_ignored_sections_accept_any_content_and_warn_in_file_order(proj: Path) -> None:
    cfg = load(
        proj,
        'image = "./rootfs"\n[health]\nexec = ["curl"]\nanything = {a = 1}\n'
        '[fork]\nTOKEN = { from_env = "T" }\n[artifact]\noci_platform = "linux/amd64"\n',
    )
    assert cfg.warnings == (
        f"{proj}/Smolfile:2: warning: '[health]' is ignored by smolpack"
        " (a pack runs one command, not a service)",
        f"{proj}/Smolfile:5: warning: '[fork]' is ignored by smolpack (no VM forking in packs)",
    )
    # oci_platform picks what a registry image is pulled for (formats/registry.md)
    assert cfg.artifact.oci_platform == "linux/amd64"
    assert cfg.packed().oci_platform == "linux/amd64"


def test_oci_platform_is_normalized_or_refused_with_its_line(proj: Path) -> None:
    cfg = load(proj, 'image = "./rootfs"\n[pack]\noci_platform = "linux/aarch64/v8"\n')
    assert cfg.packed().oci_platform == "linux/arm64/v8"
    with pytest.raises(SmolfileError) as exc:
        load(proj, 'image = "./rootfs"\n[artifact]\noci_platform = "windows/amd64"\n')
    assert str(exc.value) == (
        f"{proj}/Smolfile:3: oci_platform 'windows/amd64' must be linux/amd64 or linux/arm64"
        " (optionally /<variant>)"
    )


def test_missing_image_loads_with_a_warning_and_create_refuses(tmp_path: Path) -> None:
    cfg = load(tmp_path, "cpus = 2\n")
    assert cfg.image is None
    assert cfg.warnings == (
        f"{tmp_path}/Smolfile: warning: no 'image' set; 'smolpack create' will need an image",
    )
    with pytest.raises(SmolfileError) as exc:
        require_image(cfg)
    assert str(exc.value) == (
        f"{tmp_path}/Smolfile: no 'image' set; smolpack needs an image (a registry reference"
        " like alpine:3.20, a rootfs directory, tarball, OCI layout or docker archive)"
    )


# -- relative paths and image classification ----------------------------------


def test_relative_paths_resolve_against_the_smolfile_not_cwd(
    proj: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    (proj / "Smolfile").write_text('image = "rootfs"\nvolumes = ["src:/app"]\n')
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    cfg = load_smolfile(proj)  # a directory: its Smolfile is read
    assert cfg.image is not None and cfg.image.path == proj / "rootfs"
    assert cfg.volumes[0].host_path == proj / "src"


def test_error_messages_use_the_path_as_given(proj: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (proj / "Smolfile").write_text("memory = 32\n")
    monkeypatch.chdir(proj)
    with pytest.raises(SmolfileError) as exc:
        load_smolfile("Smolfile")
    assert str(exc.value) == "Smolfile:1: memory must be at least 64 MiB (got 32)"


@pytest.mark.parametrize(
    "ref",
    [
        "python:3.12-alpine",
        "alpine",
        "ghcr.io/acme/api:1.2.3",
        "localhost:5000/team/tool@sha256:" + "a" * 64,
        "docker.io/library/busybox:1.36",
    ],
)
def test_registry_references(tmp_path: Path, ref: str) -> None:
    cfg = load(tmp_path, f'image = "{ref}"\n')
    assert cfg.image is not None and cfg.image.is_registry_ref and cfg.image.path is None
    assert cfg.to_dict()["image"] == {
        "ref": ref,
        "kind": "registry",
        "is_registry_ref": True,
        "path": None,
    }


def test_require_image_accepts_a_registry_ref(tmp_path: Path) -> None:
    image = require_image(load(tmp_path, '# base\nimage = "python:3.12-alpine"\n'))
    assert (image.kind, image.path, image.line) == ("registry", None, 2)


def test_existing_bare_name_is_local(proj: Path) -> None:
    image = require_image(load(proj, 'image = "rootfs"\n'))
    assert (image.kind, image.path) == ("rootfs-dir", proj / "rootfs")


def test_local_image_kinds(tmp_path: Path) -> None:
    (tmp_path / "layout").mkdir()
    (tmp_path / "layout" / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (tmp_path / "img.tar").write_bytes(b"")
    kinds = {
        raw: require_image(load(tmp_path, f'image = "{raw}"\n')).kind
        for raw in ("./layout", "img.tar", str(tmp_path / "layout"), ".")
    }
    assert kinds == {
        "./layout": "oci-layout",
        "img.tar": "archive",
        str(tmp_path / "layout"): "oci-layout",
        ".": "rootfs-dir",
    }


def test_to_dict_is_json_and_complete(proj: Path) -> None:
    cfg = load(
        proj,
        'image = "./rootfs"\nenv = ["A=1"]\nvolumes = ["./src:/s:ro"]\nports = ["80"]\n'
        "gpu = true\n[artifact]\nmemory = 128\n",
    )
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data == {
        "source": f"{proj}/Smolfile",
        "image": {
            "ref": "./rootfs",
            "kind": "rootfs-dir",
            "is_registry_ref": False,
            "path": f"{proj}/rootfs",
        },
        "entrypoint": [],
        "cmd": [],
        "env": {"A": "1"},
        "workdir": None,
        "cpus": 1,
        "memory_mib": 512,
        "net": False,
        "init": [],
        "volumes": [{"host": f"{proj}/src", "guest": "/s", "read_only": True}],
        "ports": [{"host": 80, "guest": 80}],
        "network": {"allow_hosts": [], "allow_cidrs": []},
        "secrets": [],
        "ssh_agent": False,
        "host_cwd": "off",
        "artifact": {"cpus": None, "memory_mib": 128, "entrypoint": [], "cmd": []},
        "warnings": [f"{proj}/Smolfile:5: warning: 'gpu' is ignored by smolpack (no GPU in packs)"],
    }
    assert cfg.packed().to_dict()["memory_mib"] == 128


def test_config_is_frozen(proj: Path) -> None:
    cfg = load(proj, 'image = "./rootfs"\n')
    with pytest.raises(AttributeError):
        cfg.cpus = 3  # type: ignore[misc]
