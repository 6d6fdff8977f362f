"""Embed a `.smolmachine` payload into a launcher stub (formats/smolmachine.md).

Stage: create, the last step (payload → stub). Build side only: the launcher
never imports this package. Stdlib only, no LIEF (see `elf.py` for why).
"""

from smolpack.embed._dispatch import check_stub, embed_payload
from smolpack.embed._inputs import TARGETS, EmbedResult
from smolpack.embed._output import OUTPUT_MODE, ProgressFn
from smolpack.embed.elf import embed_elf
from smolpack.embed.macho import embed_macho

__all__ = [
    "OUTPUT_MODE",
    "TARGETS",
    "EmbedResult",
    "ProgressFn",
    "check_stub",
    "embed_elf",
    "embed_macho",
    "embed_payload",
]
