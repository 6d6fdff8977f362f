"""Smolfile keys that reach host resources at run time: [secrets], [auth], host_cwd
(formats/smolfile.md §2, §4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smolpack.errors import SmolfileError
from smolpack.smolfile import load_smolfile


def load(proj: Path, text: str):  # type: ignore[no-untyped-def]
    (proj / "rootfs").mkdir(exist_ok=True)
    (proj / "Smolfile").write_text('image = "./rootfs"\n' + text)
    return load_smolfile(proj)


def test_secrets_and_auth_are_parsed(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[auth]\nssh_agent = true\n[secrets]\nTOKEN = { from_env = "GH_TOKEN" }\n'
        'KEY = { from_file = "~/.config/key" }\nPEM = { from_file = "/etc/x.pem" }\n',
    )
    assert cfg.ssh_agent is True
    assert [s.to_dict() for s in cfg.secrets] == [
        {"name": "TOKEN", "from_env": "GH_TOKEN"},
        {"name": "KEY", "from_file": "~/.config/key"},
        {"name": "PEM", "from_file": "/etc/x.pem"},
    ]
    assert cfg.warnings == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[secrets]\nTOKEN = { from_file = "key.txt" }\n',
            "Smolfile:3: secrets.TOKEN.from_file must be an absolute path or start with ~/"
            " (got 'key.txt')",
        ),
        (
            '[secrets]\nTOKEN = "plain"\n',
            'Smolfile:3: secret TOKEN must be { from_env = "VAR" } or { from_file = "/path" }',
        ),
        (
            '[secrets]\nTOKEN = { from_env = "A", from_file = "/x" }\n',
            'Smolfile:3: secret TOKEN must be { from_env = "VAR" } or { from_file = "/path" }',
        ),
        (
            '[secrets]\n"BAD-NAME" = { from_env = "A" }\n',
            "Smolfile:3: secret name 'BAD-NAME' must match [A-Za-z_][A-Za-z0-9_]*",
        ),
        (
            "[auth]\nssh_agent = 1\n",
            "Smolfile:3: auth.ssh_agent must be true or false (got integer 1)",
        ),
        (
            "[auth]\nagent = true\n",
            "Smolfile:3: unknown key 'agent' in [auth] (did you mean 'ssh_agent'?)",
        ),
        ('host_cwd = "yes"\n', 'Smolfile:2: host_cwd must be "off", "ro" or "rw" (got \'yes\')'),
    ],
)
def test_bad_values_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SmolfileError) as info:
        load(tmp_path, text)
    assert info.value.message == f"{tmp_path}/{message}"


def test_host_cwd_is_parsed(tmp_path: Path) -> None:
    assert load(tmp_path, 'host_cwd = "ro"\n').host_cwd == "ro"
    assert load(tmp_path, "").to_dict()["host_cwd"] == "off"
