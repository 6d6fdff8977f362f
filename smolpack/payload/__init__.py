"""The `.smolmachine` payload format (formats/smolmachine.md).

Stage: payload, shared by create (writer) and run (reader). Everything here
imports only the standard library at top level, so the launcher stub can
import it; `zstandard` is loaded only when a zstd section is encoded or decoded.
"""

from smolpack.payload.layout import (
    MAGIC,
    RAW_ALIGN,
    VERSION_MAJOR,
    VERSION_MINOR,
    Codec,
    Header,
    IndexHeader,
    SectionEntry,
    SectionKind,
)
from smolpack.payload.locate import Location, find_origin, locate
from smolpack.payload.manifest import Manifest, StateRef, created_now
from smolpack.payload.reader import Payload, open_payload
from smolpack.payload.writer import PayloadWriter

__all__ = [
    "MAGIC",
    "RAW_ALIGN",
    "VERSION_MAJOR",
    "VERSION_MINOR",
    "Codec",
    "Header",
    "IndexHeader",
    "Location",
    "Manifest",
    "Payload",
    "PayloadWriter",
    "SectionEntry",
    "SectionKind",
    "StateRef",
    "created_now",
    "find_origin",
    "locate",
    "open_payload",
]
