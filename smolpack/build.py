"""create: Smolfile → image → disk → build VM → saved state → `.smolmachine` payload.

Read top to bottom, `build_payload` is the whole create flow (design.md §3):

1. resolve the image into a merged root tree and add the guest agent;
2. make the ext4 base image;
3. boot a build VM on it (base read-only + a writable qcow2 overlay);
4. run the Smolfile's `init` steps through the agent, streaming their output;
5. agent syncs and says READY; pause and save the VM state;
6. flatten overlay + base into the disk that ships — the very disk the saved
   memory expects (same instant: the guest is paused while we copy);
7. write the payload: manifest, kernel, disk, state.

Steps 3-6 are each engine's own (`Engine.build_state`), run for every engine of the registry
that `--state` selects and that can save here, in the registry's order: where hardware
virtualization works, libkrun's and then QEMU's. The last one's flattened disk is the pack's;
an earlier state carries its own, since two build VMs never leave byte-identical disks. An
engine that cannot save here is skipped, and the progress output says why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from smolpack import __version__
from smolpack.agent.binary import agent_binary
from smolpack.disk import build_ext4
from smolpack.engine import registry
from smolpack.engine.interface import Engine
from smolpack.engine.qemu import AGENT_GUEST_PATH, KERNEL_CMDLINE
from smolpack.engine.saving import BuildJob, SavedState
from smolpack.errors import HostError, SmolfileError
from smolpack.image import goarch, image_locales, prepare_rootfs, prepare_rootfs_from_source
from smolpack.kernel import extract_kernel, kernel_elf_path
from smolpack.machine import MachineConfig, merge_env
from smolpack.pack_libs import section_names
from smolpack.payload import Manifest, PayloadWriter, SectionKind, created_now
from smolpack.payload.layout import Codec
from smolpack.progress import Progress
from smolpack.runtime_libs import RuntimeLibs, find_runtime_libs
from smolpack.smolfile import ImageRef, SmolConfig, require_image

if TYPE_CHECKING:
    from smolpack.registry import Platform

GUEST_ARCH = "x86_64"  # the only guest the QEMU engine boots so far
# Bumped whenever the payload built from the same inputs would change.
# 2: the build VM has a timer interrupt (QEMU microvm pic=on); older states never tick.
# 3: the QEMU state keeps guest RAM in a section of its own (lazy memory).
# 4: RAM pages equal to disk blocks are stored as references to them (memory-refs).
BUILD_RECIPE = "4"


def build_payload(
    config: SmolConfig,
    out: Path,
    *,
    progress: Progress,
    host_libs: tuple[str, RuntimeLibs] | None = None,
    states: str = "auto",
    lazy_memory: bool = True,
    compress: bool = True,
    disk_refs: bool = True,
    offline: bool = False,
) -> Path:
    """Build the pack described by `config` (already `packed()`) into `out`.

    `offline`: a registry image must come from the blob cache (formats/registry.md).

    `host_libs` (target, libraries): carry that host's libkrun + libkrunfw in the pack
    (formats/smolmachine.md, "Host libraries"), as packed executables do.
    `states`: "auto" (every engine's that can save here: krun's where this host can build it,
    and QEMU's), or one engine of `registry.savers()` (that engine's state only: the pack's
    disk is then that build VM's).
    `lazy_memory`: the QEMU state keeps guest RAM as a section of its own, mapped
    copy-on-write at run time (formats/qemu-state.md); False writes the eager layout of
    packs before it (RAM inside the migration stream), which runs must still restore.
    `compress`: store the disk and the QEMU state zstd-compressed, for transport; a run
    decodes each once into its cache by digest (`cache.section_file`). False stores them
    raw: the disk and the stream are read in place, no first-run decoding.
    `disk_refs`: a state's RAM pages that are copies of disk blocks (the page cache) are
    stored as references to them (formats/disk-refs.md); False stores the whole RAM, as
    packs before it did.
    """
    savers = [registry.load(name) for name in registry.savers()]
    if states != registry.AUTO and states not in registry.savers():
        raise ValueError(f"states must be one of {registry.state_choices()}")
    builds = _states_to_build(savers, states)  # before writing anything: may refuse
    image = require_image(config)
    work = Path(tempfile.mkdtemp(prefix=".smolpack-build-", dir=out.parent))
    try:
        tree = work / "rootfs"
        tree.mkdir()
        if image.is_registry_ref:
            from smolpack.registry import pull_image

            with progress.step(f"Pulling image {image.raw} ({pull_platform(config)})"):
                pulled = pull_image(
                    image.raw, platform=pull_platform(config), progress=progress, offline=offline
                )
            with progress.step(f"Unpacking image {pulled.reference}"):
                defaults = prepare_rootfs_from_source(pulled.source(), tree, arch=GUEST_ARCH)
        else:
            assert image.path is not None
            with progress.step(f"Unpacking image {image.raw}"):
                defaults = prepare_rootfs(image.path, tree, arch=GUEST_ARCH)
        locales = image_locales(tree)  # which of a user's LANG/LC_* runs may pass on
        with progress.step("Making the disk image"):
            base = work / "base.raw"
            agent = agent_binary(GUEST_ARCH)
            build_ext4(tree, base, extra_files={AGENT_GUEST_PATH: (agent, 0o755)})
            shutil.rmtree(tree)
        kernel = kernel_elf_path(extract_kernel(find_runtime_libs()))
        machine = MachineConfig(
            allow_hosts=config.network.allow_hosts,
            allow_cidrs=config.network.allow_cidrs,
            cpus=config.cpus,
            memory_mib=config.memory_mib,
            net=config.net,
            entrypoint=config.entrypoint or defaults.entrypoint,
            cmd=config.cmd or (defaults.cmd if not config.entrypoint else ()),
            env=merge_env(defaults.env, config.env),
            workdir=config.workdir or defaults.workdir or "",
            kernel_cmdline=KERNEL_CMDLINE,
            locales=locales,
            # Run-time attachments: references only. Secrets never reach `env`, so build
            # steps (and the state saved after them) cannot see a value.
            ports=tuple((m.host_port, m.guest_port) for m in config.ports),
            ssh_agent=config.ssh_agent,
            host_cwd=config.host_cwd,
            secrets=tuple(
                (x.name, "env", x.from_env) if x.from_env else (x.name, "file", x.from_file or "")
                for x in config.secrets
            ),
        )
        if machine.allow_hosts or machine.allow_cidrs:
            _note_unfiltered_egress(progress)
        saved: list[SavedState] = []
        last = [engine for engine, why in builds if why is None][-1]
        for engine, why in builds:
            if why is not None:
                progress.note(f"{engine.name} state skipped: {why}")
                continue
            job = BuildJob(config=config, machine=machine, guest_arch=GUEST_ARCH,
                           kernel=kernel, base=base, work=work, progress=progress,
                           own_disk=engine is not last, lazy_memory=lazy_memory,
                           compress=compress, disk_refs=disk_refs)  # fmt: skip
            saved.append(engine.build_state(job))
        base.unlink(missing_ok=True)
        disk = saved[-1].disk  # the last build VM's is the pack's
        assert disk is not None
        with progress.step("Writing the pack"):
            manifest = Manifest(
                smolpack_version=__version__,
                created=created_now(),
                guest_arch=GUEST_ARCH,
                machine=machine.to_dict(),
                states=tuple(state.ref for state in saved),
            )
            with PayloadWriter(out) as writer:
                writer.add_bytes("manifest", SectionKind.MANIFEST, manifest.to_json())
                # zstd: the launcher materializes the kernel once into its cache anyway.
                writer.add_file("kernel", SectionKind.KERNEL, kernel, codec=Codec.ZSTD)
                # Raw: QEMU reads the disk and the stream in place, from inside the pack.
                # Compressed: a run decodes them into its cache once (formats/qemu-state.md).
                cold = Codec.ZSTD if compress else Codec.NONE
                writer.add_file("disk", SectionKind.DISK, disk, codec=cold)
                # Each state's sections, the one giving the pack's disk first.
                for state in reversed(saved):
                    for section in state.sections:
                        writer.add_file(section.name, section.kind, section.path,
                                        codec=section.codec)  # fmt: skip
                if host_libs is not None:
                    target, libs = host_libs
                    paths = (libs.libkrun_path, libs.libkrunfw_path)
                    for name, path in zip(section_names(target), paths, strict=True):
                        writer.add_file(name, SectionKind.LIBRARY, path, codec=Codec.ZSTD)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _states_to_build(savers: list[Engine], states: str) -> list[tuple[Engine, str | None]]:
    """Each engine that saves, with why its state is skipped (None: build it), in order.

    Raises HostError when the one engine `states` names cannot save here, or none can.
    """
    able = {
        e.name: e.can_save_here(GUEST_ARCH) for e in savers if states in (e.name, registry.AUTO)
    }
    if states != registry.AUTO:
        ok, why = able[states]
        if not ok:
            others = tuple(f"--state={e.name}" for e in savers if e.name != states)
            raise HostError(f"cannot build a {states} state here: {why}",
                            hint=f"use {registry.spelled(others)}" if others else None)  # fmt: skip
        return [(e, None if e.name == states else f"--state={states}") for e in savers]
    building = tuple(e.title for e in savers if able[e.name][0])
    if not building:
        whys = "; ".join(why for _ok, why in able.values())
        raise HostError(f"no engine can build a state here: {whys}")
    return [(e, None if able[e.name][0] else
             f"{able[e.name][1]}; the pack restores under {registry.spelled(building)}")
            for e in savers]  # fmt: skip


def _note_unfiltered_egress(progress: Progress) -> None:
    """Allow lists hold only where an engine filters egress: say which engines do not."""
    engines = [registry.load(name) for name in registry.names()]
    filtering = tuple(e.name for e in engines if e.filters_egress)
    open_ = tuple(e.title for e in engines if not e.filters_egress)
    if filtering and open_:
        progress.note(
            f"network allow lists are enforced by the {registry.spelled(filtering)} engine"
            f" only; under {registry.spelled(open_)} the guest's egress is unrestricted"
            " (this build's too), so runs there need --smol-allow-unfiltered-egress"
        )


def input_digest(config: SmolConfig, states: str = "auto") -> str:
    """Digest of everything a pack is built from: the cache key of `smolpack run`."""
    h = hashlib.sha256()
    h.update(f"smolpack {__version__} recipe {BUILD_RECIPE} states {states}\n".encode())
    described = config.to_dict()
    described.pop("source", None)
    h.update(json.dumps(described, sort_keys=True).encode())
    image = require_image(config)
    if image.path is not None:
        _hash_tree(h, image.path)
    # A registry image is named by digest in `described` (see `pin_image`).
    for volume in config.volumes:  # what the init steps saw there is part of the build
        _hash_tree(h, volume.host_path)
    h.update(agent_binary(GUEST_ARCH).read_bytes())
    libs = find_runtime_libs()
    h.update(hashlib.sha256(Path(libs.libkrunfw_path).read_bytes()).digest())
    return h.hexdigest()


def pull_platform(config: SmolConfig) -> Platform:
    """The platform to pull a registry image for: `[artifact] oci_platform`, else the guest's.

    The guest architecture is fixed by the build VM, whatever `--target` says (the stub's
    host), so an `oci_platform` naming another architecture cannot be built.
    """
    from smolpack.registry import Platform

    want = goarch(GUEST_ARCH)
    if config.oci_platform is None:
        return Platform(architecture=want)
    _os, arch, *variant = config.oci_platform.split("/")
    if arch != want:
        raise SmolfileError(
            config.source_name,
            f"oci_platform {config.oci_platform}: smolpack builds linux/{want} guests"
            f" ({GUEST_ARCH}) only",
        )
    return Platform(architecture=arch, variant=variant[0] if variant else None)


def pin_image(config: SmolConfig, *, offline: bool = False) -> SmolConfig:
    """`config` with a registry image by tag pinned to the digest the tag names now.

    One manifest request (none with `offline`: the digest the tag had when last pulled),
    so `smolpack run`'s cache key and the build name the same bytes.
    """
    image = require_image(config)
    if not image.is_registry_ref:
        return config
    from smolpack.registry import parse_reference, resolve_digest

    ref = parse_reference(image.raw)
    if ref.digest is not None:
        return config
    digest = resolve_digest(image.raw, offline=offline)
    pinned = ImageRef(raw=f"{ref}@{digest}", kind=image.kind, path=None, line=image.line)
    return dataclasses.replace(config, image=pinned)


def _hash_tree(h: hashlib._Hash, root: Path) -> None:
    """Content and metadata of a file or directory tree, in a stable order."""
    if not root.is_dir():
        with open(root, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            h.update(f"{rel}\0{st.st_mode:o}\0{st.st_uid}:{st.st_gid}\0".encode())
            if path.is_symlink():
                h.update(os.readlink(path).encode())
            elif path.is_file():
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
