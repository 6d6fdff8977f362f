"""The QEMU engine's saved state inside a pack (create and run stages; formats/qemu-state.md).

A QEMU state is one or two sections, named `<state>/<part>`:

- `migration`: QEMU's migration stream (`migrate` to a file, loaded with `-incoming`);
- `memory` (lazy layout): guest RAM as a raw file of exactly the machine's RAM size. The
  stream then holds device state only (x-ignore-shared), and a run maps this file
  copy-on-write instead of loading RAM from the stream: restore time stays flat in the
  size of the saved RAM. Without it (eager layout, packs before issue 14) the stream
  carries the RAM and QEMU reads all of it before the guest runs.

Stdlib only: the launcher stub imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smolpack.cache import cached_section
from smolpack.engine.qemu import RamFile
from smolpack.errors import EngineError
from smolpack.payload import Payload
from smolpack.payload.manifest import StateRef

MIGRATION = "migration"
MEMORY = "memory"
# QEMU 7.2 opens mem-path O_RDWR even for a private mapping (the `rom` property that allows
# O_RDONLY came in 8.2), so the owner may write the cached RAM file; QEMU never does.
MEMORY_MODE = 0o600


@dataclass(frozen=True, slots=True, kw_only=True)
class QemuState:
    """The sections of one QEMU state."""

    migration: str  # section holding the migration stream
    memory: str | None  # section holding the RAM file; None: RAM is inside the stream


def state_sections(name: str, *, lazy: bool) -> tuple[str, ...]:
    """Section names of a QEMU state called `name`, in manifest order."""
    return (f"{name}/{MIGRATION}", f"{name}/{MEMORY}") if lazy else (f"{name}/{MIGRATION}",)


def parse_state(state: StateRef) -> QemuState:
    """The parts of `state`; EngineError when its sections are not one of the two layouts."""
    sections = tuple(state.sections)
    for lazy in (False, True):
        if sections == state_sections(state.name, lazy=lazy):
            return QemuState(migration=sections[0], memory=sections[1] if lazy else None)
    raise EngineError(
        f"QEMU state {state.name} must have sections {state.name}/{MIGRATION}"
        f" [+ {state.name}/{MEMORY}], found {', '.join(sections) or 'none'}"
    )


def run_ram(payload: Payload, state: QemuState, memory_mib: int) -> RamFile | None:
    """The RAM file a run maps copy-on-write (materialized once per digest); None if eager."""
    if state.memory is None:
        return None
    raw_size = payload.sections[state.memory].raw_size
    if raw_size != memory_mib << 20:
        raise EngineError(
            f"section {state.memory} holds {raw_size} bytes of RAM,"
            f" the machine has {memory_mib} MiB"
        )
    path = cached_section(payload, state.memory, "qemu-memory", mode=MEMORY_MODE)
    return RamFile(path=Path(path), shared=False)
