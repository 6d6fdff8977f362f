"""Golden vectors: committed files == generator output; each behaves as cases.json says."""

from __future__ import annotations

import json

import pytest
from payload_helpers import VECTORS, load_generator

from smolpack import errors
from smolpack.payload import open_payload
from smolpack.payload.describe import describe

CASES = json.loads((VECTORS / "invalid" / "cases.json").read_text())
VALID = sorted(p.name for p in (VECTORS / "valid").glob("*.smolmachine"))


def test_committed_vectors_match_the_generator() -> None:
    built = load_generator().build()
    committed = {
        str(p.relative_to(VECTORS)): p.read_bytes()
        for p in VECTORS.rglob("*")
        if p.is_file() and p.name != "generate.py" and "__pycache__" not in p.parts
    }
    assert sorted(built) == sorted(committed)
    for rel, data in built.items():
        assert committed[rel] == data, f"{rel} differs from generate.py's output"


def test_every_invalid_file_has_a_case() -> None:
    files = sorted(p.name for p in (VECTORS / "invalid").glob("*.smolmachine"))
    assert files == sorted(c["file"] for c in CASES)
    assert len(files) >= 25


@pytest.mark.parametrize("name", VALID)
def test_valid_vector_reads_and_matches_its_inspect_json(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(VECTORS / "valid")
    with open_payload(name) as p:
        assert p.verify() == len(p.sections)
        info = describe(p)
        for entry_name in p.sections:
            data = p.read_section(entry_name)
            assert len(data) == p.sections[entry_name].raw_size
    expected = json.loads(
        (VECTORS / "valid" / name.replace(".smolmachine", ".inspect.json")).read_text()
    )
    assert info.pop("path") == name
    assert info == expected


def test_sample_sections_decode_to_the_generator_inputs() -> None:
    inputs = load_generator().sample_inputs()
    with open_payload(VECTORS / "valid" / "sample.smolmachine") as p:
        assert [(n, p.read_section(n)) for n, _, _, _ in inputs] == [
            (n, data) for n, _, _, data in inputs
        ]


def test_future_minor_unknown_kind_is_kept_but_flagged() -> None:
    with open_payload(VECTORS / "valid" / "future-minor.smolmachine") as p:
        assert p.header.version_minor == 3
        assert p.sections["future/thing"].kind_name == "unknown(42)"
        assert p.read_section("future/thing") == b"a kind from the future\n"


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_invalid_vector_fails_as_recorded(
    case: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(VECTORS / "invalid")
    error_class = getattr(errors, str(case["error"]))
    assert error_class.exit_code == case["exit_code"]
    with pytest.raises(errors.PayloadError) as exc:
        load_generator().run_operation(str(case["file"]), str(case["operation"]))
    assert type(exc.value) is error_class
    assert exc.value.message == case["message"]
    if case["operation"] != "open":
        # Damage found on use must not stop the payload from opening.
        with open_payload(str(case["file"])):
            pass
