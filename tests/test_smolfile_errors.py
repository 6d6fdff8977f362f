"""Every Smolfile error is one exact line: FILE:LINE: problem (formats/smolfile.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smolpack.errors import SmolfileError
from smolpack.smolfile import load_smolfile


def error_line(tmp_path: Path, text: str) -> str:
    (tmp_path / "src").mkdir(exist_ok=True)
    path = tmp_path / "Smolfile"
    path.write_text(text)
    with pytest.raises(SmolfileError) as exc:
        load_smolfile(path)
    assert exc.value.exit_code == 3
    return str(exc.value).replace(str(tmp_path), "T")


# (Smolfile text, the full error line with the temp dir shown as T)
CASES = [
    (
        'image = "./src"\ncpus = 1\n\nmemory = 32\n',
        "T/Smolfile:4: memory must be at least 64 MiB (got 32)",
    ),
    ('cpus = "two"\n', 'T/Smolfile:1: cpus must be an integer (got string "two")'),
    ("cpus = 0\n", "T/Smolfile:1: cpus must be between 1 and 64 (got 0)"),
    ("\ncpus = 65\n", "T/Smolfile:2: cpus must be between 1 and 64 (got 65)"),
    ("cpus = true\n", "T/Smolfile:1: cpus must be an integer (got boolean true)"),
    ("memory = 999999\n", "T/Smolfile:1: memory must be at most 131072 MiB (got 999999)"),
    ("memory = 512.0\n", "T/Smolfile:1: memory must be an integer number of MiB (got float 512.0)"),
    ('env = [\n  "A=1",\n  "FOO",\n]\n', "T/Smolfile:3: env entry 'FOO' must be KEY=VALUE"),
    ('env = ["1X=y"]\n', "T/Smolfile:1: env entry '1X=y' has an invalid name '1X'"),
    ('env = "A=1"\n', 'T/Smolfile:1: env must be an array of strings (got string "A=1")'),
    ('entrypoint = ["", "x"]\n', "T/Smolfile:1: entrypoint item 1 is empty"),
    (
        "entrypoint = [1]\n",
        "T/Smolfile:1: entrypoint must be an array of strings (item 1 is integer 1)",
    ),
    (
        'cmd = ["a",\n  true]\n',
        "T/Smolfile:2: cmd must be an array of strings (item 2 is boolean true)",
    ),
    ("# c\ncpu = 2\n", "T/Smolfile:2: unknown key 'cpu' (did you mean 'cpus'?)"),
    ("[build]\nx = 1\n", "T/Smolfile:1: unknown section [build]"),
    ("[networks]\n", "T/Smolfile:1: unknown section [networks] (did you mean 'network'?)"),
    (
        '[network]\nallow_host = ["a.b"]\n',
        "T/Smolfile:2: unknown key 'allow_host' in [network] (did you mean 'allow_hosts'?)",
    ),
    ("[dev]\nmemory = 2\n", "T/Smolfile:2: unknown key 'memory' in [dev]"),
    ('net = "yes"\n', 'T/Smolfile:1: net must be true or false (got string "yes")'),
    ('workdir = "app"\n', "T/Smolfile:1: workdir must be an absolute guest path (got 'app')"),
    (
        'ports = ["80:80", "80:81"]\n',
        "T/Smolfile:1: ports entry '80:81': host port 80 is already mapped by '80:80'",
    ),
    (
        'ports = ["8000-8001:80"]\n',
        "T/Smolfile:1: ports entry '8000-8001:80': host and guest ranges differ in length (2 vs 1)",
    ),
    ('ports = ["0"]\n', "T/Smolfile:1: ports entry '0': invalid port '0' (1..65535)"),
    (
        'ports = ["80:http"]\n',
        "T/Smolfile:1: ports entry '80:http': invalid guest port 'http' (1..65535)",
    ),
    ('ports = ["90-80"]\n', "T/Smolfile:1: ports entry '90-80': port range 90-80 is reversed"),
    ('ports = ["1-65"]\n', "T/Smolfile:1: ports expand to 65 mappings; at most 64 are allowed"),
    (
        'volumes = [\n  "./src:/app",\n  "./missing:/data",\n]\n',
        "T/Smolfile:3: volumes entry './missing:/data': host path T/missing does not exist",
    ),
    (
        'volumes = ["./Smolfile:/x"]\n',
        "T/Smolfile:1: volumes entry './Smolfile:/x': host path T/Smolfile is not a directory",
    ),
    (
        'volumes = ["./src:app"]\n',
        "T/Smolfile:1: volumes entry './src:app': guest path 'app' must be absolute",
    ),
    (
        'volumes = ["a:b:c:d"]\n',
        "T/Smolfile:1: volumes entry 'a:b:c:d' must be host:guest[:ro|:rw]",
    ),
    (
        'volumes = ["./src:/a:rx"]\n',
        "T/Smolfile:1: volumes entry './src:/a:rx' must be host:guest[:ro|:rw]",
    ),
    ('\nimage = "./nope"\n', "T/Smolfile:2: image path T/nope does not exist"),
    ('image = "rootfs.tar"\n', "T/Smolfile:1: image path T/rootfs.tar does not exist"),
    (
        'image = "Not A Ref!"\n',
        "T/Smolfile:1: image 'Not A Ref!' is neither an existing path (T/Not A Ref!)"
        " nor a valid registry reference",
    ),
    (
        'image = " ./src"\n',
        "T/Smolfile:1: image must be a non-empty string without surrounding spaces",
    ),
    (
        '[network]\nallow_cidrs = ["10.0.0.0/8",\n  "10.0.0.0/33"]\n',
        "T/Smolfile:3: allow_cidrs entry '10.0.0.0/33' is not a CIDR like 10.0.0.0/8"
        " or an IP like 1.1.1.1",
    ),
    (
        '[network]\nallow_hosts = ["example.com:443"]\n',
        "T/Smolfile:2: allow_hosts entry 'example.com:443': port suffixes are not supported"
        " (give the host only)",
    ),
    (
        '[network]\nallow_hosts = ["bad_host!"]\n',
        "T/Smolfile:2: allow_hosts entry 'bad_host!' is not a valid host name",
    ),
    ('[dev]\ninit = ["ok", ""]\n', "T/Smolfile:2: dev.init item 2 is empty"),
    ('init = ["  "]\n', "T/Smolfile:1: init item 1 is empty"),
    ("[artifact]\nmemory = 10\n", "T/Smolfile:2: artifact.memory must be at least 64 MiB (got 10)"),
    ("[pack]\ncpus = 100\n", "T/Smolfile:2: pack.cpus must be between 1 and 64 (got 100)"),
    ("dev = 3\n", "T/Smolfile:1: dev must be a table (got integer 3)"),
    ("[[dev]]\ninit = []\n", "T/Smolfile:1: dev must be a table (got array)"),
    (
        'cpus = 1\ndev.workdir = "rel"\n',
        "T/Smolfile:2: dev.workdir must be an absolute guest path (got 'rel')",
    ),
    (
        'workdir = "/ok"\n[dev]\nworkdir = ""\n',
        "T/Smolfile:3: dev.workdir must be an absolute guest path (got '')",
    ),
    (
        'dev = { workdir = "rel" }\n',
        "T/Smolfile:1: dev.workdir must be an absolute guest path (got 'rel')",
    ),
    (
        'x = """\ncpus = 1\n"""\ncpus = 0\n',
        "T/Smolfile:1: unknown key 'x'",
    ),
    ("cpus = 2\nmemory = \n", "T/Smolfile:2: invalid TOML: invalid value (column 10)"),
    ("cpus = 2\ncpus = 3\n", "T/Smolfile:2: invalid TOML: cannot overwrite a value (column 9)"),
    ('image = "x\n', "T/Smolfile:1: invalid TOML: illegal character '\\n' (column 11)"),
    ('env = ["A\\nB"]\n', "T/Smolfile:1: env entry 'A\\nB' must be KEY=VALUE"),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[1][12:60] for c in CASES])
def test_error_line(tmp_path: Path, text: str, expected: str) -> None:
    assert error_line(tmp_path, text) == expected


def test_key_inside_multiline_string_is_not_located(tmp_path: Path) -> None:
    # The locator must skip `cpus = 1` inside the string and find line 4.
    text = 'image = "./src"\nentrypoint = ["""\ncpus = 1\n"""]\ncpus = 0\n'
    assert error_line(tmp_path, text) == "T/Smolfile:5: cpus must be between 1 and 64 (got 0)"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SmolfileError) as exc:
        load_smolfile(tmp_path / "nope")
    assert str(exc.value) == f"{tmp_path}/nope: no such file"


def test_directory_without_smolfile(tmp_path: Path) -> None:
    with pytest.raises(SmolfileError) as exc:
        load_smolfile(tmp_path)
    assert str(exc.value) == f"{tmp_path}/Smolfile: no such file"


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "Smolfile"
    path.write_bytes(b"cpus = 1\nenv = ['\xff']\n")
    with pytest.raises(SmolfileError) as exc:
        load_smolfile(path)
    assert str(exc.value) == f"{path}:2: invalid UTF-8 text"


def test_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "Smolfile"
    path.write_bytes(b"#" * (1 << 20) + b"\n")
    with pytest.raises(SmolfileError) as exc:
        load_smolfile(path)
    assert str(exc.value) == f"{path}: file is larger than 1048576 bytes"
