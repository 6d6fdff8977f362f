"""`smolpack smolfile check`: exit codes, stdout/stderr split, JSON, the example."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smolpack.cli import main

REPO = Path(__file__).resolve().parent.parent


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.fixture()
def proj(tmp_path: Path) -> Path:
    (tmp_path / "rootfs").mkdir()
    return tmp_path


def test_subprocess_error_is_one_line_exit_3(proj: Path) -> None:
    (proj / "Smolfile").write_text('image = "./rootfs"\ncpus = 1\n\nmemory = 32\n')
    res = subprocess.run(
        [sys.executable, "-m", "smolpack", "smolfile", "check", "Smolfile"],
        capture_output=True,
        text=True,
        cwd=proj,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 3
    assert res.stderr == "Error: Smolfile:4: memory must be at least 64 MiB (got 32)\n"
    assert res.stdout == ""


def test_toml_syntax_error_exit_3(proj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (proj / "Smolfile").write_text("cpus = 2\nmemory = \n")
    code, out, err = run_main(capsys, "smolfile", "check", str(proj))
    assert (code, out) == (3, "")
    assert err == f"Error: {proj}/Smolfile:2: invalid TOML: invalid value (column 10)\n"


def test_missing_path_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "smolfile", "check", str(tmp_path / "x"))
    assert (code, err) == (3, f"Error: {tmp_path}/x: no such file\n")


def test_readable_output_and_warnings_on_stderr(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (proj / "Smolfile").write_text(
        'image = "./rootfs"\nentrypoint = ["/bin/echo"]\nenv = ["A=1", "B=2"]\n'
        'init = ["true", "echo x"]\nports = ["80:8080"]\ngpu = true\n'
        "[artifact]\ncpus = 2\n"
    )
    code, out, err = run_main(capsys, "smolfile", "check", str(proj))
    assert code == 0
    assert err == f"{proj}/Smolfile:6: warning: 'gpu' is ignored by smolpack (no GPU in packs)\n"
    assert out.splitlines() == [
        f"smolfile    {proj}/Smolfile",
        f"image       ./rootfs (rootfs-dir at {proj}/rootfs)",
        'entrypoint  ["/bin/echo"]',
        "cmd         (image default)",
        "env         A=1",
        "            B=2",
        "workdir     (image default)",
        "cpus        1",
        "memory      512 MiB",
        "net         off",
        "init        1. true",
        "            2. echo x",
        "port        80 -> 8080",
        "packed      cpus 2, memory 512 MiB",
        '            entrypoint ["/bin/echo"], cmd (image default)',
    ]


def test_json_output_is_clean_on_stdout(proj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (proj / "Smolfile").write_text('image = "./rootfs"\nrosetta = true\n')
    code, out, err = run_main(capsys, "smolfile", "check", "--json", str(proj / "Smolfile"))
    assert code == 0
    data = json.loads(out)
    assert data["image"]["path"] == str(proj / "rootfs") and data["memory_mib"] == 512
    assert err == (
        f"{proj}/Smolfile:2: warning: 'rosetta' is ignored by smolpack"
        " (no Rosetta translation in packs)\n"
    )
    assert data["warnings"] == [err.rstrip("\n")]


def test_registry_image_is_shown_not_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "Smolfile").write_text('image = "python:3.12-alpine"\n')
    code, out, _ = run_main(capsys, "smolfile", "check", str(tmp_path))
    assert code == 0
    assert (
        "image       python:3.12-alpine = docker.io/library/python:3.12-alpine"
        " (registry reference; pulled by create and run)"
    ) in out


def test_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "smolfile", "check", "--help")
    assert code == 0 and "smolpack smolfile check examples/hello" in out


def test_example_hello_is_valid_once_its_rootfs_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = tmp_path / "hello"
    shutil.copytree(REPO / "examples" / "hello", example)
    (example / "rootfs").mkdir(exist_ok=True)
    code, out, err = run_main(capsys, "smolfile", "check", "--json", str(example))
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["image"]["kind"] == "rootfs-dir"
    assert data["entrypoint"] == ["/bin/sh", "-c"] and data["init"]


def test_reference_example_in_formats_loads(tmp_path: Path) -> None:
    from smolpack.smolfile import load_smolfile

    doc = (REPO / "formats" / "smolfile.md").read_text()
    example = doc.split("## 7. A complete example")[1].split("```toml\n")[1].split("```")[0]
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "src").mkdir()
    (tmp_path / "Smolfile").write_text(example)
    cfg = load_smolfile(tmp_path)
    assert cfg.warnings == () and cfg.net is True
    assert cfg.init == ("pip install -e /src/mytool",)
    assert (cfg.memory_mib, cfg.packed().memory_mib) == (1024, 512)
