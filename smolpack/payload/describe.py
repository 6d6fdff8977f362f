"""A plain-data description of an opened payload (what `smolpack inspect --json` prints).

Stage: inspect. Mirrors formats/smolmachine.md field names one to one, so
the JSON reads like the spec's tables; the golden vectors pin its shape
(formats/vectors/smolmachine/valid/*.inspect.json).
"""

from __future__ import annotations

from typing import Any

from smolpack.payload.reader import Payload


def describe(payload: Payload, *, path: str | None = None) -> dict[str, Any]:
    """Header, location, manifest and every section entry of `payload`."""
    h = payload.header
    loc = payload.location
    return {
        "path": payload.path if path is None else path,
        "container": loc.container,
        "origin": loc.origin,
        "version": f"{h.version_major}.{h.version_minor}",
        "header": {
            "version_major": h.version_major,
            "version_minor": h.version_minor,
            "header_size": h.header_size,
            "flags": h.flags,
            "payload_size": h.payload_size,
            "index_offset": h.index_offset,
            "index_size": h.index_size,
            "index_sha256": h.index_sha256.hex(),
        },
        "manifest": payload.manifest().to_dict(),
        "sections": [
            {
                "name": e.name,
                "kind": e.kind_name,
                "kind_id": e.kind,
                "codec": e.codec_name,
                "codec_id": e.codec,
                "flags": e.flags,
                "align_log2": e.align_log2,
                "offset": e.offset,
                "file_offset": loc.origin + e.offset,
                "stored_size": e.stored_size,
                "raw_size": e.raw_size,
                "sha256": e.sha256.hex(),
            }
            for e in payload.sections.values()
        ],
    }


def render_text(info: dict[str, Any]) -> str:
    """The human-readable table `smolpack inspect` prints."""
    man = info["manifest"]
    where = (
        "standalone file"
        if info["container"] == "standalone"
        else f"embedded in {'ELF' if info['container'] == 'elf' else 'Mach-O'} "
        f"at offset {info['origin']}"
    )
    lines = [
        f"{info['path']}: .smolmachine {info['version']}, {len(info['sections'])} sections, "
        f"{info['header']['payload_size']} bytes",
        f"  origin    {info['origin']} ({where})",
        f"  smolpack  {man['smolpack_version']}, created {man['created']}",
        f"  guest     {man['guest_arch']}",
    ]
    if not man["states"]:
        lines.append("  states    none (cold boot only)")
    for i, st in enumerate(man["states"]):
        lines.append(
            f"  {'states' if i == 0 else '':8}  {st['name']}: {st['engine']} on "
            f"{st['host_os']}/{st['host_arch']} ({', '.join(st['sections'])})"
        )
    header = ("NAME", "KIND", "CODEC", "STORED", "RAW", "OFFSET", "SHA256")
    rows = [
        (
            s["name"],
            s["kind"],
            s["codec"],
            str(s["stored_size"]),
            str(s["raw_size"]),
            str(s["offset"]),
            s["sha256"][:12],
        )
        for s in info["sections"]
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {3, 4, 5}  # numbers right-aligned
    lines.append("")
    for row in [header, *rows]:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
