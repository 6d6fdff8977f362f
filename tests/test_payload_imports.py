"""The launcher imports the payload reader: it must stay stdlib-only and cheap."""

from __future__ import annotations

import json
import subprocess
import sys

from payload_helpers import REPO, VECTORS


def modules_after(code: str, *, site: bool = False) -> set[str]:
    # -S by default: the frozen launcher has no site-packages either (and
    # site's editable-install hooks import modules the launcher never sees).
    script = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    res = subprocess.run(
        [sys.executable, "-I", *([] if site else ["-S"]), "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return set(json.loads(res.stdout.splitlines()[-1]))


def test_opening_a_payload_loads_no_third_party_module() -> None:
    sample = VECTORS / "valid" / "sample.smolmachine"
    loaded = modules_after(
        "sys.path.insert(0, '.')\n"
        "from smolpack.payload import open_payload\n"
        f"p = open_payload({str(sample)!r}); p.manifest(); p.read_section('disk')"
    )
    ours = {m for m in loaded if m.startswith("smolpack")}
    assert ours == {
        "smolpack",
        "smolpack.atomic_file",
        "smolpack.errors",
        "smolpack.payload",
        "smolpack.payload._decode",
        "smolpack.payload._sparse",
        "smolpack.payload.layout",
        "smolpack.payload.locate",
        "smolpack.payload.manifest",
        "smolpack.payload.reader",
        "smolpack.payload.writer",
    }
    for heavy in ("zstandard", "click", "lief", "tempfile", "shutil"):
        assert heavy not in loaded


def test_zstandard_is_loaded_only_for_zstd_sections() -> None:
    sample = VECTORS / "valid" / "sample.smolmachine"
    loaded = modules_after(
        "sys.path.insert(0, '.')\n"
        "from smolpack.payload import open_payload\n"
        f"open_payload({str(sample)!r}).read_section('kernel')",
        site=True,
    )
    assert "zstandard" in loaded
