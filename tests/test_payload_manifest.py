"""The manifest: JSON round trip, field-naming errors, reproducible timestamps."""

from __future__ import annotations

import json

import pytest
from payload_helpers import sample_manifest

from smolpack.errors import BadLayout, UnsupportedVersion
from smolpack.payload import Manifest, created_now


def test_round_trip_and_stable_bytes() -> None:
    m = sample_manifest("qemu/stream", "qemu/extra")
    assert Manifest.from_json(m.to_json()) == m
    assert m.to_json() == sample_manifest("qemu/stream", "qemu/extra").to_json()


def test_unknown_keys_are_ignored() -> None:
    obj = {**sample_manifest().to_dict(), "added_in_1_1": [1, 2]}
    assert Manifest.from_dict(obj) == sample_manifest()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"guest_arch": "riscv64"},
            "x: field 'guest_arch' must be one of x86_64, aarch64 (found 'riscv64')",
        ),
        ({"created": 5}, "x: field 'created' must be a string (found 5)"),
        ({"machine": []}, "x: field 'machine' must be an object (found [])"),
        ({"states": {}}, "x: field 'states' must be a list (found {})"),
        ({"format_version": True}, "x: field 'format_version' must be an integer (found true)"),
        ({"states": [1]}, "x: 'states[0]' must be a JSON object"),
        ({"states": [{"name": "a"}]}, "x: field 'states[0].engine' is missing"),
        (
            {
                "states": [
                    {"name": "a", "engine": "qemu", "host_arch": "x86_64", "host_os": "linux"}
                ]
            },
            "x: field 'states[0].sections' is missing",
        ),
    ],
)
def test_bad_shapes_name_the_field(change: dict[str, object], message: str) -> None:
    obj = {**sample_manifest("s").to_dict(), **change}
    with pytest.raises(BadLayout) as exc:
        Manifest.from_json(json.dumps(obj).encode(), label="x")
    assert exc.value.message == message


def test_missing_field_and_repeated_state() -> None:
    obj = sample_manifest("s").to_dict()
    del obj["guest_arch"]
    with pytest.raises(BadLayout, match="field 'guest_arch' is missing"):
        Manifest.from_dict(obj)
    obj = sample_manifest("s").to_dict()
    obj["states"] = obj["states"] * 2
    with pytest.raises(BadLayout, match=r"field 'states\[1\].name' repeats state 'qemu-x86_64'"):
        Manifest.from_dict(obj)


def test_recorded_facts_round_trip_and_must_be_strings() -> None:
    obj = sample_manifest("s").to_dict()
    assert "recorded" not in obj["states"][0]  # written only when set: old bytes unchanged
    obj["states"][0]["recorded"] = {"qemu_version": "7.2.22", "cpu": "max"}
    m = Manifest.from_dict(obj)
    assert m.states[0].recorded == {"qemu_version": "7.2.22", "cpu": "max"}
    assert Manifest.from_json(m.to_json()) == m
    obj["states"][0]["recorded"] = {"qemu_version": 7}
    with pytest.raises(BadLayout, match=r"field 'states\[0\].recorded.qemu_version' must be a str"):
        Manifest.from_dict(obj)


def test_states_for_unknown_engines_or_hosts_are_skipped() -> None:
    known = sample_manifest("s")
    obj = known.to_dict()
    newer = {"engine": "firecracker", "host_arch": "x86_64", "host_os": "linux", "sections": 1}
    obj["states"] = [
        {**newer, "name": "fc"},
        {**obj["states"][0], "name": "win", "host_os": "windows", "sections": ["absent"]},
        *obj["states"],
    ]
    assert Manifest.from_dict(obj) == known
    obj["states"].append({**newer, "name": "fc"})  # skipped or not, names stay unique
    with pytest.raises(BadLayout, match=r"field 'states\[3\].name' repeats state 'fc'"):
        Manifest.from_dict(obj)


def test_newer_manifest_version_is_refused() -> None:
    obj = {**sample_manifest().to_dict(), "format_version": 2}
    with pytest.raises(UnsupportedVersion, match="manifest format_version 2 is not supported"):
        Manifest.from_dict(obj)


@pytest.mark.parametrize("data", [b"\xff", b"[", b"[" * 100_000 + b"]" * 100_000, b"null"])
def test_not_json_or_not_an_object(data: bytes) -> None:
    with pytest.raises(BadLayout):
        Manifest.from_json(data)


def test_created_uses_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1795305600")
    assert created_now() == "2026-11-22T00:00:00Z"
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert created_now().endswith("Z") and created_now() >= "2026"
