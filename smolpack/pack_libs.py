"""libkrun and libkrunfw carried inside a pack (formats/smolmachine.md, "Host libraries").

Create side: `build.build_payload` stores the target host's two libraries as zstd sections
named by `section_names`, so a packed tool needs nothing installed to use the krun engine.
Run side: `runtime_libs_for` materializes them into the content cache (keyed by digest,
written once, atomically) and returns their paths; without such sections it falls back to
`find_runtime_libs` (the libraries installed beside smolpack: `smolpack run app.smolmachine`).

Materializing costs ~30 ms once per library version (zstd decode of ~9 MB); a run that picks
QEMU only asks whether they are there (`has_host_libs`). Imports only stdlib-only smolpack
modules: the launcher imports it (lazily, on the krun path).
"""

from __future__ import annotations

from pathlib import Path

from smolpack.cache import cached_section
from smolpack.errors import HostError
from smolpack.payload import Payload
from smolpack.runtime_libs import RuntimeLibs, find_runtime_libs

LIBS = ("libkrun", "libkrunfw")


def section_names(target: str) -> tuple[str, str]:
    """(libkrun section, libkrunfw section) for a stub target like `linux-x86_64`."""
    return f"host/{target}/libkrun", f"host/{target}/libkrunfw"


def has_host_libs(payload: Payload, target: str) -> bool:
    return all(name in payload.sections for name in section_names(target))


def runtime_libs_for(payload: Payload, target: str) -> RuntimeLibs:
    """The libraries the krun engine should load to run `payload` on host `target`."""
    if not has_host_libs(payload, target):
        return find_runtime_libs()
    krun, fw = (cached_section(payload, name, "libs") for name in section_names(target))
    return RuntimeLibs(libkrun_path=krun, libkrunfw_path=fw, source="payload")


def libs_for_target(target: str, this_target: str, stub_dir: Path | None) -> RuntimeLibs | None:
    """Where the build finds `target`'s libraries: installed ones for this host, else the
    `<stub_dir>/<target>/` folder that holds that host's stub. None when there are none."""
    if target == this_target:
        try:
            return find_runtime_libs()
        except HostError:
            return None
    if stub_dir is None:
        return None
    platform = "darwin" if target.startswith("macos") else "linux"
    try:
        return find_runtime_libs(env={"SMOLPACK_LIBKRUN_DIR": str(stub_dir / target)},
                                 platform=platform)  # fmt: skip
    except HostError:
        return None
