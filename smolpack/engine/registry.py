"""Every engine, by name (run stage): the one list `--engine`, `--state`, the planner,
`doctor` and `smolpack create` read. Adding an engine is its own module (defining `ENGINE`,
an `engine.Engine`) plus one line here. An engine's module is imported only when something
asks for it.

Order is `auto`'s preference: the first engine that can run a pack here runs it. It is also
the order `create` builds states in: the last one's flattened disk is the pack's `disk`.
Stdlib only: the launcher imports this module.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the launcher's start must not pay for it
if TYPE_CHECKING:
    from smolpack.engine.interface import Engine

ENGINES: dict[str, str] = {
    "krun": "smolpack.engine.krun_engine",
    "qemu": "smolpack.engine.qemu_engine",
}
AUTO = "auto"
# What to do when no engine can run a pack here (the planner's and doctor's hint).
NO_ENGINE_HINT = "install QEMU (apt-get install qemu-system-x86) or run on a host with KVM"


def names() -> tuple[str, ...]:
    return tuple(ENGINES)


def choices() -> tuple[str, ...]:
    """What `--engine` accepts: auto, then every engine."""
    return (AUTO, *ENGINES)


def savers() -> tuple[str, ...]:
    """The engines whose state `smolpack create` can save (`Engine.saves_states`), in order."""
    return tuple(name for name in ENGINES if load(name).saves_states)


def state_choices() -> tuple[str, ...]:
    """What `create --state` accepts: auto, then every engine that saves states."""
    return (AUTO, *savers())


def spelled(words: tuple[str, ...]) -> str:
    """'auto, krun or qemu'."""
    return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else words[0]


def load(name: str) -> Engine:
    """The engine called `name` (KeyError if none is)."""
    module = __import__(ENGINES[name], fromlist=["ENGINE"])  # not importlib: one module less
    engine: Engine = module.ENGINE
    return engine


def register(name: str, module: str) -> None:
    """Add an engine at run time (tests; what one more line in ENGINES does)."""
    ENGINES[name] = module


def unregister(name: str) -> None:
    ENGINES.pop(name, None)
