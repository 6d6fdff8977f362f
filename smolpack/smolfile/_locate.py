"""Stage: create, Smolfile. Finds source lines for keys (formats/smolfile.md, "Errors").

`tomllib` returns plain dicts with no positions, yet every Smolfile error must
name its line. This module scans the source text once and answers "on which
line is key `dev.init` defined?" and "on which line is the array item `FOO`?".
It is a best-effort scanner for the TOML shapes people write by hand: table
headers, `key = value`, dotted keys and inline tables. A miss is never fatal:
the error is then reported without a line number, which is still one line.
"""

from __future__ import annotations

import re

KeyPath = tuple[str, ...]

# `[table]` or `[[array.of.tables]]`, with an optional trailing comment.
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\[\]]+?)\s*\]\]?\s*(?:#.*)?$")
# One key segment: bare, "quoted" or 'literal'.
_SEGMENT = r"""(?:[A-Za-z0-9_\-]+|"[^"]*"|'[^']*')"""
_PART = re.compile(_SEGMENT)
# The key part of `key = value`, dotted keys included.
_KEY = re.compile(rf"^\s*({_SEGMENT}(?:\s*\.\s*{_SEGMENT})*)\s*=")
# tomllib reports "(at line N, column M)" or "(at end of document)".
_TOML_POS = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_END = re.compile(r"\s*\(at end of document\)$")


def _split_key(text: str) -> KeyPath:
    return tuple(part.strip("\"'") for part in _PART.findall(text))


class KeyLocator:
    """Maps key paths to the 1-based line that defines them."""

    def __init__(self, source: str) -> None:
        self._lines = source.splitlines()
        # key path -> first line defining it (a header, a key, or a dotted-key prefix).
        self._defs: dict[KeyPath, int] = {}
        self._scan()

    def _scan(self) -> None:
        table: KeyPath = ()
        in_multiline: str | None = None  # the open delimiter of a multi-line string
        for number, line in enumerate(self._lines, start=1):
            if in_multiline is not None:
                # Lines inside a multi-line string are data, never keys.
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            header = _HEADER.match(line)
            if header:
                table = _split_key(header.group(2))
                self._defs.setdefault(table, number)
                continue
            key = _KEY.match(line)
            if key:
                full = table + _split_key(key.group(1))
                # `dev.init = [...]` at the top level also defines `dev`.
                for depth in range(len(table) + 1, len(full) + 1):
                    self._defs.setdefault(full[:depth], number)
            for delim in ('"""', "'''"):
                if line.count(delim) % 2 == 1:
                    in_multiline = delim
                    break

    @property
    def last_line(self) -> int:
        return max(len(self._lines), 1)

    def line_of(self, path: KeyPath) -> int | None:
        """Line defining `path`, else the line of its nearest defined parent."""
        for depth in range(len(path), 0, -1):
            found = self._defs.get(path[:depth])
            if found is not None:
                return found
        return None

    def line_of_item(self, path: KeyPath, needle: str) -> int | None:
        """Line of the array item containing `needle` under key `path`.

        Searches from the key's line to the next line that defines another
        key; falls back to the key's own line.
        """
        start = self.line_of(path)
        if start is None:
            return None
        later = sorted(n for n in self._defs.values() if n > start)
        stop = later[0] if later else len(self._lines) + 1
        if needle:
            for number in range(start, stop):
                if needle in self._lines[number - 1]:
                    return number
        return start


def toml_error_position(message: str, last_line: int) -> tuple[str, int]:
    """Split tomllib's message into (text without position, line)."""
    pos = _TOML_POS.search(message)
    if pos:
        text = message[: pos.start()]
        return f"{text[:1].lower()}{text[1:]} (column {pos.group(2)})", int(pos.group(1))
    end = _TOML_END.search(message)
    text = message[: end.start()] if end else message
    return f"{text[:1].lower()}{text[1:]} (at end of file)", last_line
