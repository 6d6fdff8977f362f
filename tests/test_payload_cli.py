"""`smolpack inspect`, `verify` and `payload write-sample` through smolpack.cli.main."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from payload_helpers import VECTORS, allocated

from smolpack import cli as cli_mod

CASES = json.loads((VECTORS / "invalid" / "cases.json").read_text())
OPEN_OR_VERIFY = [c for c in CASES if c["operation"] in ("open", "verify", "manifest")]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli_mod.main(list(args))
    out, err = capsys.readouterr()
    code = exc.value.code
    assert isinstance(code, int)
    return code, out, err


def test_inspect_prints_table(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(VECTORS / "valid")
    code, out, err = run(capsys, "inspect", "sample.smolmachine")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "sample.smolmachine: .smolmachine 1.0, 6 sections, 131888 bytes"
    assert lines[1] == "  origin    0 (standalone file)"
    assert "  guest     x86_64" in lines
    assert "  states    qemu-x86_64: qemu on linux/x86_64 (qemu-x86_64/migration)" in lines
    assert lines[7].split() == ["NAME", "KIND", "CODEC", "STORED", "RAW", "OFFSET", "SHA256"]
    names = [line.split()[0] for line in lines[8:]]
    assert names == [
        "manifest",
        "kernel",
        "disk",
        "qemu-x86_64/migration",
        "krun-x86_64/memory.bin",
        "krun-x86_64/checkpoint.bin",
    ]
    assert lines[10].split()[:6] == ["disk", "disk", "none", "65536", "65536", "32768"]


def test_inspect_json_is_the_golden_json(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(VECTORS / "valid")
    code, out, _ = run(capsys, "inspect", "--json", "future-minor.smolmachine")
    assert code == 0
    info = json.loads(out)
    assert info.pop("path") == "future-minor.smolmachine"
    assert info == json.loads(Path("future-minor.inspect.json").read_text())
    assert {s["kind"] for s in info["sections"]} == {"manifest", "unknown(42)", "state"}


def test_verify_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "verify", str(VECTORS / "valid" / "sample.smolmachine"))
    assert (code, out, err) == (0, "OK 6 sections verified\n", "")


@pytest.mark.parametrize("case", OPEN_OR_VERIFY, ids=[c["file"] for c in OPEN_OR_VERIFY])
def test_verify_fails_with_the_error_line_and_code(
    case: dict[str, object], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(VECTORS / "invalid")
    code, out, err = run(capsys, "verify", str(case["file"]))
    assert (code, out) == (case["exit_code"], "")
    assert err == f"Error: {case['message']}\n"


def test_inspect_fails_on_damage_the_same_way(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(VECTORS / "invalid")
    code, _, err = run(capsys, "inspect", "index-digest.smolmachine")
    assert code == 113
    assert err.startswith("Error: index-digest.smolmachine: index digest mismatch (expected ")
    # inspect does not hash sections: a damaged disk still inspects, verify catches it
    code, out, _ = run(capsys, "inspect", "section-digest.smolmachine")
    assert code == 0 and "disk" in out


def test_missing_file_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "verify", str(tmp_path / "nope"))
    assert code == 2
    assert "does not exist" in err


def test_write_sample_then_inspect_and_verify(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1795305600")
    out_path = tmp_path / "s.smolmachine"
    assert run(capsys, "payload", "write-sample", str(out_path))[:2] == (0, f"wrote {out_path}\n")
    assert allocated(out_path) < 1024 * 1024 < out_path.stat().st_size  # the 64 MiB disk is sparse
    assert run(capsys, "verify", str(out_path))[:2] == (0, "OK 4 sections verified\n")
    code, out, _ = run(capsys, "inspect", "--json", str(out_path))
    info = json.loads(out)
    assert info["manifest"]["created"] == "2026-11-22T00:00:00Z"
    assert [s["name"] for s in info["sections"]] == [
        "manifest",
        "kernel",
        "disk",
        "qemu-x86_64/migration",
    ]
    first = out_path.read_bytes()
    run(capsys, "payload", "write-sample", str(out_path))
    assert out_path.read_bytes() == first  # reproducible with SOURCE_DATE_EPOCH
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.smolmachine"]


def test_help_has_examples_and_payload_group_is_hidden() -> None:
    for cmd in (["inspect"], ["verify"], ["payload", "write-sample"]):
        res = subprocess.run(
            [sys.executable, "-m", "smolpack", *cmd, "--help"], capture_output=True, text=True
        )
        assert res.returncode == 0
        assert "Example:" in res.stdout
    top = subprocess.run(
        [sys.executable, "-m", "smolpack", "--help"], capture_output=True, text=True
    )
    assert "inspect" in top.stdout and "verify" in top.stdout
    commands = [line.split()[0] for line in top.stdout.split("Commands:")[1].splitlines() if line]
    assert "inspect" in commands and "payload" not in commands
