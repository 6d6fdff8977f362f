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

Where hardware virtualization works (KVM, Hypervisor.framework), steps 3-6 run twice: once
under libkrun (`_krun_build`: its state `krun-<arch>` carries its own flattened disk, since
two build VMs never leave byte-identical disks) and once under QEMU. Elsewhere only the QEMU
state is built, and the progress output says why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smolpack import __version__
from smolpack.agent.binary import agent_binary
from smolpack.agent.channels import ChannelHub
from smolpack.agent.session import AgentSession, handshake
from smolpack.disk import build_ext4
from smolpack.engine import Vm, registry
from smolpack.engine.console import console_tail, explain_agent_failure
from smolpack.engine.qemu import (
    AGENT_GUEST_PATH,
    KERNEL_CMDLINE,
    QemuMachine,
    QemuVm,
    RamFile,
    RootDisk,
)
from smolpack.engine.qemu_compat import qemu_facts
from smolpack.engine.qemu_state import state_sections
from smolpack.errors import AgentChannelClosed, AgentError, BuildError, HostError, SmolfileError
from smolpack.host import find_qemu, host_arch, host_os, hypervisor_status
from smolpack.hostdir import HostDir
from smolpack.image import goarch, image_locales, prepare_rootfs, prepare_rootfs_from_source
from smolpack.kernel import extract_kernel, kernel_elf_path
from smolpack.machine import MachineConfig, merge_env
from smolpack.pack_libs import section_names
from smolpack.payload import Manifest, PayloadWriter, SectionKind, StateRef, created_now
from smolpack.payload.layout import Codec
from smolpack.progress import Progress
from smolpack.runtime_libs import RuntimeLibs, find_runtime_libs
from smolpack.smolfile import ImageRef, SmolConfig, require_image

if TYPE_CHECKING:
    from smolpack.registry import Platform

GUEST_ARCH = "x86_64"  # the only guest the QEMU engine boots so far
BOOT_TIMEOUT_S = 120.0  # a cold boot under TCG takes ~3 s; leave room for a loaded CI box
QEMU_STATE = f"qemu-{GUEST_ARCH}"
STATE_CHOICES = registry.state_choices()
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
    `states`: "auto" (krun's where this host can build it, and QEMU's), "krun" or "qemu"
    (that engine's state only: the pack's disk is then that build VM's).
    `lazy_memory`: the QEMU state keeps guest RAM as a section of its own, mapped
    copy-on-write at run time (formats/qemu-state.md); False writes the eager layout of
    packs before it (RAM inside the migration stream), which runs must still restore.
    `compress`: store the disk and the QEMU state zstd-compressed, for transport; a run
    decodes each once into its cache by digest (`cache.section_file`). False stores them
    raw: the disk and the stream are read in place, no first-run decoding.
    `disk_refs`: the QEMU state's RAM pages that are copies of disk blocks (the page cache)
    are stored as references to them (`memory-refs`, formats/disk-refs.md); False stores
    the whole RAM, as packs before it did.
    """
    if states not in STATE_CHOICES:
        raise ValueError(f"states must be one of {STATE_CHOICES}")
    krun_ok, krun_why = krun_buildable()
    if states == "krun" and not krun_ok:
        raise HostError(f"cannot build a krun state here: {krun_why}", hint="use --state=qemu")
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
        qemu_machine = QemuMachine(
            guest_arch=GUEST_ARCH,
            cpus=machine.cpus,
            memory_mib=machine.memory_mib,
            kernel=kernel,
            cmdline=machine.kernel_cmdline,
            net=machine.net,
        )
        if machine.allow_hosts or machine.allow_cidrs:
            # slirp (QEMU's user-mode network) has no egress filter to give them to.
            progress.note(
                "network allow lists are enforced by the krun engine only;"
                " under QEMU the guest's egress is unrestricted (this build's too), so runs"
                " there need --smol-allow-unfiltered-egress"
            )
        krun: tuple[StateRef, list[Any]] | None = None
        if states == "qemu":
            progress.note("krun state skipped: --state=qemu")
        elif krun_ok:  # first: the QEMU build consumes the base image
            own_disk = states != "krun"
            krun = _krun_build(config, machine, base, work, progress, own_disk=own_disk,
                               disk_refs=disk_refs)  # fmt: skip
        else:
            progress.note(f"krun state skipped: {krun_why}; the pack restores under QEMU")
        # The QEMU state: stream, RAM file, its disk references.
        qemu: tuple[Path, Path | None, bytes | None] | None = None
        if states == "krun":
            disk = work / "krun-disk.raw"  # the krun state's disk is the pack's
            base.unlink()
        else:
            stream, ram, disk = _boot_build_and_save(
                config, machine, qemu_machine, base, work, progress, lazy_memory=lazy_memory
            )
            refs = None
            if ram is not None and disk_refs:
                with progress.step("Finding RAM pages that are disk blocks"):
                    refs = _split_ram(ram, disk, work)
            qemu = (stream, ram, refs)
        with progress.step("Writing the pack"):
            manifest = Manifest(
                smolpack_version=__version__,
                created=created_now(),
                guest_arch=GUEST_ARCH,
                machine=machine.to_dict(),
                states=(*([krun[0]] if krun else []), *([StateRef(
                    name=QEMU_STATE,
                    engine="qemu",
                    host_arch=GUEST_ARCH,
                    host_os="linux",
                    sections=state_sections(QEMU_STATE, lazy=qemu[1] is not None,
                                            refs=qemu[2] is not None),
                    # A run's QEMU must match these to restore (engine/qemu_compat.py).
                    recorded=qemu_facts(find_qemu("x86_64")),  # GUEST_ARCH
                )] if qemu else [])),
            )  # fmt: skip
            with PayloadWriter(out) as writer:
                writer.add_bytes("manifest", SectionKind.MANIFEST, manifest.to_json())
                # zstd: the launcher materializes the kernel once into its cache anyway.
                writer.add_file("kernel", SectionKind.KERNEL, kernel, codec=Codec.ZSTD)
                # Raw: QEMU reads the disk and the stream in place, from inside the pack.
                # Compressed: a run decodes them into its cache once (formats/qemu-state.md).
                cold = Codec.ZSTD if compress else Codec.NONE
                writer.add_file("disk", SectionKind.DISK, disk, codec=cold)
                # The state's stream, then (lazy layout) its RAM file, which a run maps from
                # its cache in both cases (QEMU 7.2 cannot map a range of the pack).
                if qemu is not None:
                    stream, ram, refs = qemu
                    names = state_sections(QEMU_STATE, lazy=ram is not None,
                                           refs=refs is not None)  # fmt: skip
                    for name, path in zip(names, [stream, *([ram] if ram else [])], strict=False):
                        writer.add_file(name, SectionKind.STATE, path, codec=cold)
                    if refs is not None:  # small: a few bytes per run of pages
                        writer.add_bytes(names[2], SectionKind.STATE, refs, codec=Codec.ZSTD)
                for source in krun[1] if krun else []:
                    writer.add_file(source.name, source.kind, source.path, codec=source.codec)
                if host_libs is not None:
                    target, libs = host_libs
                    paths = (libs.libkrun_path, libs.libkrunfw_path)
                    for name, path in zip(section_names(target), paths, strict=True):
                        writer.add_file(name, SectionKind.LIBRARY, path, codec=Codec.ZSTD)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _boot_build_and_save(
    config: SmolConfig,
    machine: MachineConfig,
    qemu_machine: QemuMachine,
    base: Path,
    work: Path,
    progress: Progress,
    *,
    lazy_memory: bool,
) -> tuple[Path, Path | None, Path]:
    """Boot, run the init steps, save: (migration stream, RAM file or None, flat disk)."""
    overlay = work / "overlay.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(overlay))
    state = work / "state.bin"
    # Lazy memory: the guest's RAM is this file (shared), so the saved stream leaves it out.
    ram = RamFile(path=work / "memory.ram", shared=True) if lazy_memory else None
    vm = QemuVm(
        qemu_machine,
        RootDisk(path=base, size=base.stat().st_size, overlay=overlay),
        run_dir=work,
        ram=ram,
    )
    try:
        with progress.step("Booting the build VM"):
            session = _boot_handshake(vm, BOOT_TIMEOUT_S)
        for number, step in enumerate(config.init, start=1):
            first, *more = step.strip().splitlines() or [""]
            label = first + (f" (+{len(more)} lines)" if more else "")
            with progress.step(f"init step {number}/{len(config.init)}: {label}"):
                _run_init_step(session, number, step, machine, config)
        with progress.step("Saving the warmed-up VM"):
            session.prepare_snapshot()
            vm.save_state(state)
    except (BuildError, KeyboardInterrupt):
        raise  # the step's own output (or the user) already said why
    except AgentChannelClosed as exc:  # an init step crashed the VM: say how
        _keep_console(vm, progress)
        raise explain_agent_failure(vm, exc) from exc
    except BaseException:
        _keep_console(vm, progress)
        raise
    finally:
        vm.close()
    with progress.step("Flattening the disk"):
        disk = work / "disk.raw"
        # The guest was paused when its state was saved, so overlay + base is exactly the
        # disk that memory expects. convert writes zeros as holes: the result stays sparse.
        _qemu_img("convert", "-O", "raw", str(overlay), str(disk))
        overlay.unlink()
        base.unlink()
    return state, ram.path if ram else None, disk


def _split_ram(ram: Path, disk: Path, work: Path) -> bytes:
    """Replace `ram` by itself less its pages that are blocks of `disk`; their references."""
    from smolpack.engine.disk_refs import split_image

    residual = work / "memory.residual"
    refs = split_image(ram, disk, residual)
    residual.replace(ram)
    return refs.encode()


def krun_buildable() -> tuple[bool, str]:
    """Whether this host can boot the build VM under libkrun, and why (not)."""
    hv = hypervisor_status()
    if not hv.usable:
        return False, f"hardware virtualization unavailable: {hv.reason}"
    if host_arch() != GUEST_ARCH:
        return False, f"the guest is {GUEST_ARCH} but this host is {host_arch()}"
    try:
        find_runtime_libs()
    except HostError as err:
        return False, err.message
    return True, hv.reason


def _krun_build(
    config: SmolConfig, machine: MachineConfig, base: Path, work: Path, progress: Progress,
    *, own_disk: bool, disk_refs: bool,
) -> tuple[StateRef, list[Any]]:  # fmt: skip
    """Boot the build VM under libkrun, run the init steps, SAVE, flatten its disk.

    Runs only where `krun_buildable()` (never on our kvm_pvm machines): the state is saved
    through libkrun's control socket (`SAVE <dir>`, VM left paused), and the overlay is
    flattened while it is paused, so memory and disk are from the same instant.
    """
    from smolpack.engine.krun import KrunVm
    from smolpack.engine.krun_control import save_state, wait_for_socket
    from smolpack.engine.krun_run import machine_spec
    from smolpack.engine.krun_state import CPU_FILE, encode_cpu, state_ref, state_sections
    from smolpack.host import cpu_id

    # A short directory for the socket: sun_path holds 108 bytes, `work` may be deep.
    sock_dir = Path(tempfile.mkdtemp(prefix="smolpack-krun-"))
    spec = machine_spec(
        machine,
        base_disk=base.resolve(),
        overlay=work / "krun-overlay.qcow2",
        console_log=work / "krun-console.log",
        control_socket=sock_dir / "control.sock",
    )
    state_dir, disk = work / "krun-state", work / "krun-disk.raw"
    try:
        with progress.step("Booting the krun build VM"):
            vm = KrunVm(find_runtime_libs(), spec)
        try:
            assert spec.control_socket is not None
            wait_for_socket(spec.control_socket, timeout_s=BOOT_TIMEOUT_S, alive=vm.alive)
            session = _boot_handshake(vm, BOOT_TIMEOUT_S)
            for number, step in enumerate(config.init, start=1):
                with progress.step(f"init step {number}/{len(config.init)} (krun)"):
                    _run_init_step(session, number, step, machine, config)
            with progress.step("Saving the warmed-up krun VM"):
                session.prepare_snapshot()
                save_state(spec.control_socket, state_dir)
                (state_dir / CPU_FILE).write_bytes(encode_cpu(cpu_id()))
            with progress.step("Flattening the krun disk"):
                _qemu_img("convert", "-O", "raw", str(spec.overlay), str(disk))
        except BaseException:
            _keep_console(vm, progress)
            raise
        finally:
            vm.close()
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
    spec.overlay.unlink(missing_ok=True)
    ref = state_ref(host_arch=host_arch(), host_os=host_os(), own_disk=own_disk, refs=disk_refs)
    return ref, state_sections(ref, state_dir, disk if own_disk else None, memory_disk=disk)


def _boot_handshake(vm: Vm, timeout_s: float) -> AgentSession:
    """Handshake with the freshly booted agent; a timeout says what the console showed."""
    try:
        return handshake(vm.agent, timeout_s=timeout_s)
    except AgentError as exc:
        raise explain_agent_failure(vm, exc) from exc


def _run_init_step(
    session: AgentSession, number: int, step: str, machine: MachineConfig, config: SmolConfig
) -> None:
    """Run one `init` step, streaming its output to stderr and keeping the last lines.

    The Smolfile's `volumes` are mounted for the step (FUSE over the agent channel; the
    agent unmounts them at the step's EXIT), so none is mounted when the state is saved and
    nothing of them is carried in the pack unless a step copied it.
    """
    read_fd, write_fd = os.pipe()
    tail: deque[bytes] = deque(maxlen=5)

    def tee() -> None:
        pending = b""
        while chunk := os.read(read_fd, 65536):
            os.write(2, chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            tail.extend(line for line in lines if line.strip())
        if pending.strip():
            tail.append(pending)

    reader = threading.Thread(target=tee, daemon=True)
    reader.start()
    mounts = [(HostDir(str(v.host_path), read_only=v.read_only), v.guest_path) for v in
              sorted(config.volumes, key=lambda v: v.guest_path)]  # fmt: skip
    try:
        code = session.run_build_step(
            ["/bin/sh", "-c", step],
            env=machine.env,
            cwd=machine.workdir,
            stdout_fd=write_fd,
            stderr_fd=write_fd,
            channels=ChannelHub([], None, mounts) if mounts else None,
        )
    finally:
        for hostdir, _path in mounts:
            hostdir.close()
        os.close(write_fd)
        reader.join()
        os.close(read_fd)
    if code != 0:
        last = " | ".join(line.decode(errors="replace").strip() for line in tail)
        raise BuildError(
            f"init step {number} failed with exit code {code}: {step}"
            + (f" (last output: {last})" if last else "")
        )


def _keep_console(vm: Vm, progress: Progress) -> None:
    lines = console_tail(vm.console_log, 15)
    if lines:
        progress.note("last lines of the build VM console:")
        for line in lines:
            progress.note(f"  {line}")


def _qemu_img(*args: str) -> None:
    if shutil.which("qemu-img") is None:
        raise HostError("qemu-img not found", hint="install it: apt-get install qemu-utils")
    res = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise HostError(f"qemu-img {args[0]} failed: {res.stderr.strip().splitlines()[-1:]}")


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
