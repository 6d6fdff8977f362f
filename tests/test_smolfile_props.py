"""Property tests: any input gives a config or our one-line error, never a crash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from smolpack.errors import SmolfileError
from smolpack.smolfile import SmolConfig, load_smolfile

SETTINGS = settings(max_examples=150, deadline=None)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for all examples (module scope: hypothesis reuses it safely)."""
    path = tmp_path_factory.mktemp("props")
    (path / "rootfs").mkdir()
    return path


def check(work: Path, text: str | bytes) -> SmolConfig | SmolfileError:
    path = work / "Smolfile"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(text)
    try:
        cfg = load_smolfile(path)
    except SmolfileError as err:
        assert "\n" not in str(err) and str(err).startswith(f"{path}")
        return err
    json.dumps(cfg.to_dict())  # always JSON-able
    return cfg


@SETTINGS
@given(st.binary(max_size=300))
@example(b"image = '" + b"a" * 300 + b".tar'")  # ENAMETOOLONG from the filesystem
@example(b'image = "./x\\u0000y"')  # NUL byte in a path
@example(b'volumes = ["' + b"b" * 300 + b':/x"]')
@example(b"\xef\xbb\xbfcpus = 2")  # UTF-8 BOM
@example(b'env = ["A\\nB"]')  # a newline inside a quoted value stays escaped
def test_arbitrary_bytes(work: Path, data: bytes) -> None:
    check(work, data)


def toml_value() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.text(max_size=20),
        st.sampled_from(["./rootfs", "A=1", "80:8080", "/app", "10.0.0.0/8", "alpine:3"]),
    )
    return st.one_of(scalars, st.lists(scalars, max_size=4))


KEYS = ["image", "entrypoint", "cmd", "env", "workdir", "cpus", "memory", "net", "init",
        "volumes", "ports", "gpu", "user", "bogus"]  # fmt: skip
SECTIONS = ["dev", "network", "artifact", "pack", "health", "nope"]
SECTION_KEYS = ["init", "env", "workdir", "volumes", "ports", "allow_hosts", "allow_cidrs",
                "cpus", "memory", "entrypoint", "cmd", "oci_platform", "x"]  # fmt: skip


def render(top: dict[str, Any], tables: dict[str, dict[str, Any]]) -> str:
    # json.dumps of strings, ints, bools and lists of them is valid TOML.
    lines = [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@SETTINGS
@given(
    st.dictionaries(st.sampled_from(KEYS), toml_value(), max_size=6),
    st.dictionaries(
        st.sampled_from(SECTIONS),
        st.dictionaries(st.sampled_from(SECTION_KEYS), toml_value(), max_size=3),
        max_size=3,
    ),
)
def test_structured_documents(
    work: Path, top: dict[str, Any], tables: dict[str, dict[str, Any]]
) -> None:
    result = check(work, render(top, tables))
    if isinstance(result, SmolConfig):
        assert 1 <= result.cpus <= 64 and 64 <= result.memory_mib <= 131072
        assert result.packed().packed() == result.packed()


@SETTINGS
@given(
    st.lists(st.sampled_from(["", "# note", "   ", "# cpus = 0"]), max_size=8),
    st.integers(min_value=-5, max_value=200),
)
def test_cpus_error_names_its_line(work: Path, padding: list[str], cpus: int) -> None:
    result = check(work, "\n".join([*padding, f"cpus = {cpus}", 'image = "./rootfs"']) + "\n")
    if 1 <= cpus <= 64:
        assert isinstance(result, SmolConfig) and result.cpus == cpus
    else:
        assert isinstance(result, SmolfileError) and result.line == len(padding) + 1
