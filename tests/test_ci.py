"""CI's entry point lints before it tests, with the three checks the repository is held to."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ci_runs_lint_then_test() -> None:
    lines = (REPO / ".ci/run").read_text().splitlines()
    assert lines.index("make lint") < lines.index("make test")


def test_make_lint_runs_ruff_check_format_and_mypy_strict() -> None:
    # CI runs this under `make test`: a sub-make would print "Entering directory" lines
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", ".deps-installed", "lint"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    commands = [re.sub(r"^\S*python\S*\s+-m\s+", "", line) for line in out.splitlines()]
    assert commands == [
        "ruff check smolpack stub tests bench",
        "ruff format --check smolpack stub tests bench",
        "mypy --strict smolpack stub",
    ]
