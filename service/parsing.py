"""Strict parsing of the values the service reads from headers and free-form strings.

`str.isdigit()` accepts superscripts and other Unicode digits that `int()` then rejects, and
`int()` accepts numbers SQLite cannot store (>= 2^63) or that take seconds to convert (thousands
of digits). Every number read from a request goes through `parse_int`: ASCII digits only, a
bounded length, and a range, so a hostile value is a 400, never a 500.
"""

from __future__ import annotations

import re

from core.errors import InputError

MAX_EVENT_ID = 2**53 - 1
"""Largest event id accepted (exact in JavaScript's numbers, far below SQLite's 2^63)."""

_DIGITS = re.compile(r"[0-9]{1,19}", re.ASCII)
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})", re.ASCII)
_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)


class BadValue(InputError):
    """A request value that is not what its field takes; the message names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def parse_int(text: str, *, param: str, low: int, high: int) -> int:
    """An integer written with ASCII digits only, within [low, high]."""
    value = text.strip()
    if not _DIGITS.fullmatch(value):
        raise BadValue(
            param, f"{param} must be a whole number written with the digits 0-9 (got {_show(text)})"
        )
    number = int(value)
    if not low <= number <= high:
        raise BadValue(param, f"{param} must be between {low} and {high} (got {_show(text)})")
    return number


def parse_event_id(text: str | None) -> int | None:
    """`Last-Event-ID`: None when absent or empty (the SSE spec's reset), else an event id."""
    if text is None or not text.strip():
        return None
    return parse_int(text, param="Last-Event-ID", low=0, high=MAX_EVENT_ID)


def parse_size(size: str | None, *, low: int = 64, high: int = 2048) -> tuple[int, int] | None:
    """`"WIDTHxHEIGHT"` with ASCII digits, each side within [low, high]; None for auto/none."""
    if size is None or size.strip().lower() in ("", "auto"):
        return None
    match = _SIZE.fullmatch(size.strip().lower())
    if match is None:
        raise BadValue("size", f'size {_show(size)} is not "WIDTHxHEIGHT", e.g. "512x512"')
    width, height = int(match[1]), int(match[2])
    if not (low <= width <= high and low <= height <= high):
        raise BadValue("size", f"size {_show(size)}: each side must be {low} to {high} pixels")
    return width, height


def is_hex_digest(text: str) -> bool:
    """A lowercase sha256 hex digest (ASCII only: `hmac.compare_digest` raises on non-ASCII)."""
    return _HEX64.fullmatch(text) is not None


def _show(text: str, limit: int = 40) -> str:
    """A request value quoted for a message, cut short (it may be 5000 digits long)."""
    return repr(text[:limit] + ("..." if len(text) > limit else ""))
