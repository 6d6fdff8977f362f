"""What an engine's save step is given and gives back (create stage; `Engine.build_state`).

`build.build_payload` makes the base image, then has every engine that `--state` selects
boot its build VM on it, run the Smolfile's init steps, save the VM and flatten its disk;
it writes what each returns. Never on the run path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from smolpack.payload.layout import Codec, SectionKind

if TYPE_CHECKING:
    from smolpack.machine import MachineConfig
    from smolpack.payload import StateRef
    from smolpack.progress import Progress
    from smolpack.smolfile import SmolConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildJob:
    """One engine's build: the same inputs for every engine."""

    config: SmolConfig
    machine: MachineConfig
    guest_arch: str
    kernel: Path  # the guest kernel (ELF)
    base: Path  # the ext4 base image; only the last engine to build may consume it
    work: Path  # the build's scratch directory (removed afterwards)
    progress: Progress
    # The state carries its own flattened disk; else that disk becomes the pack's `disk`
    # (the last engine to build gives it: two build VMs never leave byte-identical disks).
    own_disk: bool
    lazy_memory: bool  # QEMU: guest RAM as a section of its own (formats/qemu-state.md)
    compress: bool  # store the engine's large sections zstd-compressed
    disk_refs: bool  # RAM pages that are blocks of the disk stored as references to them


class Section(NamedTuple):
    """One section the writer adds for a state."""

    name: str
    kind: SectionKind
    path: Path
    codec: Codec


@dataclass(frozen=True, slots=True, kw_only=True)
class SavedState:
    """A saved build VM: its manifest entry, its sections and (not own_disk) the pack's disk."""

    ref: StateRef
    sections: list[Section]
    disk: Path | None
