"""Smolfiles written for smolvm load cleanly (formats/smolfile.md, "Compatibility with smolvm").

The texts follow the shapes of smolvm's own examples (examples/*/*.smolfile,
docs/dev-env/assets/dev.smolfile and the crate's documented full example):
images as registry refs or local tars, `[dev]` profiles, smolvm-only keys.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from smolpack.smolfile import PortMapping, SmolConfig, Volume, load_smolfile

PYTHON_APP = """\
# A Python dev machine.
image = "python:3.12-alpine"
entrypoint = ["python3"]

cpus = 2
memory = 512
net = true

[dev]
ports = ["8080:8080"]
init = ["pip install --no-cache-dir ipython"]
"""

DOCKER_IN_VM = """\
# Docker Engine in a bare VM (no image: smolvm's default Alpine).
cpus = 2
memory = 2048
net = true
storage = 20
docker_socket = true

init = [
    "apk update -q",
    # daemon + CLI
    "apk add docker -q",
    "mkdir -p /storage/docker /var/lib/docker",
]
"""

DEV_MACHINE = """\
image = "python:3.12-alpine"
net = true
cpus = 2
memory = 2048
volumes = ["./src:/app"]
init = [
  "sh -c \\"id -un > /who.txt\\"",
  "adduser -D app",
]
user = "app"
workdir = "/app"
"""

CUDA_WORKER = """\
image = "./torch-cuda.tar"
cuda = true
net = true
memory = 16384
env = ["PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False"]

[dev]
volumes = ["./work:/work"]
workdir = "/work"
"""

FULL_EXAMPLE = """\
image = "ghcr.io/acme/api:1.2.3"
entrypoint = ["/app/api"]
cmd = ["serve"]
workdir = "/app"
env = ["PORT=8080"]

cpus = 2
memory = 1024
net = true

[dev]
volumes = ["./src:/app"]
init = ["cargo build"]
ports = ["8080:8080"]

[artifact]
cpus = 4
memory = 2048

[network]
allow_hosts = ["pypi.org"]
allow_cidrs = ["10.0.0.0/8"]

[health]
exec = ["curl", "-f", "http://localhost:8080/health"]
interval = "10s"
timeout = "2s"
retries = 3

[restart]
policy = "on-failure"
max_retries = 5

[auth]
ssh_agent = true

[service]
port = 8080
protocol = "http"

[secrets]
DB_PASSWORD = { from_env = "PGPASSWORD" }
"""


@pytest.fixture()
def proj(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "torch-cuda.tar").write_bytes(b"")
    return tmp_path


def load(proj: Path, text: str) -> SmolConfig:
    (proj / "Smolfile").write_text(text)
    return load_smolfile(proj)


def test_python_app(proj: Path) -> None:
    cfg = load(proj, PYTHON_APP)
    assert cfg.image is not None and cfg.image.is_registry_ref
    assert cfg.entrypoint == ("python3",) and (cfg.cpus, cfg.memory_mib, cfg.net) == (2, 512, True)
    assert cfg.init == ("pip install --no-cache-dir ipython",)
    assert cfg.ports == (PortMapping(host_port=8080, guest_port=8080),)
    assert cfg.warnings == ()


def test_docker_in_vm(proj: Path) -> None:
    cfg = load(proj, DOCKER_IN_VM)
    assert cfg.image is None and len(cfg.init) == 3
    s = f"{proj}/Smolfile"
    assert cfg.warnings == (
        f"{s}: warning: no 'image' set; 'smolpack create' will need an image",
        f"{s}:5: warning: 'storage' is ignored by smolpack"
        " (the pack's disk is sized from the image and build output)",
        f"{s}:6: warning: 'docker_socket' is ignored by smolpack (no host socket bridge in packs)",
    )


def test_dev_machine_with_user(proj: Path) -> None:
    cfg = load(proj, DEV_MACHINE)
    assert cfg.init == ('sh -c "id -un > /who.txt"', "adduser -D app")
    assert cfg.volumes == (Volume(host_path=proj / "src", guest_path="/app", read_only=False),)
    assert cfg.warnings == (
        f"{proj}/Smolfile:10: warning: 'user' is ignored by smolpack"
        " (the tool runs as root; user switching is not supported yet)",
    )


def test_cuda_worker_local_tar(proj: Path) -> None:
    cfg = load(proj, CUDA_WORKER)
    assert cfg.image is not None and cfg.image.kind == "archive"
    assert cfg.image.path == proj / "torch-cuda.tar"
    assert cfg.workdir == "/work" and cfg.volumes[0].host_path == proj / "work"
    assert cfg.env == (("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:False"),)
    assert [w.split(": warning: ")[1] for w in cfg.warnings] == [
        "'cuda' is ignored by smolpack (no CUDA forwarding in packs)"
    ]


def test_full_documented_example(proj: Path) -> None:
    cfg = load(proj, FULL_EXAMPLE)
    assert cfg.init == ("cargo build",) and cfg.workdir == "/app"
    assert cfg.network.allow_cidrs == ("10.0.0.0/8",)
    packed = cfg.packed()
    assert (packed.cpus, packed.memory_mib, packed.cmd) == (4, 2048, ("serve",))
    # One warning per ignored section, on its header line, in file order.
    assert [w.split(": warning: ")[0].rsplit(":", 1)[1] for w in cfg.warnings] == [
        "24",
        "30",
        "37",
    ]
    # [auth] and [secrets] take effect (formats/smolfile.md §4).
    assert cfg.ssh_agent is True
    assert [x.to_dict() for x in cfg.secrets] == [{"name": "DB_PASSWORD", "from_env": "PGPASSWORD"}]


def test_relative_volume_found_only_in_the_current_directory_is_used_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # smolvm resolves volume host paths against the current directory: its
    # examples/doom-web/doom.smolfile is checked from the repository root that way.
    sub = tmp_path / "examples" / "doom"
    sub.mkdir(parents=True)
    (sub / "Smolfile").write_text('image = "alpine:3.20"\nvolumes = ["./assets:/assets:ro"]\n')
    (tmp_path / "assets").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = load_smolfile(sub)
    assert cfg.volumes == (
        Volume(host_path=tmp_path / "assets", guest_path="/assets", read_only=True),
    )
    assert cfg.warnings == (
        f"{sub / 'Smolfile'}:2: warning: volumes entry './assets:/assets:ro': ./assets is not in"
        f" the Smolfile's directory; using {tmp_path / 'assets'} from the current directory"
        " (smolvm's rule)",
    )
    (sub / "assets").mkdir()  # the Smolfile's directory wins, silently
    cfg = load_smolfile(sub)
    assert cfg.volumes[0].host_path == sub / "assets" and cfg.warnings == ()
