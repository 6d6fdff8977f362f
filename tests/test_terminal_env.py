"""A run at a terminal passes the user's TERM (and LANG/LC_* the image has); the pack wins."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from smolpack.image import image_locales
from smolpack.machine import MachineConfig, terminal_env

PACK_ENV = ("PATH=/bin", "LANG=C.UTF-8")  # as if the Smolfile (or image) set LANG


def test_term_is_passed_and_the_packs_own_entries_win() -> None:
    host = {"TERM": "xterm-256color", "LANG": "de_DE.UTF-8", "HOME": "/home/u"}
    assert terminal_env(PACK_ENV, host, ("de_DE.utf8",)) == (*PACK_ENV, "TERM=xterm-256color")


def test_locales_only_where_the_image_has_them() -> None:
    host = {"LANG": "en_US.UTF-8", "LC_ALL": "POSIX", "LC_TIME": "de_DE.utf8", "LC_X": "fr_FR"}
    env = ("PATH=/bin",)
    # C and POSIX always exist; en_US.UTF-8 is en_US.utf8 once normalized, as glibc does.
    assert terminal_env(env, host, ("en_US.utf8",)) == (*env, "LANG=en_US.UTF-8", "LC_ALL=POSIX")
    assert terminal_env(env, host, ()) == (*env, "LC_ALL=POSIX")
    assert terminal_env(env, host, ("*",)) == (  # musl: any name
        *env, "LANG=en_US.UTF-8", "LC_ALL=POSIX", "LC_TIME=de_DE.utf8", "LC_X=fr_FR",
    )  # fmt: skip
    assert terminal_env(env, {"TERM": ""}, ()) == env


def test_machine_config_keeps_locales_and_old_packs_have_none() -> None:
    cfg = MachineConfig(cpus=1, memory_mib=256, net=False, entrypoint=(), cmd=(), env=(),
                        workdir="", kernel_cmdline="", locales=("C.utf8",))  # fmt: skip
    assert MachineConfig.from_dict(cfg.to_dict()) == cfg
    old = cfg.to_dict()
    del old["locales"]
    assert MachineConfig.from_dict(old).locales == ()


def test_image_locales_from_dirs_musl_and_never_through_symlinks(tmp_path: Path) -> None:
    deb = tmp_path / "deb"
    (deb / "usr/lib/locale/C.utf8").mkdir(parents=True)
    (deb / "usr/lib/locale/C.utf8/LC_CTYPE").write_bytes(b"x")
    (deb / "usr/lib/locale/half").mkdir()  # no LC_CTYPE: not a compiled locale
    assert image_locales(deb) == ("C.utf8",)
    alpine = tmp_path / "alpine"
    (alpine / "lib").mkdir(parents=True)
    (alpine / "lib/ld-musl-x86_64.so.1").write_bytes(b"")
    assert image_locales(alpine) == ("*",)
    hostile = tmp_path / "hostile"
    (hostile / "usr/lib").mkdir(parents=True)
    (hostile / "usr/lib/locale").symlink_to(deb / "usr/lib/locale")  # would read the host
    assert image_locales(hostile) == ()


@pytest.mark.skipif(
    shutil.which("localedef") is None or not Path("/usr/share/i18n/locales/en_US").exists(),
    reason="localedef and glibc's locale sources make the archive",
)
def test_image_locales_from_a_locale_archive(tmp_path: Path) -> None:
    (tmp_path / "usr/lib/locale").mkdir(parents=True)  # what locale-gen writes: ~3 MiB
    for name in ("en_US",):  # ~4 s each
        subprocess.run(
            ["localedef", f"--prefix={tmp_path}", "-i", name, "-f", "UTF-8", f"{name}.UTF-8"],
            check=False,  # warnings make it exit 1 with the archive written
            capture_output=True,
        )
    assert (tmp_path / "usr/lib/locale/locale-archive").exists()
    assert image_locales(tmp_path) == ("en_US.utf8",)
